"""Options shared by the commands that run the pipeline (replay, live, consume),
and the one place that turns them into sinks (:func:`build_outputs`) and
pipelines (:func:`build_lanes`) for :func:`detector.sources.driver.drive`."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from detector import errors
from detector.errors import DetectorError
from detector.pipeline.run import Pipeline, PipelineStats
from detector.detect.registry import load_rules
from detector.ruleset import RuleError, RuleSet
from detector.sinks.base import Sink
from detector.sinks.stream import StreamSink, open_output
from detector.sources.driver import Lanes

log = logging.getLogger(__name__)


def port_list(text: str) -> frozenset[int]:
    try:
        ports = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected port numbers separated by commas") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports must be 1-65535")
    return ports


def resolver_list(text: str) -> tuple:
    """``--resolvers 10.0.0.53,192.168.1.0/24``: addresses or networks."""
    import ipaddress

    try:
        nets = tuple(ipaddress.ip_network(a.strip(), strict=False) for a in text.split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected IP addresses or networks separated by commas") from None
    if not nets:
        raise argparse.ArgumentTypeError("expected at least one resolver address")
    return nets


def add_pipeline_args(p: argparse.ArgumentParser, events_help: str = "also write every DNS event") -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", default="-", metavar="-|FILE",
                   help="where alerts (and --events) go as JSON lines; - is stdout (default). "
                   "A file is truncated first, unless --append")
    g.add_argument("--append", action="store_true",
                   help="add to the -o and --events-output files instead of truncating them")
    g.add_argument("--events", action="store_true", help=events_help)
    g.add_argument("--events-output", metavar="FILE",
                   help="write events to this file instead of mixing them with alerts")
    g.add_argument("--format", choices=("ecs", "jsonl", "ocsf"), default="ecs",
                   help="ecs: Elastic Common Schema 9.4 (default); jsonl: flat records; "
                   "ocsf: OCSF 1.8, events as DNS Activity (class 4003), alerts as Detection Finding "
                   "(class 2004)")
    g.add_argument("--event-model", choices=("message", "transaction"), default="message",
                   help="with --events: message: one document per DNS message, plus one when a query "
                   "times out; transaction: one per query and its response (or its timeout), as "
                   "Packetbeat and Zeek write them (docs/output.md)")
    g.add_argument("--no-stdout", action="store_true",
                   help="with --kafka, do not also print alerts on stdout")
    d = p.add_argument_group("detection")
    d.add_argument("--rules", action="append", metavar="PATH",
                   help="rule file or folder (repeatable; default: rules/)")
    d.add_argument("--query-timeout", type=float, default=5.0, metavar="SEC",
                   help="a query with no response after SEC seconds is 'unanswered' (default 5)")
    d.add_argument("--suppress-window", type=float, default=600.0, metavar="SEC",
                   help="one alert per rule, entity and domain per SEC seconds (default 600)")
    d.add_argument("--prevalence", metavar="FILE",
                   help="DGA prevalence table: loaded at start (when it exists) and saved at the end, "
                   "so names many clients resolved (or on many days) are known across runs; a replay "
                   "of yesterday's capture warms it for today")
    d.add_argument("--resolvers", type=resolver_list, action="extend", metavar="ADDR[,ADDR|CIDR...]",
                   help="the resolvers this network may use, on top of the rules' allowlists; DNS to "
                   "any other server is an unauthorized-resolver alert (repeatable)")
    d.add_argument("--fail-on-alert", action="store_true",
                   help="exit with code 1 when any alert was raised (for scripts and CI)")
    m = p.add_argument_group("metrics")
    m.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port")
    m.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                   help="address for --metrics-port (default 127.0.0.1)")
    try:
        from detector.kafkaconf import add_kafka_args
    except ImportError:
        return
    add_kafka_args(p)


def load_ruleset(args: argparse.Namespace) -> RuleSet:
    try:
        rules = load_rules(args.rules)
    except RuleError as e:
        raise DetectorError(str(e), errors.RULES, "run `detector rules check` to validate rule files") from None
    # Resolver policy: the rules, --resolvers, and this host's resolv.conf only
    # when the command captures this host's own traffic (live sets host_resolvers).
    from detector.detect.resolvers import set_policy

    set_policy(rules, host_config=getattr(args, "host_resolvers", False),
               resolvers=tuple(getattr(args, "resolvers", None) or ()))
    if getattr(args, "prevalence", None):
        for r in rules.rules:
            if r.detector == "dga":
                r.params["prevalence_file"] = args.prevalence
    return rules


class Outputs:
    """Every sink one run writes to, built once by :func:`build_outputs`.

    ``alerts`` take each alert document, ``events`` each rendered event
    (--events), ``raw`` each enriched DnsEvent itself (the dns-events
    publisher). Pipelines get non-closing wrappers (a consumer runs one
    pipeline per partition over the same sinks); :meth:`close` closes each
    sink once, after every pipeline closed. :meth:`failures` then says what
    was lost or not delivered, and :func:`exit_code` turns that into the
    documented exit code.
    """

    def __init__(self) -> None:
        self.alerts: list[Sink] = []
        self.events: list[Sink] = []
        self.raw: list = []
        self.kafka = None  # the dns-alerts sink, when --kafka
        self.close_errors = 0
        self._close_failures: list[tuple[int, str]] = []

    @property
    def all(self) -> list[Sink]:
        seen: list[Sink] = []
        for s in self.alerts + self.events + self.raw:
            if all(s is not t for t in seen):
                seen.append(s)
        return seen

    def flush(self) -> None:
        for s in self.all:
            s.flush()

    def close(self) -> None:
        for s in self.all:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001  a sink must not hide the others' flush
                self.close_errors += 1
                self._close_failures.append((errors.SINK, f"{_label(s)}: closing failed: {e}"))
                log.debug("closing %s failed", s.name, exc_info=True)

    def failures(self) -> list[tuple[int, str]]:
        """(exit code, one line) for each sink that lost or did not deliver documents."""
        out = list(self._close_failures)
        for s in self.all:
            try:
                why = s.failure() if hasattr(s, "failure") else None
            except Exception as e:  # noqa: BLE001  asking must not hide the others
                why = f"{_label(s)}: cannot tell what was delivered: {e}"
            if why:
                out.append((getattr(s, "failure_code", errors.SINK), why))
        return out


def _label(s) -> str:
    return getattr(s, "label", None) or getattr(s, "name", "output")


def exit_code(outputs: Outputs, code: int, *written: int) -> int:
    """The run's exit code once its outputs are closed: each output failure is
    one ``detector: error:`` line on stderr; lost documents give 5 (SINK),
    documents only kept in a spool 6 (PENDING), over any other code but 130
    (interrupted). ``written``: the codes of other outputs (write_summary)."""
    fails = outputs.failures()
    for _, why in fails:
        print(f"detector: error: {why}", file=sys.stderr, flush=True)
    codes = [c for c, _ in fails] + [c for c in written if c != errors.OK]
    if not codes or code == errors.INTERRUPTED:
        return code
    return errors.SINK if errors.SINK in codes else max(codes)


def open_summary(args: argparse.Namespace):
    """The --summary-json file, opened (truncated) before anything runs, so a bad
    path fails at once instead of after the capture was read; None without it."""
    path = getattr(args, "summary_json", None)
    if not path:
        return None
    from detector.sinks.stream import _open_reason

    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by write_summary
    except OSError as e:
        raise DetectorError(f"--summary-json {path}: cannot write: {_open_reason(path, e)}",
                            errors.SINK) from None


def write_summary(fh, summary: dict) -> int:
    """Write and close the --summary-json file; OK, or SINK after one error line."""
    if fh is None:
        return errors.OK
    import json

    try:
        with fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
    except OSError as e:
        print(f"detector: error: --summary-json {fh.name}: not written: {e.strerror or e}",
              file=sys.stderr, flush=True)
        return errors.SINK
    return errors.OK


def build_outputs(args: argparse.Namespace, *, publish_events: bool | None = None) -> Outputs:
    """The sinks of replay, live and consume, from the shared options.

    Alerts: dns-alerts with --kafka, and -o (stdout by default, unless --no-stdout
    with --kafka). Events (--events): --events-output or the alerts' stream.
    Raw events (--publish-events): the dns-events topic, written after enrichment.
    """
    if publish_events is None:
        publish_events = getattr(args, "publish_events", False)
    if publish_events and not getattr(args, "kafka", None):
        raise DetectorError("--publish-events needs --kafka BOOTSTRAP", errors.USAGE)
    o = Outputs()
    kafka = bool(getattr(args, "kafka", None))
    out = None
    append = getattr(args, "append", False)
    try:
        # files first: a bad path is refused before a broker is contacted or a spool opened
        if not (kafka and args.no_stdout and args.output == "-"):
            out = open_output(args.output, append=append, option="-o")
            o.alerts.append(out)
        if args.events:
            if args.events_output and not (out is not None and _same_file(args.events_output, args.output)):
                o.events.append(open_output(args.events_output, append=append, option="--events-output"))
            elif out is not None:
                o.events.append(out)
        if kafka:
            from detector.kafkaconf import kafka_config_from_args
            from detector.sinks.kafka import EventSink, KafkaSink

            conf = kafka_config_from_args(args)
            o.kafka = KafkaSink(conf)
            o.alerts.insert(0, o.kafka)
            if publish_events:
                o.raw.append(EventSink(conf))
    except BaseException:
        o.close()
        raise
    return o


def _same_file(a: str, b: str) -> bool:
    """-o and --events-output naming one file share one sink (two would truncate
    each other's lines)."""
    import os

    if a == b:
        return True
    if "-" in (a, b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def pipeline_factory(args: argparse.Namespace, rules: RuleSet, outputs: Outputs,
                     on_alert: Callable[[dict], None] | None = None) -> Callable[[], Pipeline]:
    """What makes each lane's Pipeline (one for replay and live, one per partition
    for consume); starts the metrics endpoint when --metrics-port."""
    latency = _start_metrics(args) if getattr(args, "metrics_port", None) else None
    if latency is not None:
        from detector import metrics

        metrics.register_outputs(outputs.all)

    def make() -> Pipeline:
        pipe = Pipeline(rules, [_NoClose(s, "alert") for s in outputs.alerts],
                        [_NoClose(s, "event") for s in outputs.events + outputs.raw],
                        query_timeout=args.query_timeout, fmt=args.format,
                        event_model=getattr(args, "event_model", "message"),
                        suppress_window=args.suppress_window, on_alert=on_alert, latency=latency)
        if latency is not None:
            _register_metrics(pipe)
        return pipe

    return make


def prepare(args: argparse.Namespace, *, publish_events: bool | None = None,
            on_alert: Callable[[dict], None] | None = None,
            rules: RuleSet | None = None) -> tuple[Outputs, Lanes]:
    """Rules (exit 4 before anything opens), the sinks, then the pipeline lanes over them."""
    if rules is None:
        rules = load_ruleset(args)
    outputs = build_outputs(args, publish_events=publish_events)
    return outputs, Lanes(pipeline_factory(args, rules, outputs, on_alert))


class _NoClose(Sink):
    """A sink the pipeline writes to but does not close (Outputs closes it once)."""

    def __init__(self, inner: Sink, kind: str = "document") -> None:
        self.inner = inner
        self.name = inner.name
        self.wants_events = getattr(inner, "wants_events", False)
        if self.wants_events:
            self.write_event = inner.write_event
        if hasattr(inner, "write_conn"):  # the dns-events publisher also carries DoT/DoH connections
            self.write_conn = inner.write_conn
        if isinstance(inner, StreamSink):  # it counts what it loses by kind (alerts, events)
            self.write = functools.partial(inner.write, kind=kind)  # type: ignore[method-assign]

    def write(self, doc: dict[str, Any], key: str | None = None) -> None:
        self.inner.write(doc, key)

    def close(self) -> None:
        pass


def _start_metrics(args: argparse.Namespace):
    from detector import metrics

    metrics.serve(args.metrics_port, args.metrics_addr)
    return metrics.LATENCY


def _register_metrics(pipe: Pipeline) -> None:
    from detector import metrics

    # the suppressor counts repeats as they happen; the pipeline's stats only at close
    metrics.register_stats(pipe.stats, live={"suppressed": lambda: pipe.suppressor.suppressed})


def rules_off(lanes: Lanes) -> dict[str, str]:
    """Rules whose detector turned itself off, and why (for the summary)."""
    return {d.rule.id: d.off for d in lanes.detectors if getattr(d, "off", "")}


def print_summary(title: str, rows: list[tuple[str, Any]], stats: PipelineStats,
                  errors_by_kind: dict[str, int]) -> None:
    w = sys.stderr.write
    w(f"\n{title}\n")
    for k, v in rows:
        w(f"  {k:<24} {v}\n")
    w(f"  {'queries':<24} {stats.queries:,}\n")
    w(f"  {'responses':<24} {stats.responses:,}\n")
    w(f"  {'unanswered queries':<24} {stats.unanswered:,}\n")
    if errors_by_kind:
        w("  skipped / parse errors:\n")
        for k, v in sorted(errors_by_kind.items(), key=lambda kv: -kv[1]):
            w(f"    {k:<22} {v:,}\n")
    w(f"  {'alerts':<24} {stats.alerts:,}" + (f"  ({stats.suppressed:,} suppressed as repeats)\n"
                                              if stats.suppressed else "\n"))
    for rid, n in sorted(stats.alerts_by_rule.items()):
        w(f"    {rid:<22} {n:,}\n")
