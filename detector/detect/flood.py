"""Random-subdomain ("water torture") floods against a domain.

A water-torture flood sends queries for names that cannot be cached
(``x7fq2k.target.com``, each asked once) so that every query reaches the
target's authoritative servers, which slow down and fail: the resolvers in
between answer NXDOMAIN, SERVFAIL or nothing. It is a denial of service on the
DNS service of one domain (T1499.002, Endpoint Denial of Service: Service
Exhaustion Flood: it exhausts the servers' work, not the link's bandwidth,
which would be T1498).

The detector keys its state on the registered domain, the target, across all
clients. Over a sliding window (two halves, as in the tunnel detector) it
counts queries, distinct subdomains, distinct clients (with the top clients
and their counts) and the outcomes of the queries: answers, NXDOMAIN,
SERVFAIL and timeouts ("unanswered" from correlate). A domain is a flood
target when, over the window,

* at least ``min_unique`` distinct subdomains were asked, at least
  ``min_unique_rate`` new names per second;
* at least ``min_fail_share`` of at least ``min_answered`` outcomes were
  NXDOMAIN, SERVFAIL or timeouts;
* at least ``min_clients`` clients asked.

Busy ordinary domains fail the second gate (a CDN's unique names are
answered); DNSBL and anti-virus zones (unique names, mostly NXDOMAIN by
design) are in the allowlist; reverse lookups (.arpa), names without a public
suffix and search-list appends (``www.google.com.corp.example``) are not
counted.

A finding is raised as soon as a target passes the gates, then not again for
``realert`` seconds (by default the suppression window): a flood that lasts
is one alert, not one per window. Its entity is ``(all clients)``, so the
suppressor keys it on the target alone. The rate is measured from when the
failures began (see ``FIRST_BAD``), so it is the flood's rate, not the
window's average.

State is bounded and flat under a flood: at most ``max_domains`` domains
(least recently seen evicted); per domain and half-window, the distinct
names and clients are exact up to a few dozen and then a 256-byte
HyperLogLog (about 6.5% error), and the top clients are counted exactly for
the first ``TOP_CAP`` clients seen in the half-window.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections import OrderedDict
from functools import lru_cache

from detector.detect.base import Detector, entity_of, register
from detector.detect.resolvers import MULTICAST_DNS_PORTS
from detector.events import DnsEvent, Finding
from detector.dns.names import known_suffix

NXDOMAIN, SERVFAIL = 3, 2
EXACT = 48  # distinct names kept exactly per half-window before switching to HyperLogLog
TOP_CAP = 32  # clients counted exactly per half-window (the first seen)
# The rate is measured from the send time of the FIRST_BAD-th failed query of the
# window, not from the window's start: a flood that began 3 s ago under a domain
# asked all along is 100 names/s, not 10. A stray typo or two does not start it.
FIRST_BAD = 8
ENTITY = "(all clients)"

# --- a small HyperLogLog: 256 one-byte registers, 64-bit blake2b hash --------
_M = 256
_ALPHA = 0.7213 / (1 + 1.079 / _M)
_INV = [2.0 ** -r for r in range(65)]


def _point(s: str) -> tuple[int, int]:
    """(register, rank) of a string: stable across runs, unlike hash()."""
    h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
    w = h >> 8
    return h & 0xFF, (w & -w).bit_length() if w else 57  # rank: trailing zeros + 1


_client_point = lru_cache(maxsize=65536)(_point)  # clients repeat; names do not


def _hll(items) -> bytearray:
    regs = bytearray(_M)
    for s in items:
        i, r = _point(s)
        if r > regs[i]:
            regs[i] = r
    return regs


def _estimate(regs: bytes) -> int:
    e = _ALPHA * _M * _M / sum(map(_INV.__getitem__, regs))
    zeros = regs.count(0)
    if e <= 2.5 * _M and zeros:
        e = _M * math.log(_M / zeros)  # linear counting for small counts
    return int(round(e))


def _distinct(parts: list) -> tuple[int, bool]:
    """Distinct count of the union of exact sets and/or registers: (count, estimated)."""
    sets = [p for p in parts if p.__class__ is set]
    if len(sets) == len(parts):
        return len(set().union(*sets)), False
    regs = bytearray(_M)
    for p in parts:
        if p.__class__ is set:
            p = _hll(p)
        regs = bytearray(map(max, regs, p))
    return _estimate(regs), True


class _Half:
    """Counters of one half-window of one domain."""

    __slots__ = ("start", "events", "queries", "sec", "sec_queries", "peak", "names", "top", "more",
                 "outcomes", "bad", "first_bad", "nx", "servfail", "timeouts", "samples")

    def __init__(self, start: float) -> None:
        self.start = start
        self.events = 0
        self.queries = 0
        self.sec = 0  # the current second of capture time, its queries, and the busiest second
        self.sec_queries = 0
        self.peak = 0
        self.names: set[str] | bytearray = set()  # exact, then HyperLogLog registers
        self.top: dict[str, int] = {}  # the first TOP_CAP clients, exact counts
        self.more: bytearray | None = None  # all clients' registers, once past TOP_CAP
        self.outcomes = 0  # responses + timeouts
        self.bad = 0  # NXDOMAIN + SERVFAIL + timeouts
        self.first_bad: float | None = None  # when the failing started (see FIRST_BAD)
        self.nx = 0
        self.servfail = 0
        self.timeouts = 0
        self.samples: list[str] = []  # the last 3 new names

    def clients(self) -> set[str] | bytearray:
        return set(self.top) if self.more is None else self.more


class _Dom:
    __slots__ = ("prev", "cur", "alerted")

    def __init__(self, ts: float) -> None:
        self.prev: _Half | None = None
        self.cur = _Half(ts)
        self.alerted = -1e18


@register
class Flood(Detector):
    name = "flood"
    params = {
        "window": 60.0,          # seconds (two sliding halves)
        "min_unique": 300,       # distinct subdomains of the target in the window
        "min_unique_rate": 5.0,  # distinct subdomains per second
        "min_fail_share": 0.6,   # NXDOMAIN + SERVFAIL + timeouts, of the outcomes
        "min_answered": 50,      # outcomes (responses + timeouts) before the share counts
        "min_clients": 1,        # distinct clients asking (1: a single host can flood too)
        "top_clients": 5,        # clients named in the alert
        "max_domains": 20000,    # domains tracked (least recently seen evicted)
        "realert": 600.0,        # seconds before the same target is reported again
    }
    kinds = frozenset({"query", "response", "unanswered"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.state: OrderedDict[str, _Dom] = OrderedDict()
        self.evicted = 0
        self.half = float(self.p["window"]) / 2
        self.max_domains = int(self.p["max_domains"])
        self.realert = float(self.p["realert"])
        self._skip: dict[str, bool] = {}  # registered domain -> never counted
        lists = (rule.allowlist, rules.allowlist)
        self._procs = [a for a in lists if a.processes]
        self._client_nets = tuple(n for a in lists for n in a.clients)
        self._client_ok: dict[str, bool] = {}  # client address -> allowlisted

    @staticmethod
    def check_rule(rule) -> str | None:
        t = rule.thresholds
        if t.get("window", 1) <= 0:
            return "thresholds.window: must be more than 0 seconds"
        if not 0 <= t.get("min_fail_share", 0) <= 1:
            return "thresholds.min_fail_share: expected a share between 0 and 1"
        if t.get("max_domains", 1) < 1:
            return "thresholds.max_domains: must be at least 1"
        return None

    def _skipped(self, ev: DnsEvent, dom: str, sfx: str) -> bool:
        s = self._skip.get(dom)
        if s is None:
            if len(self._skip) > 100_000:
                self._skip.clear()
            s = self._skip[dom] = (
                not known_suffix(sfx)  # internal names (.local, .corp): no public target
                or dom.endswith(".arpa")  # reverse lookups: unique and often NXDOMAIN
                or self.covers_registered(ev, dom))
        return s

    def _allowed_who(self, ev: DnsEvent) -> bool:
        """An allowlisted process or client (a mail server doing DNSBL lookups...)."""
        if any(a.covers_process(ev) for a in self._procs):
            return True
        if not self._client_nets:
            return False
        ip = ev.client[0]
        ok = self._client_ok.get(ip)
        if ok is None:
            if len(self._client_ok) > 65536:
                self._client_ok.clear()
            try:
                a = ipaddress.ip_address(ip)
                ok = any(a.version == n.version and a in n for n in self._client_nets)
            except ValueError:
                ok = False
            self._client_ok[ip] = ok
        return ok

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        skip_of = self._skip
        skipped = self._skipped
        who = bool(self._procs or self._client_nets)
        state = self.state
        half = self.half
        realert = self.realert
        name = self._name
        client = self._client
        for ev in evs:
            dom = ev.registered_domain
            if not dom or ev.dst_port in MULTICAST_DNS_PORTS or ev.src_port in MULTICAST_DNS_PORTS:
                continue
            skip = skip_of.get(dom)  # the cached verdict first: no call for a domain seen before
            if skip or (skip is None and skipped(ev, dom, ev.suffix)):
                continue
            sub = ev.subdomain
            if "." in sub and known_suffix(sub.rpartition(".")[2]):
                continue  # a search-list append ("www.google.com" + ".corp.example"), not a random label
            if who and self._allowed_who(ev):
                continue
            kind = ev.kind
            ts = ev.ts
            st = state.get(dom)
            if st is None:
                if kind != "query" or not sub:
                    continue  # state starts with a query for a subdomain
                st = state[dom] = _Dom(ts)
                if len(state) > self.max_domains:
                    state.popitem(last=False)
                    self.evicted += 1
            else:
                state.move_to_end(dom)
            cur = st.cur
            if ts - cur.start >= half:
                st.prev = cur if ts - cur.start < 2 * half else None
                cur = st.cur = _Half(ts)
            if kind == "query":
                cur.queries += 1
                sec = int(ts)
                if sec != cur.sec:
                    if cur.sec_queries > cur.peak:
                        cur.peak = cur.sec_queries
                    cur.sec, cur.sec_queries = sec, 0
                cur.sec_queries += 1
                if sub:
                    name(cur, sub)
                client(cur, ev.entity or entity_of(ev))
            else:
                cur.outcomes += 1
                bad = True
                if kind == "unanswered":
                    cur.timeouts += 1
                elif ev.rcode == NXDOMAIN:
                    cur.nx += 1
                elif ev.rcode == SERVFAIL:
                    cur.servfail += 1
                else:
                    bad = False
                if bad:
                    cur.bad += 1
                    if cur.bad == FIRST_BAD:  # latency: response (or timeout) minus the query's send time
                        cur.first_bad = ts - (ev.latency or 0.0)
            cur.events += 1
            if cur.events & 15 or ts - st.alerted < realert:
                continue
            fs = self._judge(ev, dom, st, ts)
            if fs:
                out.extend(fs)
        return out

    @staticmethod
    def _name(h: _Half, sub: str) -> None:
        names = h.names
        if names.__class__ is set:
            if sub in names:
                return
            names.add(sub)
            if len(names) > EXACT:
                h.names = _hll(names)
        else:
            i, r = _point(sub)
            if r <= names[i]:
                return  # probably seen (a raised register means surely new)
            names[i] = r
        samples = h.samples  # the latest new names: the flood's, not the domain's usual ones
        samples.append(sub[:80])
        if len(samples) > 3:
            del samples[0]

    @staticmethod
    def _client(h: _Half, who: str) -> None:
        top = h.top
        n = top.get(who)
        if n is not None:
            top[who] = n + 1
            return
        if len(top) < TOP_CAP:
            top[who] = 1
            return
        if h.more is None:
            h.more = bytearray(_M)
            for c in top:
                i, r = _client_point(c)
                if r > h.more[i]:
                    h.more[i] = r
        i, r = _client_point(who)
        if r > h.more[i]:
            h.more[i] = r

    # --- judgement ----------------------------------------------------------------
    def _judge(self, ev: DnsEvent, dom: str, st: _Dom, ts: float) -> list[Finding]:
        p = self.p
        hs = [h for h in (st.prev, st.cur) if h is not None]
        queries = sum(h.queries for h in hs)
        outcomes = sum(h.outcomes for h in hs)
        bad = sum(h.bad for h in hs)
        # cheap gates first: most busy domains are answered
        if queries < p["min_unique"] or outcomes < max(p["min_answered"], 1) \
                or bad < p["min_fail_share"] * outcomes:
            return []
        nx = sum(h.nx for h in hs)
        servfail = sum(h.servfail for h in hs)
        timeouts = sum(h.timeouts for h in hs)
        began = next((h.first_bad for h in hs if h.first_bad is not None), hs[0].start)
        span = max(ts - began, 1.0)
        uniq, uniq_est = _distinct([h.names for h in hs])
        if uniq < p["min_unique"] or uniq / span < p["min_unique_rate"]:
            return []
        clients, cl_est = _distinct([h.clients() for h in hs])
        if clients < p["min_clients"]:
            return []
        st.alerted = ts
        counts: dict[str, int] = {}
        for h in hs:
            for c, n in h.top.items():
                counts[c] = counts.get(c, 0) + n
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:int(p["top_clients"])]
        share = bad / outcomes
        ups = uniq / span
        peak = max(max(h.peak, h.sec_queries) for h in hs)
        samples = list(dict.fromkeys(s for h in reversed(hs) for s in reversed(h.samples)))[:3]
        approx = "~" if uniq_est else ""
        features = {
            "target": dom,
            "window_seconds": self.half * 2,
            "span_seconds": round(span, 1),
            "queries": queries,
            "peak_queries_per_second": peak,
            "unique_subdomains": uniq,
            "unique_per_second": round(ups, 1),
            "unique_estimated": uniq_est,
            "outcomes": outcomes,
            "nxdomain": nx,
            "servfail": servfail,
            "timeouts": timeouts,
            "failure_share": round(share, 3),
            "clients": clients,
            "clients_estimated": cl_est,
            "top_clients": [{"client": c, "queries": n} for c, n in top],
            "sample_subdomains": samples,
        }
        tops = ", ".join(f"{c} ({n:,})" for c, n in top)
        reason = (f"random-subdomain flood against {dom}: {approx}{uniq:,} unique names in {span:.0f} s "
                  f"({ups:,.0f}/s; peak {peak:,} queries/s) from {'~' if cl_est else ''}{clients:,} "
                  f"clients, {share:.0%} NXDOMAIN/SERVFAIL/timeouts; top clients: {tops}")
        return [self.finding(ev, score=0.8, entity=ENTITY, domain=dom, features=features, reason=reason,
                             ts=ts)]
