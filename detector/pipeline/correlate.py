"""Pair each response with its query; report latency and unanswered queries.

A query is keyed by (client address, client port, server address, server
port, DNS id, first question name as sent: responses echo it byte for byte,
0x20 case randomisation included). A response with the same key completes
it: the response event gets ``latency`` (seconds) and ``kind = "response"``.
A query with no response within ``timeout`` seconds of capture time yields a
copy of the query with ``kind = "unanswered"`` and ``latency = timeout``.

Time is the events' own timestamps, so a replay is deterministic. Pending
queries are bounded (oldest are expired first when the bound is reached).
"""

from __future__ import annotations

import copy

from detector.events import QUERY, RESPONSE, UNANSWERED, DnsEvent


_INF = float("inf")


class Correlator:
    def __init__(self, timeout: float = 5.0, max_pending: int = 200_000) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending: dict[tuple, DnsEvent] = {}  # insertion order == query time order
        self.answered = 0
        self.unanswered = 0
        self.unsolicited = 0  # responses with no query seen
        self.duplicates = 0  # retransmitted queries
        self.latency_sum = 0.0
        self.open_at_end = 0
        self.next_expire = _INF  # no pending query can expire before this time

    def pair(self, ev: DnsEvent) -> DnsEvent | None:
        """Mark ``ev`` as query or response and pair it. Returns an unanswered
        event when the pending table overflowed, else None. Call
        :meth:`expire` first when ``ev.ts >= self.next_expire``."""
        q = ev.questions[0].name if ev.questions else ""
        if ev.flags & 0x8000:  # response
            query = self.pending.pop((ev.dst_ip, ev.dst_port, ev.src_ip, ev.src_port, ev.id, q), None)
            ev.kind = RESPONSE
            if query is not None:
                lat = ev.ts - query.ts
                ev.latency = lat if lat >= 0 else 0.0
                self.answered += 1
                self.latency_sum += ev.latency
                if ev.process is None and query.process is not None:
                    ev.process = query.process
            else:
                self.unsolicited += 1
            return None
        ev.kind = QUERY
        key = (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port, ev.id, q)
        pending = self.pending
        if key in pending:
            self.duplicates += 1
            return None
        if not pending:
            self.next_expire = ev.ts + self.timeout
        pending[key] = ev
        if len(pending) > self.max_pending:
            return self._expire_one()
        return None

    def expire(self, now: float) -> list[DnsEvent]:
        out: list[DnsEvent] = []
        limit = now - self.timeout
        pending = self.pending
        while pending:
            key = next(iter(pending))
            q = pending[key]
            if q.ts > limit:
                self.next_expire = q.ts + self.timeout
                return out
            del pending[key]
            out.append(self._unanswered(q))
        self.next_expire = _INF
        return out

    def _expire_one(self) -> DnsEvent:
        key = next(iter(self.pending))
        return self._unanswered(self.pending.pop(key))

    def _unanswered(self, q: DnsEvent) -> DnsEvent:
        u = copy.copy(q)
        u.kind = UNANSWERED
        u.latency = self.timeout
        u.ts = q.ts + self.timeout
        self.unanswered += 1
        return u

    def close(self, last_ts: float | None = None) -> list[DnsEvent]:
        """End of input. Queries older than the timeout at ``last_ts`` are
        unanswered; younger ones may have been answered after the capture
        stopped, so they are only counted (``open_at_end``)."""
        out = self.expire(last_ts) if last_ts is not None else [
            self._unanswered(q) for q in self.pending.values()]
        self.open_at_end = len(self.pending)
        self.pending.clear()
        return out
