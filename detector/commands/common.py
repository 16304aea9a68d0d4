"""Options shared by the commands that run the pipeline (replay, live, consume),
and the code that turns them into sinks and a Pipeline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from detector import errors
from detector.errors import DetectorError
from detector.pipeline.run import Pipeline, PipelineStats
from detector.ruleset import RuleError, RuleSet, load_rules
from detector.sinks.base import Sink
from detector.sinks.stream import open_output


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
                   help="where alerts (and --events) go as JSON lines; - is stdout (default)")
    g.add_argument("--events", action="store_true", help=events_help)
    g.add_argument("--events-output", metavar="FILE",
                   help="write events to this file instead of mixing them with alerts")
    g.add_argument("--format", choices=("ecs", "jsonl", "ocsf"), default="ecs",
                   help="ecs: Elastic Common Schema (default); jsonl: flat records; "
                   "ocsf: alerts as OCSF Detection Finding (class 2004), events as ECS")
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


def build_pipeline(args: argparse.Namespace, on_alert: Callable[[dict], None] | None = None,
                   extra_alert_sinks: list[Sink] | None = None) -> tuple[Pipeline, list[Sink]]:
    """Build sinks and the pipeline from the shared options."""
    rules = load_ruleset(args)
    alert_sinks: list[Sink] = list(extra_alert_sinks or [])
    kafka = _kafka_alert_sink(args)
    if kafka is not None:
        alert_sinks.append(kafka)
    out = None
    if not (kafka is not None and args.no_stdout and args.output == "-"):
        out = open_output(args.output)
        alert_sinks.append(out)
    event_sinks: list[Sink] = []
    if args.events:
        if args.events_output:
            event_sinks.append(open_output(args.events_output))
        elif out is not None:
            event_sinks.append(out)
    latency = None
    if getattr(args, "metrics_port", None):
        latency = _start_metrics(args)
    pipe = Pipeline(rules, _unique(alert_sinks), [s for s in event_sinks if s not in alert_sinks],
                    query_timeout=args.query_timeout, fmt=args.format,
                    suppress_window=args.suppress_window, on_alert=on_alert, latency=latency)
    if event_sinks and out in event_sinks and out in alert_sinks:
        # same stream for both: write events through the pipeline's event path
        pipe.event_sinks = [_NoClose(out)]
    if latency is not None:
        _register_metrics(pipe)
    return pipe, alert_sinks


class _NoClose(Sink):
    """Shares a sink that another list already closes."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name

    def write(self, doc: dict[str, Any], key: str | None = None) -> None:
        self.inner.write(doc, key)

    def close(self) -> None:
        pass


def _unique(sinks: list[Sink]) -> list[Sink]:
    seen: list[Sink] = []
    for s in sinks:
        if s not in seen:
            seen.append(s)
    return seen


def _kafka_alert_sink(args: argparse.Namespace) -> Sink | None:
    if not getattr(args, "kafka", None):
        return None
    from detector.kafkaconf import kafka_config_from_args
    from detector.sinks.kafka import KafkaSink

    conf = kafka_config_from_args(args)
    return KafkaSink(conf)


def event_publisher(args: argparse.Namespace):
    """The dns-events publisher for ``--publish-events`` (None without the flag)."""
    if not getattr(args, "publish_events", False):
        return None
    if not getattr(args, "kafka", None):
        raise DetectorError("--publish-events needs --kafka BOOTSTRAP", errors.USAGE)
    from detector.kafkaconf import kafka_config_from_args
    from detector.sinks.kafka import EventPublisher

    return EventPublisher(kafka_config_from_args(args))


def _start_metrics(args: argparse.Namespace):
    from detector import metrics

    metrics.serve(args.metrics_port, args.metrics_addr)
    return metrics.LATENCY


def _register_metrics(pipe: Pipeline) -> None:
    from detector import metrics

    metrics.register_stats(pipe.stats)


def rules_off(pipe: Pipeline) -> dict[str, str]:
    """Rules whose detector turned itself off, and why (for the summary)."""
    return {d.rule.id: d.off for d in pipe.detectors if getattr(d, "off", "")}


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
