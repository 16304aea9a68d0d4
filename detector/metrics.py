"""Prometheus metrics (``--metrics-port``), all named ``dns_detector_*``.

* ``dns_detector_events_total``, ``..._queries_total``, ``..._responses_total``,
  ``..._unanswered_total``, ``..._alerts_total{rule}``, ``..._suppressed_total``,
  ``..._detector_errors_total``, ``..._sink_errors_total``: the pipeline counters
  (summed over every pipeline this process runs);
* ``dns_detector_kafka_{sent,spooled,replayed,failed,send_errors}_total{topic}``
  and ``dns_detector_spool_depth{topic}`` (records waiting on disk);
* ``dns_detector_input_total{kind}``: source counters a command registers
  (DNS messages, parse errors, lost BPF events, consumer skips);
* ``dns_detector_output_lost_total{output,kind}``: alerts and events a JSON-lines
  output could not write (a full disk), as they are lost;
* ``dns_detector_consumer_lag{topic,partition}`` (``detector consume``);
* ``dns_detector_dns_latency_seconds{resolver}``: response latency histogram.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_RESOLVERS = 1000  # label cardinality bound; further resolvers share "other"


class _Latency:
    def __init__(self) -> None:
        self.h = Histogram("dns_detector_dns_latency_seconds", "DNS response latency by resolver",
                           ["resolver"], buckets=_BUCKETS)
        self.seen: set[str] = set()

    def observe(self, resolver: str, seconds: float) -> None:
        if resolver not in self.seen:
            if len(self.seen) >= MAX_RESOLVERS:
                resolver = "other"
            else:
                self.seen.add(resolver)
        self.h.labels(resolver).observe(seconds)


LATENCY = _Latency()
_lock = threading.Lock()
_stats: list = []
_sources: list[Callable[[], dict[str, int]]] = []
_lag: list[Callable[[], Iterable[tuple[str, int, int]]]] = []
_outputs: list = []
_server_started: set[tuple[str, int]] = set()


class _Collector:
    def collect(self):
        with _lock:
            stats = list(_stats)
            sources = list(_sources)
            lags = list(_lag)
            outs = list(_outputs)
        fields = ("events", "queries", "responses", "unanswered", "suppressed", "detector_errors", "sink_errors")
        for f in fields:
            c = CounterMetricFamily(f"dns_detector_{f}", f"pipeline {f.replace('_', ' ')}")
            c.add_metric([], sum(_value(s, live, f) for s, live in stats))
            yield c
        a = CounterMetricFamily("dns_detector_alerts", "alerts raised, by rule", labels=["rule"])
        by_rule: dict[str, int] = {}
        for s, _ in stats:
            for r, n in s.alerts_by_rule.items():
                by_rule[r] = by_rule.get(r, 0) + n
        for r, n in sorted(by_rule.items()):
            a.add_metric([r], n)
        yield a
        inp = CounterMetricFamily("dns_detector_input", "source counters (messages, parse errors, "
                                  "lost BPF events, skipped records)", labels=["kind"])
        for fn in sources:
            try:
                for k, v in fn().items():
                    inp.add_metric([k], v)
            except Exception:  # noqa: BLE001  a source must not break the scrape
                continue
        yield inp
        from detector.sinks.kafka import ACTIVE

        by_topic: dict[str, dict[str, int]] = {}
        for p in list(ACTIVE):  # several producers may share a topic: sum them
            t = by_topic.setdefault(p.topic, {"sent": 0, "spooled": 0, "replayed": 0, "failed": 0,
                                              "send_errors": 0, "depth": 0, "full": 0})
            for f in ("sent", "spooled", "replayed", "failed", "send_errors"):
                t[f] += getattr(p, f)
            t["depth"] = max(t["depth"], p.spool.records)  # they share the spool folder
            t["full"] = max(t["full"], int(p.spool_full))
        for f in ("sent", "spooled", "replayed", "failed", "send_errors"):
            c = CounterMetricFamily(f"dns_detector_kafka_{f}", f"Kafka records {f.replace('_', ' ')}",
                                    labels=["topic"])
            for topic, t in sorted(by_topic.items()):
                c.add_metric([topic], t[f])
            yield c
        g = GaugeMetricFamily("dns_detector_spool_depth", "records waiting in the on-disk spool",
                              labels=["topic"])
        full = GaugeMetricFamily("dns_detector_spool_full", "1 when the spool refused records",
                                 labels=["topic"])
        for topic, t in sorted(by_topic.items()):
            g.add_metric([topic], t["depth"])
            full.add_metric([topic], t["full"])
        yield g
        yield full
        lost = CounterMetricFamily("dns_detector_output_lost", "documents an output could not write "
                                   "(a full disk, a closed stdout), by output and kind", labels=["output", "kind"])
        for sink in outs:
            try:
                counts = sorted(dict(getattr(sink, "lost", None) or {}).items())
            except RuntimeError:  # written to while copied: the next scrape has it
                continue
            for kind, n in counts:
                lost.add_metric([getattr(sink, "label", sink.name), kind], n)
        yield lost
        lag = GaugeMetricFamily("dns_detector_consumer_lag", "records behind the log end",
                                labels=["topic", "partition"])
        for fn in lags:
            try:
                for t, part, n in fn():
                    lag.add_metric([t, str(part)], n)
            except Exception:  # noqa: BLE001
                continue
        yield lag


REGISTRY.register(_Collector())


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on ADDR:PORT from a daemon thread (idempotent)."""
    if (addr, port) in _server_started:
        return
    from detector import errors
    from detector.errors import DetectorError

    try:
        start_http_server(port, addr)
    except OSError as e:
        raise DetectorError(f"--metrics-port {port}: cannot listen on {addr}:{port}: {e.strerror}",
                            errors.USAGE) from None
    _server_started.add((addr, port))


def _value(stats, live: dict[str, Callable[[], int]], f: str) -> int:
    fn = live.get(f)
    if fn is not None:
        try:
            return max(fn(), getattr(stats, f, 0))
        except Exception:  # noqa: BLE001  a counter must not break the scrape
            pass
    return getattr(stats, f, 0)


def register_stats(stats, live: dict[str, Callable[[], int]] | None = None) -> None:
    """Expose a PipelineStats (several may be registered: their counters are summed).

    ``live`` maps a field to a function giving its current value, for counters the
    stats only learn at the end (``suppressed``: the suppressor counts repeats as
    they happen), so a scrape during the run sees them."""
    with _lock:
        if all(s is not stats for s, _ in _stats):
            _stats.append((stats, dict(live or {})))


def register_source(fn: Callable[[], dict[str, int]]) -> None:
    """``fn()`` returns {kind: count}, e.g. dns_messages, parse errors, lost BPF events."""
    with _lock:
        _sources.append(fn)


def register_outputs(sinks: Iterable) -> None:
    """Sinks that count what they could not write (``lost``: {kind: n}, e.g. the
    JSON-lines outputs): ``dns_detector_output_lost_total{output,kind}``."""
    with _lock:
        for s in sinks:
            if hasattr(s, "lost") and all(s is not t for t in _outputs):
                _outputs.append(s)


def register_lag(fn: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
    with _lock:
        _lag.append(fn)
