"""DNS health: p99 latency and failure rate per resolver and per process.

Over tumbling windows of event time, aligned to multiples of ``window`` since
the epoch (so a window and its alert id do not depend on where a stream or a
partition started), for every resolver (server address) and
every (entity, resolver) pair (entity = the process when known, else the
client), the detector keeps a bounded latency sample and counts answered
queries, SERVFAILs and timeouts ("unanswered" events from correlate).
NXDOMAIN is an answer, not a failure. Only unicast resolvers are judged:
multicast name resolution (mDNS on 5353, LLMNR on 5355, any query to a
224.0.0.0/4 or ff00::/8 group) and broadcast have no resolver that owes an
answer, and an unanswered mDNS probe is the normal case, not a failure.
When a window closes with at least
``min_samples`` queries:

* p99 latency above ``p99_warn_ms`` is a warning (medium), above
  ``p99_crit_ms`` critical;
* failure rate (timeouts + SERVFAIL) above ``fail_warn`` is a warning,
  above ``fail_crit`` critical.

``Health.last`` holds the figures of each resolver's last closed window.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import OrderedDict

from detector.detect.base import Detector, entity_of, register
from detector.detect.resolvers import MULTICAST_DNS_PORTS, not_a_resolver
from detector.dns.constants import FLAG_QR, SERVFAIL
from detector.events import DnsEvent, Finding

SAMPLE = 2048  # latencies kept per key per window (reservoir)


class _Win:
    __slots__ = ("n", "fail", "servfail", "timeouts", "lat", "seen", "ev", "rand")

    def __init__(self) -> None:
        self.n = 0
        self.fail = 0
        self.servfail = 0
        self.timeouts = 0
        self.lat: list[float] = []
        self.seen = 0  # latencies offered to the reservoir
        self.ev: DnsEvent | None = None
        self.rand = None  # the reservoir's own random stream, once it overflows

    def p(self, q: float) -> float | None:
        if not self.lat:
            return None
        s = sorted(self.lat)
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@register
class Health(Detector):
    name = "health"
    params = {
        "window": 60.0,       # seconds
        "min_samples": 20,    # queries in a window before judging it
        "p99_warn_ms": 100,
        "p99_crit_ms": 500,
        "fail_warn": 0.01,    # failure rate (timeouts + SERVFAIL)
        "fail_crit": 0.05,
        "per_process": True,  # also judge each (process or client, resolver) pair
        "max_keys": 20000,
    }
    kinds = frozenset({"response", "unanswered"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.wins: OrderedDict[tuple[str, str], _Win] = OrderedDict()
        self.cur: int | None = None  # the open window: [cur * window, (cur + 1) * window)
        self._window = float(self.p["window"])
        self._per_process = bool(self.p["per_process"])
        self._max_keys = int(self.p["max_keys"])
        self.last: dict[str, dict] = {}  # resolver -> figures of the last closed window
        self._unicast: dict[str, bool] = {}  # server address -> is a unicast resolver

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        window = self._window
        unicast = self._unicast
        per_process = self._per_process
        max_keys = self._max_keys
        wins = self.wins
        end = None if self.cur is None else (self.cur + 1) * window  # the open window's end
        for ev in evs:
            ts = ev.ts
            if end is None:
                self.cur = int(ts // window)
                end = (self.cur + 1) * window
            elif ts >= end:
                out.extend(self.tick(ts))
                wins = self.wins
                end = (self.cur + 1) * window
            if ev.dst_port in MULTICAST_DNS_PORTS or ev.src_port in MULTICAST_DNS_PORTS:
                continue  # mDNS / LLMNR: answered by peers, if at all
            srv = ev.src_ip if ev.flags & FLAG_QR else ev.dst_ip
            uni = unicast.get(srv)
            if uni is None:
                if len(unicast) > 65536:
                    unicast.clear()
                uni = unicast[srv] = not not_a_resolver(srv)
            if not uni:
                continue
            timeout = ev.kind == "unanswered"
            servfail = ev.rcode == SERVFAIL
            lat = ev.latency
            for k in ((("", srv), (ev.entity or entity_of(ev), srv)) if per_process else (("", srv),)):
                w = wins.get(k)
                if w is None:
                    w = wins[k] = _Win()
                    if len(wins) > max_keys:
                        wins.popitem(last=False)
                w.n += 1
                w.ev = ev
                if timeout:
                    w.fail += 1
                    w.timeouts += 1
                    continue
                if servfail:
                    w.fail += 1
                    w.servfail += 1
                if lat is not None:
                    w.seen += 1
                    if len(w.lat) < SAMPLE:
                        w.lat.append(lat)
                    else:
                        if w.rand is None:  # seeded by the key: the same sample whatever else is interleaved
                            w.rand = random.Random(zlib.crc32(f"{k[0]}|{k[1]}".encode())).random
                        j = int(w.rand() * w.seen)  # reservoir sampling (Algorithm R)
                        if j < SAMPLE:
                            w.lat[j] = lat
        return out

    def tick(self, now: float) -> list[Finding]:
        if self.cur is None or now < (self.cur + 1) * self._window:
            return []
        out: list[Finding] = []
        wins, self.wins = self.wins, OrderedDict()
        end = (self.cur + 1) * self._window  # the window's end is the findings' time
        self.cur = int(now // self._window)
        for (ent, srv), w in wins.items():
            if not ent:
                self.last[srv] = self._figures(w)
            if w.n < self.p["min_samples"]:
                continue
            out.extend(self._judge(ent, srv, w, end))
        if len(self.last) > self.p["max_keys"]:
            self.last.clear()
        return out

    def close(self) -> list[Finding]:
        return []  # the pipeline's final tick already closed the last window

    def _figures(self, w: _Win) -> dict:
        p50, p99 = w.p(0.5), w.p(0.99)
        return {"count": w.n, "p50_ms": _ms(p50), "p99_ms": _ms(p99),
                "failure_rate": round(w.fail / w.n, 4) if w.n else 0.0,
                "timeouts": w.timeouts, "servfail": w.servfail}

    def _judge(self, ent: str, srv: str, w: _Win, now: float) -> list[Finding]:
        p = self.p
        f = self._figures(w)
        f["window_seconds"] = p["window"]
        problems, sev = [], None
        p99 = f["p99_ms"]
        if p99 is not None and p99 > p["p99_warn_ms"]:
            crit = p99 > p["p99_crit_ms"]
            problems.append(f"p99 latency {p99:.0f} ms > {p['p99_crit_ms' if crit else 'p99_warn_ms']} ms")
            sev = "critical" if crit else "medium"
        fr = f["failure_rate"]
        if fr > p["fail_warn"]:
            crit = fr > p["fail_crit"]
            problems.append(f"failure rate {fr:.1%} > {p['fail_crit' if crit else 'fail_warn']:.0%} "
                            f"({w.timeouts} timeouts, {w.servfail} SERVFAIL of {w.n})")
            if crit or sev is None:
                sev = "critical" if crit else (sev or "medium")
        if not problems:
            return []
        who = f"resolver {srv}" if not ent else f"{ent} via {srv}"
        f["resolver"] = srv
        f["scope"] = "resolver" if not ent else "process"
        score = 0.9 if sev == "critical" else 0.6
        return [self.finding(
            w.ev, score=score, entity=ent or srv, domain=srv, features=f, severity=sev, ts=now,
            reason=f"{who}: " + "; ".join(problems) + f" over {p['window']:.0f} s")]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)
