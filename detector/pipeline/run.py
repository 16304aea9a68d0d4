"""The pipeline: decoded DnsEvents in, alerts (and optionally events) out.

    correlate -> enrich -> detect -> suppress -> render -> sinks

Every source (pcap replay, live eBPF capture, the dns-events Kafka topic)
feeds the same :class:`Pipeline` with :meth:`Pipeline.process`, in time order.
The pipeline owns no clock: detector windows, query timeouts and alert
suppression all run on the events' timestamps.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from detector.alerts.dedup import Suppressor
from detector.alerts.render import render_alert, render_event
from detector.detect.base import Detector
from detector.detect.registry import detector_class
from detector.dns.names import DomainIndex
from detector.events import DnsEvent, Finding
from detector.pipeline.correlate import Correlator
from detector.pipeline.enrich import Enricher
from detector.ruleset import RuleSet
from detector.sinks.base import Sink

log = logging.getLogger(__name__)

TICK = 1.0  # seconds of event time between detector ticks
#: young-generation allocations between cyclic collections. The pipeline allocates a
#: few objects per message and keeps large, acyclic state (windows, caches): with
#: the default (700) the collector walks that state thousands of times a second and
#: took a third of a replay's time. Reference counting frees nearly everything.
GC_THRESHOLD = (500_000, 1_000, 1_000)
_gc_tuned = False


def tune_gc() -> None:
    """Once per process: move what is alive now (modules, the model) out of the
    collector's sight and collect rarely."""
    global _gc_tuned
    if not _gc_tuned:
        _gc_tuned = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)


@dataclass
class PipelineStats:
    events: int = 0
    queries: int = 0
    responses: int = 0
    unanswered: int = 0
    findings: int = 0
    alerts: int = 0
    suppressed: int = 0
    detector_errors: int = 0
    alerts_by_rule: Counter = field(default_factory=Counter)
    sink_errors: int = 0


