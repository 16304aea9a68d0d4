"""`detector top`: what is happening, as refreshing top-N tables.

From Kafka (``--kafka``): reads ``dns-alerts`` (top alerting entities,
domains and rules) and ``dns-events`` (top domains by queries, by average and
p99 latency, by NXDOMAIN; resolvers by latency; processes by queries),
correlating queries with responses itself. Reads from the beginning of the
topics (``--from-end``: only new records) without joining a consumer group,
so it never takes partitions away from ``detector consume``.

From captures (``FILE...``): replays them through the pipeline with the
rules and prints the same tables at the end.

``--once`` prints one snapshot of what the topics hold now and exits;
``--json`` prints it as JSON (for scripts and tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter

from detector import errors
from detector.errors import DetectorError
from detector.views.text import safe

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from detector.kafkaconf import add_kafka_args

    p = sub.add_parser("top", help="top domains, resolvers, processes and alerting entities",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  detector top --kafka 127.0.0.1:9092\n"
                       "  detector top --kafka kafka:9092 --once --json | jq .entities\n"
                       "  detector top capture.pcap -n 20\n\n"
                       "exit codes: 0 ok, 2 bad input file, 4 invalid rules, 5 Kafka unreachable")
    p.add_argument("files", nargs="*", metavar="FILE", help="captures to summarise instead of Kafka")
    p.add_argument("-n", "--top", type=int, default=10, metavar="N", help="rows per table (default 10)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.add_argument("--interval", type=float, default=2.0, metavar="SEC", help="refresh period (default 2)")
    p.add_argument("--from-end", action="store_true", help="only records that arrive from now on")
    p.add_argument("--rules", action="append", metavar="PATH", help="rules for FILE mode (default rules/)")
    p.add_argument("--publish-events", action="store_true", help=argparse.SUPPRESS)  # n/a here
    add_kafka_args(p)
    p.set_defaults(func=run)


class Top:
    def __init__(self, n: int) -> None:
        self.n = n
        self.alerts = 0
        self.entities: Counter = Counter()
        self.domains: Counter = Counter()
        self.rules: Counter = Counter()
        self.events = 0
        self.skipped = 0
        self.duplicates = 0
        self._ids: set[str] = set()
        self.view = None
        try:
            from detector.views.top import TopView

            self.view = TopView()
        except ImportError:
            pass
        self._pipe = None

    def alert(self, doc: dict) -> None:
        if not isinstance(doc, dict):
            self.skipped += 1
            return
        fi = doc.get("finding_info")
        if isinstance(fi, dict):  # OCSF Detection Finding (2004): ours keep the rest in unmapped
            dd = doc.get("unmapped") if isinstance(doc.get("unmapped"), dict) else {}
            an = fi.get("analytic") if isinstance(fi.get("analytic"), dict) else {}
            rule, aid = an.get("uid") or fi.get("title", "?"), fi.get("uid")
        else:  # ECS, or flat JSON lines
            dd = doc.get("dns_detector") if isinstance(doc.get("dns_detector"), dict) else {}
            rule = (doc.get("rule") or {}).get("id") if isinstance(doc.get("rule"), dict) else doc.get("rule_id")
            aid = (doc.get("event") or {}).get("id") if isinstance(doc.get("event"), dict) else doc.get("alert_id")
        entity = dd.get("entity", doc.get("entity"))
        domain = dd.get("domain", doc.get("domain"))
        if aid:  # at-least-once delivery: the same alert may arrive twice, same id and
            # revision; a later revision of an alert counted already is no new alert
            if aid in self._ids:
                self.duplicates += 1
                return
            if len(self._ids) >= 1_000_000:
                self._ids.clear()
            self._ids.add(aid)
        self.alerts += 1
        self.rules[rule or "?"] += 1
        if entity:
            self.entities[entity] += 1
        if domain:
            self.domains[domain] += 1

    def event(self, ev) -> None:
        if self.view is None:
            return
        if self._pipe is None:
            from detector.pipeline.run import Pipeline
            from detector.ruleset import Allowlist, RuleSet

            self._pipe = Pipeline(RuleSet([], Allowlist(), []), observers=[self.view.process])
        self.events += 1
        self._pipe.process(ev)

    def snapshot(self) -> dict:
        n = self.n
        snap = {
            "alerts": self.alerts,
            "entities": [{"entity": k, "alerts": v} for k, v in self.entities.most_common(n)],
            "domains": [{"domain": k, "alerts": v} for k, v in self.domains.most_common(n)],
            "rules": [{"rule": k, "alerts": v} for k, v in self.rules.most_common(n)],
            "events": self.events,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
        }
        if self.view is not None:
            snap["tables"] = self.view.tables(n)
        return snap

    def render(self) -> str:
        s = self.snapshot()
        out = [f"alerts {s['alerts']:,}   events {s['events']:,}" + (f"   skipped {s['skipped']:,}"
                                                                     if s["skipped"] else "")]
        for title, key in (("top alerting entities", "entities"), ("top alerted domains", "domains"),
                           ("alerts by rule", "rules")):
            out.append(f"\n{title}")
            rows = s[key]
            if not rows:
                out.append("  (none)")
            label = {"entities": "entity", "domains": "domain", "rules": "rule"}[key]
            w = max([len(label)] + [len(str(r[label])) for r in rows])
            for r in rows:
                out.append(f"  {str(r[label]).ljust(w)}  {r['alerts']:,}")
        text = "\n".join(out) + "\n"
        if self.view is not None and self.events:
            text += "\n" + self.view.render(self.n)
        return text


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise DetectorError("-n must be at least 1", errors.USAGE)
    top = Top(args.top)
    if args.files:
        return _from_files(args, top)
    if not args.kafka:
        raise DetectorError("top needs --kafka BOOTSTRAP or capture FILEs", errors.USAGE)
    return _from_kafka(args, top)


def _show(args, top: Top, final: bool) -> None:
    if args.json:
        if final:
            print(json.dumps(top.snapshot(), indent=2))
        return
    if sys.stdout.isatty() and not final:
        sys.stdout.write("\033[H\033[2J")
    sys.stdout.write(safe(top.render()))  # names from packets and /proc: shown, never obeyed
    sys.stdout.flush()


def _from_files(args, top: Top) -> int:
    from detector.capture.layers import DEFAULT_PORTS, PacketDecoder
    from detector.capture.pcap import CaptureError, PcapReader
    from detector.commands.common import load_ruleset
    from detector.pipeline.run import Pipeline

    rules = load_ruleset(args)
    pipe = Pipeline(rules, on_alert=top.alert, observers=[top.view.process] if top.view else [])
    dec = PacketDecoder(DEFAULT_PORTS)
    for path in args.files:
        if not os.path.exists(path):
            raise DetectorError(f"{path}: no such file", errors.USAGE)
        try:
            reader = PcapReader(path)
        except CaptureError as e:
            raise DetectorError(str(e), errors.USAGE) from None
        for ts, lt, data in reader:
            for ev in dec.frame(ts, lt, data) or ():
                top.events += 1
                pipe.process(ev)
        for ev in dec.flush():
            top.events += 1
            pipe.process(ev)
        reader.close()
    pipe.close()
    _show(args, top, True)
    return errors.OK


def _from_kafka(args, top: Top) -> int:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from detector.events import WireVersionError, events_from_record
    from detector.kafkaconf import kafka_config_from_args

    if log.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    conf = kafka_config_from_args(args)
    kw = conf.consumer_kwargs(None)
    kw.pop("group_id")
    try:
        c = KafkaConsumer(**kw, bootstrap_timeout_ms=5000)
    except KafkaError as e:
        raise DetectorError(f"cannot reach Kafka at {conf.bootstrap}: {type(e).__name__}", errors.SINK) from None
    try:
        tps = []
        for topic in (conf.alerts_topic, conf.events_topic):
            parts = c.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            raise DetectorError(f"neither {conf.alerts_topic} nor {conf.events_topic} exists on {conf.bootstrap}",
                                errors.USAGE)
        c.assign(tps)
        if args.from_end:
            c.seek_to_end(*tps)
        else:
            c.seek_to_beginning(*tps)
        end = c.end_offsets(tps) if args.once else None
        last_show = 0.0
        deadline = time.monotonic() + 60
        while True:
            got = c.poll(timeout_ms=500, max_records=5000)
            for tp, msgs in got.items():
                is_alert = tp.topic == conf.alerts_topic
                for m in msgs:
                    try:
                        d = json.loads(m.value)
                        if is_alert:
                            top.alert(d)
                        else:
                            for ev in events_from_record(d):
                                top.event(ev)
                    except (ValueError, KeyError, TypeError, IndexError, WireVersionError):
                        top.skipped += 1
            if args.once:
                # past the end offsets and quiet: tansu 0.6 reports the end as the last
                # batch's base offset + 1, so the end offsets alone can stop early
                if not got and all(c.position(tp) >= end[tp] for tp in tps):
                    break
                if time.monotonic() > deadline:
                    raise DetectorError("reading the topics timed out", errors.SINK)
                continue
            now = time.monotonic()
            if now - last_show >= args.interval:
                last_show = now
                _show(args, top, False)
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    if top._pipe is not None and args.once:
        top._pipe.close()  # expire outstanding queries so they count as unanswered
    _show(args, top, True)
    return errors.OK
