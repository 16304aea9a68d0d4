"""The one interface every detector implements (the registry is in :mod:`.registry`).

A rule in rules/*.yaml names a detector (``detector: dga``); the engine builds one
instance of that detector class per enabled rule and feeds it every enriched
event in time order. Detectors keep their own windowed state, bounded in size.

    class MyDetector(Detector):
        name = "mine"
        params = {"threshold": 0.5}        # every threshold a rule may set, with its default

        def process(self, ev):             # -> list[Finding] (may be empty)
            ...
        def process_batch(self, evs):      # optional: the same over a run of events
            ...
        def tick(self, now):               # capture time moved on; close windows
            ...

Detectors never write output: they return :class:`~detector.events.Finding`
objects and alerts/ deduplicates and renders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from detector.detect.registry import detector_class, detector_names, register  # noqa: F401
from detector.events import DnsEvent, Finding

if TYPE_CHECKING:
    from detector.ruleset import Rule, RuleSet


#: distinct names a detector's per-name caches hold before they start afresh: enough
#: for the names a site repeats, small enough that a flood of new names costs no memory
NAME_CACHE = 1 << 16


class Detector:
    name: ClassVar[str] = ""
    #: threshold names a rule may set, with defaults; unknown names are a rule error
    params: ClassVar[dict[str, Any]] = {}
    #: the event kinds this detector wants ("query", "response", "unanswered")
    kinds: ClassVar[frozenset[str]] = frozenset({"query", "response", "unanswered"})

    def __init__(self, rule: "Rule", rules: "RuleSet") -> None:
        self.rule = rule
        self.rules = rules
        self.p: dict[str, Any] = {**self.params, **rule.thresholds}
        self._own_allow = None if rule.allowlist.empty else rule.allowlist
        # set by bind: the pipeline's DomainIndex and the bits of this rule's allowlist
        # and the shared one in it (0: no such list). Until bound, or for an event the
        # pipeline has not enriched (``ev.listed`` -1), each list is asked itself.
        self._index = None
        self._own_bit = self._shared_bit = 0

    def bind(self, index) -> None:
        """Take the pipeline's :class:`~detector.dns.names.DomainIndex` before the
        first event: enrichment then finds, in one walk of each distinct name, what
        every detector's domain lists say about it (``ev.listed``, ``ev.reg_listed``).
        A detector with a list of its own (a denylist) extends this."""
        self._index = index
        own = self._own_allow
        self._own_bit = index.bit(own._set) if own is not None and own.domains else 0
        shared = self.rules.allowlist
        self._shared_bit = index.bit(shared._set) if shared.domains else 0

    def own_covers_name(self, ev: DnsEvent, name: str) -> bool:
        """The rule's own allowlist covers ``name``, the event's first question
        (lower-case, no trailing dot) or a parent of it."""
        if self._index is not None and ev.listed >= 0:
            return bool(ev.listed & self._own_bit)
        return self.rule.allowlist.covers_domain(name)

    def covers_registered(self, ev: DnsEvent, dom: str) -> bool:
        """The rule's or the shared allowlist covers ``dom``, the event's registered
        domain, or a parent of it."""
        if self._index is not None and ev.listed >= 0 and dom == ev.registered_domain:
            return bool(ev.reg_listed & (self._own_bit | self._shared_bit))
        return self.rule.allowlist.covers_domain(dom) or self.rules.allowlist.covers_domain(dom)

    def process(self, ev: DnsEvent) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError

    def process_batch(self, evs: list[DnsEvent]) -> list[Finding]:
        """A run of events of this detector's kinds, in time order: what the pipeline
        calls. The same as :meth:`process` on each in turn; a busy detector
        overrides it with one loop (its state in locals, no call per event)."""
        out: list[Finding] = []
        proc = self.process
        for ev in evs:
            fs = proc(ev)
            if fs:
                out.extend(fs)
        return out

    def tick(self, now: float) -> list[Finding]:
        return []

    def close(self) -> list[Finding]:
        return []

    # --- helpers shared by detectors ------------------------------------------
    def finding(
        self,
        ev: DnsEvent | None,
        *,
        score: float,
        entity: str,
        domain: str,
        features: dict[str, Any],
        reason: str,
        ts: float | None = None,
        severity: str | None = None,
    ) -> Finding:
        r = self.rule
        return Finding(
            rule_id=r.id,
            title=r.title,
            score=round(float(score), 4),
            severity=severity or r.severity,
            technique_id=r.technique_id,
            technique_name=r.technique_name,
            entity=entity,
            domain=domain,
            features=features,
            reason=reason,
            event=ev,
            ts=ev.ts if ts is None and ev is not None else (ts or 0.0),
            category=self.name,
        )

    def allowed(self, ev: DnsEvent) -> bool:
        """True when the rule's or the global allowlist covers this event. The global
        verdict was set once by enrichment (an event not enriched, with no entity, is
        judged here); the rule's own domain verdict is cached per name by the allowlist."""
        if ev.allowed:
            return True
        own = self._own_allow
        if own is not None:
            if self._index is not None and ev.listed >= 0:
                dom = ev.listed & self._own_bit
            else:
                dom = own.covers_domain(ev.questions[0].name if ev.questions else "")
            if dom or (own.processes and own.covers_process(ev)) or (
                    own.clients and own.covers_client(ev.dst_ip if ev.flags & 0x8000 else ev.src_ip)):
                return True
        return not ev.entity and self.rules.allowlist.covers(ev)


def entity_of(ev: DnsEvent) -> str:
    """Who is behind an event: the process when known, else the client address
    (set once per event by enrichment; computed here for an event not enriched)."""
    e = ev.entity
    if e:
        return e
    p = ev.process
    if p is not None and p.pid:
        return f"{p.name or p.comm or '?'}[{p.pid}]"
    return ev.client[0]