class Pipeline:
    def __init__(
        self,
        rules: RuleSet,
        alert_sinks: Iterable[Sink] = (),
        event_sinks: Iterable[Sink] = (),
        *,
        query_timeout: float = 5.0,
        fmt: str = "ecs",
        event_model: str = "message",
        suppress_window: float = 600.0,
        on_alert: Callable[[dict], None] | None = None,
        latency: object | None = None,
        observers: Iterable[Callable[[DnsEvent], None]] = (),
    ) -> None:
        self.rules = rules
        self.alert_sinks = list(alert_sinks)
        self.event_sinks = list(event_sinks)
        # a sink with wants_events takes the enriched DnsEvent itself (the dns-events
        # publisher); the others take the rendered document
        self._raw_sinks = [s.write_event for s in self.event_sinks if getattr(s, "wants_events", False)]
        self._conn_sinks = [s.write_conn for s in self.event_sinks if hasattr(s, "write_conn")]
        self._doc_sinks = [s for s in self.event_sinks if not getattr(s, "wants_events", False)]
        self.fmt = fmt
        self.event_model = event_model  # "message" or "transaction" (docs/output.md)
        self.correlator = Correlator(query_timeout)
        # the domain lists every detector checks names against, walked once per distinct
        # name by enrichment (each detector's bits are given before the first event)
        self.index = DomainIndex()
        self.enrich = Enricher(rules.allowlist, index=self.index)
        self._enrich = self.enrich.__call__  # a bound method: called without the instance-call slot
        self.suppressor = Suppressor(suppress_window)
        self.stats = PipelineStats()
        self.on_alert = on_alert
        self.latency = latency  # optional histogram with observe(resolver, seconds)
        self.observers = list(observers)  # see every enriched event (detector top)
        self.detectors: list[Detector] = []
        for rule in rules.rules:
            if not rule.enabled:
                continue
            cls = detector_class(rule.detector)
            if cls is None:  # validated at load; a plug-in may have gone missing
                log.warning("rule %s: detector %r is not available", rule.id, rule.detector)
                continue
            d = cls(rule, rules)
            d.bind(self.index)
            self.detectors.append(d)
        # per detector, once: its batch method and the event kinds it takes. The
        # detectors that learn from other rules' findings run last, so a batch's
        # findings are known to them before they see the batch.
        order = sorted(self.detectors, key=lambda d: hasattr(d, "observe_finding"))
        self._batch_procs: list[tuple[Detector, Callable, frozenset]] = [
            (d, d.process_batch, frozenset(d.kinds)) for d in order if d.kinds]
        self._conn_detectors = [d for d in self.detectors if hasattr(d, "process_conn")]
        # detectors that learn from other rules' findings (flagged_connect: the names a
        # DGA, tunnel or denylist finding named), fed every finding before suppression
        self._finding_observers = [d for d in self.detectors if hasattr(d, "observe_finding")]
        self._next_tick = None
        self.last_ts = 0.0
        tune_gc()

    # --- input ----------------------------------------------------------------
    def process(self, ev: DnsEvent) -> None:
        """Feed one decoded DNS message (query or response)."""
        self.process_many((ev,))

    def process_many(self, evs: Iterable[DnsEvent]) -> None:
        """Feed a batch of decoded DNS messages, in time order (what a Source yields).

        Each message is paired, enriched and written to the event sinks one by one;
        the detectors then take the run of messages as one batch (split where capture
        time reaches a tick, so a tick sees exactly the messages before it). An
        exception propagates with ``evs`` consumed up to the event that raised, the
        messages before it detected."""
        c = self.correlator
        pair = c.pair
        prep = self._prep
        run: list[DnsEvent] = []
        add = run.append
        try:
            for ev in evs:
                if ev.ts >= c.next_expire:
                    for u in c.expire(ev.ts):
                        if prep(u):
                            self._detect(run)
                            run.clear()
                            self._tick(u.ts)
                        add(u)
                extra = pair(ev)
                if extra is not None:
                    if prep(extra):
                        self._detect(run)
                        run.clear()
                        self._tick(extra.ts)
                    add(extra)
                if prep(ev):
                    self._detect(run)
                    run.clear()
                    self._tick(ev.ts)
                add(ev)
        finally:
            self._detect(run)

    def process_conn(self, conn: object) -> None:
        """Feed a non-DNS connection record (DoT, DoH) to the event publisher and the
        detectors that want it."""
        for w in self._conn_sinks:
            w(conn)
        for d in self._conn_detectors:
            self._findings(d, self._call(d, d.process_conn, conn))

    def report(self, f: Finding) -> None:
        """A finding from outside the detectors: a source saying it shed load."""
        self._findings(None, [f])

    def advance(self, now: float) -> None:
        """Let time move on without an event (live capture when the host is quiet)."""
        for e in self.correlator.expire(now):
            self._handle(e)
        self._tick(now)

    def close(self) -> PipelineStats:
        """End of input: expire queries, close detector windows, flush suppression and sinks."""
        for e in self.correlator.close(self.last_ts):
            self._handle(e)
        for d in self.detectors:
            self._findings(d, self._call(d, d.tick, self.last_ts + 10 * TICK * 3600))
            self._findings(d, self._call(d, d.close))
        for f, aid, extra in self.suppressor.close():
            self._emit(f, aid, extra)
        self.stats.suppressed = self.suppressor.suppressed
        for s in self.alert_sinks + self.event_sinks:
            try:
                s.close()
            except Exception as e:  # a sink must not hide the others' flush
                self.stats.sink_errors += 1
                log.error("closing %s failed: %s", s.name, e)
        return self.stats

    # --- stages -----------------------------------------------------------------
    def _handle(self, e: DnsEvent) -> None:
        """One message outside a batch (expiry without input, end of input)."""
        if self._prep(e):
            self._tick(e.ts)
        self._detect([e])

    def _prep(self, e: DnsEvent) -> bool:
        """Count, enrich and write out one message. True when capture time has
        reached the next tick: the caller runs the detectors on the messages before
        this one, then ticks."""
        st = self.stats
        st.events += 1
        kind = e.kind
        if kind == "query":
            st.queries += 1
        elif kind == "response":
            st.responses += 1
            if self.latency is not None and e.latency is not None:
                self.latency.observe(e.src_ip, e.latency)
        else:
            st.unanswered += 1
        if e.listed < 0:  # an unanswered query's copy was enriched as the query
            self._enrich(e)
        if self._raw_sinks:
            for w in self._raw_sinks:
                w(e)
        if self._doc_sinks:
            doc = render_event(e, self.fmt, self.event_model)
            if doc is not None:  # the transaction model writes a query with its response
                for s in self._doc_sinks:
                    s.write(doc, e.registered_domain)
        if self.observers:
            for o in self.observers:
                o(e)
        ts = e.ts
        if ts > self.last_ts:
            self.last_ts = ts
        nt = self._next_tick
        if nt is None:
            self._next_tick = ts + TICK
            return False
        return ts >= nt

    def _detect(self, run: list[DnsEvent]) -> None:
        """Every detector over a run of messages, in order; each takes the messages
        of the kinds it wants as one batch."""
        if not run:
            return
        by_kinds: dict[frozenset, list[DnsEvent]] = {}
        st = self.stats
        for d, proc, kinds in self._batch_procs:
            evs = by_kinds.get(kinds)
            if evs is None:
                evs = by_kinds[kinds] = run if len(kinds) == 3 else [e for e in run if e.kind in kinds]
            if not evs:
                continue
            try:
                fs = proc(evs)
            except Exception:  # one bad detector must not stop the others
                # the rest of this batch is not seen by this detector: counted, and
                # the first few logged with the detector's traceback
                st.detector_errors += 1
                if st.detector_errors <= 5:
                    log.exception("detector %s failed in a batch of %d messages", d.rule.id, len(evs))
                continue
            if fs:
                self._findings(d, fs)

    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK
        for d in self.detectors:
            self._findings(d, self._call(d, d.tick, now))
        for f, aid, extra in self.suppressor.tick(now):
            self._emit(f, aid, extra)

    def _call(self, d: Detector, fn, *args) -> list[Finding]:
        """tick/close of one detector; a failure is counted and logged, never fatal."""
        try:
            return fn(*args)
        except Exception:  # one bad detector must not stop the others
            self.stats.detector_errors += 1
            if self.stats.detector_errors <= 5:
                log.exception("detector %s failed in %s", d.rule.id, fn.__name__)
            return []

    def _findings(self, d: Detector, fs: list[Finding] | None) -> None:
        if not fs:
            return
        for f in fs:
            if not f.ts:
                f.ts = self.last_ts
            self.stats.findings += 1
            for o in self._finding_observers:
                if o is not d:
                    try:
                        o.observe_finding(f)
                    except Exception:  # one bad detector must not stop the others
                        self.stats.detector_errors += 1
                        if self.stats.detector_errors <= 5:
                            log.exception("detector %s failed observing a finding", o.rule.id)
            for g, aid, extra in self.suppressor.offer(f):
                self._emit(g, aid, extra)

    def _emit(self, f: Finding, aid: str, extra: dict) -> None:
        doc = render_alert(f, aid, extra, self.fmt)
        self.stats.alerts += 1
        self.stats.alerts_by_rule[f.rule_id] += 1
        # every revision of one alert under one key: a keyed sink (Kafka) keeps them in order
        key = f"{f.rule_id}|{f.entity}|{f.key or f.domain}"
        for s in self.alert_sinks:
            s.write(doc, key)
        if self.on_alert is not None:
            self.on_alert(doc)
