"""Connections to an address a flagged name resolved to (T1071).

A DGA, tunnel or denylist finding says a name is bad; the connection that
follows its answer is the C2 channel or the download. This detector keeps the
domains other rules raised findings on (:meth:`FlaggedConnect.observe_finding`:
the pipeline feeds it every finding, before suppression), learns the A/AAAA answers of
responses for those names (as resolvers.py learns DoH addresses), and raises a
high-severity finding when a process connects to one of those addresses: once
per process and address.

Bounded: ``max_addresses`` addresses (oldest forgotten first) and
``max_domains`` flagged domains. In live capture each learned address is pushed
into the kernel (``on_watch``: LiveCapture.watch_address), so bpf/dns_sock.c
reports only connects to those addresses: there is no event per ordinary
connect. Elsewhere (replay), connection records (TCP SYNs to watched ports) are
checked the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from detector.detect.base import NAME_CACHE, Detector, register
from detector.dns.names import under
from detector.events import ConnEvent, DnsEvent, Finding, conn_entity

ADDRESS_TYPES = (1, 28)  # A, AAAA
MAX_ALERTED = 65_536  # (process, address) pairs alerted on; then it starts afresh


@dataclass(slots=True)
class Flag:
    """Why a domain is flagged: the finding that named it."""

    domain: str
    rule_id: str
    technique_id: str
    category: str


@dataclass(slots=True)
class Resolved:
    """An address a flagged name resolved to, and the response that said so."""

    name: str
    flag: Flag
    event: DnsEvent


@register
class FlaggedConnect(Detector):
    name = "flagged_connect"
    params = {
        "from_categories": ["dga", "tunnel", "denylist", "exfil"],  # findings whose names are flagged
        "max_addresses": 4096,
        "max_domains": 65_536,
    }
    kinds = frozenset({"response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.categories = frozenset(str(c) for c in self.p["from_categories"])
        self.flags: dict[str, Flag] = {}  # domain -> why
        self.addrs: dict[str, Resolved] = {}  # address -> the flagged name it answered for
        self._alerted: set[tuple[str, str]] = set()
        # first question's name as sent -> the flagged domain it is under, or None;
        # emptied whenever a flag comes (or goes)
        self._hits: dict[str, str | None] = {}
        #: set by live capture: an address to report connects to, and one to forget
        self.on_watch: Callable[[str, float], None] | None = None
        self.on_unwatch: Callable[[str], None] | None = None

    # --- learning ---------------------------------------------------------------
    def observe_finding(self, f: Finding) -> None:
        """A finding of the pipeline (any rule): a DGA, tunnel or denylist one flags
        its domain (the listed one for a denylist), and the answers of its own
        event, when it is a response, at once."""
        if f.rule_id == self.rule.id or f.category not in self.categories:
            return
        dom = str(f.features.get("listed") or f.domain or "").lower().rstrip(".")
        if not dom or "." not in dom and f.category != "denylist":
            return  # no name, or a bare TLD from a DGA family: too wide to flag
        flag = self.flags.get(dom)
        if flag is None:
            flag = self.flags[dom] = Flag(dom, f.rule_id, f.technique_id, f.category)
            if len(self.flags) > self.p["max_domains"]:
                del self.flags[next(iter(self.flags))]
            self._hits.clear()
        ev = f.event
        if ev is not None and ev.answers and ev.flags & 0x8000:
            self._learn(ev, flag)

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        flags = self.flags
        if not flags:
            return []
        hits = self._hits
        for ev in evs:
            if not ev.answers:
                continue
            q = ev.questions[0].name if ev.questions else ""
            dom = hits.get(q, 0)
            if dom == 0:  # once per distinct name while the flags stay the same
                name = q.lower().rstrip(".")
                dom = under(name, flags) if name else None
                if len(hits) >= NAME_CACHE:
                    hits.clear()
                hits[q] = dom
            if dom is not None:
                self._learn(ev, flags[dom])
        return []

    def _learn(self, ev: DnsEvent, flag: Flag) -> None:
        name = ev.qname.lower().rstrip(".")
        for a in ev.answers:
            if a.rtype not in ADDRESS_TYPES:
                continue
            ip = a.data
            new = ip not in self.addrs
            if not new:
                del self.addrs[ip]  # to the young end
            self.addrs[ip] = Resolved(name, flag, ev)
            if new:
                if self.on_watch is not None:
                    self.on_watch(ip, ev.ts)
                if len(self.addrs) > self.p["max_addresses"]:
                    old = next(iter(self.addrs))
                    del self.addrs[old]
                    if self.on_unwatch is not None:
                        self.on_unwatch(old)

    # --- connections --------------------------------------------------------------
    def process_conn(self, c: ConnEvent) -> list[Finding]:
        hit = self.addrs.get(c.dst_ip)
        if hit is None:
            return []
        if self.rule.allowlist.covers_process(c) or self.rules.allowlist.covers_process(c):
            return []
        ent = conn_entity(c)
        key = (ent, c.dst_ip)
        if key in self._alerted:
            return []
        if len(self._alerted) >= MAX_ALERTED:
            self._alerted.clear()
        self._alerted.add(key)
        # the alert's event is the answer that named the address, with the process
        # that connected (the same one, unless another process used the answer)
        ev = hit.event if c.process is None else replace(hit.event, process=c.process)
        fl = hit.flag
        f = self.finding(
            ev, score=0.9, entity=ent, domain=fl.domain, ts=c.ts, severity="high",
            features={"address": c.dst_ip, "port": c.dst_port, "transport": c.transport,
                      "resolved_from": hit.name, "flagged_by": fl.rule_id, "flagged_domain": fl.domain,
                      "flag_technique": fl.technique_id, "flag_category": fl.category,
                      "resolved_at": round(hit.event.ts, 6)},
            reason=f"{ent} connected to {c.dst_ip}:{c.dst_port}/{c.transport} resolved from "
                   f"{hit.name}, flagged by {fl.rule_id} ({fl.category})")
        f.ts = c.ts
        f.key = f"address {c.dst_ip}"
        return [f]


def attach(pipe, watch: Callable[[str, float], None] | None = None,
           unwatch: Callable[[str], None] | None = None) -> list[FlaggedConnect]:
    """Give ``pipe``'s flagged_connect detectors the capture's ``watch``/``unwatch``
    (live capture: the kernel then reports connects to those addresses). Returns
    those detectors (none: nothing done)."""
    ds = [d for d in pipe.detectors if isinstance(d, FlaggedConnect)]
    for d in ds:
        d.on_watch, d.on_unwatch = watch, unwatch
    return ds
