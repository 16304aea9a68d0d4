"""Top-N tables over DNS events: what `detector top` shows.

Fed the same correlated, enriched events as the detectors (from a capture,
live capture or the dns-events topic), a :class:`TopView` keeps per
registered domain, per resolver and per process: query count, rcodes and a
bounded latency sample (for average and p99). Memory is bounded: at most
``max_keys`` keys per table, the least recently seen evicted first.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from detector.dns.constants import RCODES
from detector.events import DnsEvent
from detector.views.text import safe

SAMPLE = 512  # latencies kept per key (reservoir by replacement of the oldest)


@dataclass(slots=True)
class _Row:
    queries: int = 0
    responses: int = 0
    unanswered: int = 0
    rcodes: Counter = field(default_factory=Counter)
    lat: list = field(default_factory=list)
    lat_sum: float = 0.0
    lat_n: int = 0

    def add(self, ev: DnsEvent) -> None:
        k = ev.kind
        if k == "query":
            self.queries += 1
        elif k == "response":
            self.responses += 1
            self.rcodes[ev.rcode] += 1
            if ev.latency is not None:
                self.lat_sum += ev.latency
                self.lat_n += 1
                if len(self.lat) < SAMPLE:
                    self.lat.append(ev.latency)
                else:
                    self.lat[self.lat_n % SAMPLE] = ev.latency
        else:
            self.unanswered += 1

    @property
    def avg_ms(self) -> float | None:
        return 1000 * self.lat_sum / self.lat_n if self.lat_n else None

    @property
    def p99_ms(self) -> float | None:
        if not self.lat:
            return None
        s = sorted(self.lat)
        return 1000 * s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]

    @property
    def failures(self) -> int:
        return self.unanswered + self.rcodes.get(2, 0) + self.rcodes.get(5, 0)


class _Table:
    def __init__(self, max_keys: int) -> None:
        self.rows: OrderedDict[str, _Row] = OrderedDict()
        self.max_keys = max_keys
        self.evicted = 0

    def add(self, key: str, ev: DnsEvent) -> None:
        rows = self.rows
        r = rows.get(key)
        if r is None:
            r = rows[key] = _Row()
            if len(rows) > self.max_keys:
                rows.popitem(last=False)
                self.evicted += 1
        else:
            rows.move_to_end(key)
        r.add(ev)


class TopView:
    """Aggregate events; :meth:`tables` returns the top-N rows of each view."""

    def __init__(self, max_keys: int = 50_000) -> None:
        self.domains = _Table(max_keys)
        self.resolvers = _Table(max_keys)
        self.processes = _Table(max_keys)
        self.rcodes: Counter = Counter()
        self.events = 0

    def process(self, ev: DnsEvent) -> None:
        self.events += 1
        self.domains.add(ev.registered_domain or ev.qname or "(none)", ev)
        self.resolvers.add(ev.server[0], ev)
        p = ev.process
        self.processes.add(f"{p.comm}[{p.pid}]" if p is not None and p.pid else ev.client[0], ev)
        if ev.kind == "response":
            self.rcodes[RCODES.get(ev.rcode, str(ev.rcode))] += 1
        elif ev.kind == "unanswered":
            self.rcodes["(timeout)"] += 1

    def tables(self, n: int = 10) -> dict[str, list[dict]]:
        def rows(t: _Table, key, label: str) -> list[dict]:
            items = [(k, r) for k, r in t.rows.items() if key(r) is not None]
            items.sort(key=lambda kr: -key(kr[1]))
            return [{label: k, "queries": r.queries, "responses": r.responses,
                     "avg_ms": _r(r.avg_ms), "p99_ms": _r(r.p99_ms), "failures": r.failures,
                     "nxdomain": r.rcodes.get(3, 0)} for k, r in items[:n]]

        return {
            "domains_by_queries": rows(self.domains, lambda r: r.queries, "domain"),
            "domains_by_p99_latency": rows(self.domains, lambda r: r.p99_ms, "domain"),
            "domains_by_nxdomain": rows(self.domains, lambda r: r.rcodes.get(3, 0) or None, "domain"),
            "resolvers_by_p99_latency": rows(self.resolvers, lambda r: r.p99_ms, "resolver"),
            "processes_by_queries": rows(self.processes, lambda r: r.queries, "process"),
            "rcodes": [{"rcode": k, "count": v} for k, v in self.rcodes.most_common(n)],
        }

    def render(self, n: int = 10) -> str:
        """Plain-text tables, as `detector top` prints them."""
        out: list[str] = []
        for title, rows in self.tables(n).items():
            out.append(f"\n{title.replace('_', ' ')}")
            if not rows:
                out.append("  (none)")
                continue
            cols = list(rows[0])
            widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
            for r in rows:
                out.append("  " + "  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths)))
        return safe("\n".join(out).lstrip("\n") + "\n")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
