"""`detector consume --group NAME`: detection as a member of a Kafka consumer group.

Reads DNS events (compact wire form, see detector/events.py) from the events
topic, runs the same Pipeline as replay and live capture, and publishes
alerts to the alerts topic (and stdout unless --no-stdout).

Delivery semantics: at least once. Offsets are committed only after the
events before them were processed and the alerts they raised were acked by
the broker or written to the on-disk spool. After a crash the uncommitted
tail is processed again, so an alert may be published twice; it carries the
same ``event.id`` (a stable hash of rule, entity, domain and window start),
so consumers of dns-alerts drop duplicates by alert id and revision (a higher
revision of the same id is the same alert, updated).

State: sensors key events by registered domain, so one domain's queries,
responses and windows are on one partition. Each assigned partition gets its
own pipeline (correlation, detector windows, suppression), so the alerts do
not depend on how partitions are spread over the group members. On a
rebalance, a revoked partition's pipeline is closed (its open windows are
flushed as alerts) and its offsets committed; the new owner starts empty
windows from the committed offset. Windows that span a rebalance may be cut
in two (an alert may be raised early or twice, never lost). Per-client
windows that span domains (e.g. NXDOMAIN bursts) see only their partition's
share of that client's traffic.

Time is the events' own timestamps (``ts``), not the consumer's clock.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter

from detector import errors
from detector.commands.common import _NoClose, add_pipeline_args, load_ruleset, print_summary
from detector.errors import DetectorError

log = logging.getLogger(__name__)

JOIN_GRACE = 30.0  # --max-idle does not end a run that is still joining the group

EXAMPLES = """\
examples:
  detector consume --kafka kafka:9092 --group detectors --no-stdout
  detector consume --kafka 127.0.0.1:9092 --group g --max-idle 10 -o alerts.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consume", help="detection on the dns-events topic as a consumer group member",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", required=True, metavar="NAME", help="consumer group id")
    p.add_argument("--max-idle", type=float, metavar="SEC",
                   help="stop after SEC seconds without a record (default: run until stopped)")
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N records (tests)")
    p.add_argument("--summary-json", metavar="FILE", help="write the run summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--publish-events", action="store_true", help=argparse.SUPPRESS)  # n/a here
    add_pipeline_args(p)
    p.set_defaults(func=run)


class _Consumer:
    def __init__(self, args: argparse.Namespace) -> None:
        from detector.kafkaconf import kafka_config_from_args

        if not args.kafka:
            raise DetectorError("consume needs --kafka BOOTSTRAP (or DETECTOR_KAFKA)", errors.USAGE)
        self.args = args
        self.conf = kafka_config_from_args(args)
        self.rules = load_ruleset(args)
        self.sinks = self._sinks()
        self.pipes: dict[int, object] = {}
        self.closed_stats: list = []
        self.offsets: dict = {}  # TopicPartition -> next offset to commit
        self.committed: dict = {}
        self.processed = 0
        self.skipped: Counter = Counter()
        self.partitions_seen: set[int] = set()
        self.lag: dict[int, int] = {}
        self.latency = None
        self._wire_warned = False
        if args.metrics_port:
            from detector import metrics

            metrics.serve(args.metrics_port, args.metrics_addr)
            self.latency = metrics.LATENCY
            metrics.register_source(lambda: {"records": self.processed,
                                             **{f"skipped_{k}": v for k, v in self.skipped.items()}})
            metrics.register_lag(lambda: [(self.conf.events_topic, p, n) for p, n in list(self.lag.items())])

    def _sinks(self):
        from detector.sinks.kafka import KafkaSink
        from detector.sinks.stream import open_output

        a = self.args
        alert_sinks = [KafkaSink(self.conf)]
        out = None
        if not (a.no_stdout and a.output == "-"):
            out = open_output(a.output)
            alert_sinks.append(out)
        event_sinks = []
        if a.events:
            if a.events_output:
                event_sinks.append(open_output(a.events_output))
            elif out is not None:
                event_sinks.append(out)
        self.alert_sinks = alert_sinks
        self.event_sinks = event_sinks
        return [s for i, s in enumerate(alert_sinks + event_sinks) if s not in (alert_sinks + event_sinks)[:i]]

    def pipe(self, partition: int):
        p = self.pipes.get(partition)
        if p is None:
            from detector.pipeline.run import Pipeline

            a = self.args
            p = Pipeline(self.rules, [_NoClose(s) for s in self.alert_sinks],
                         [_NoClose(s) for s in self.event_sinks], query_timeout=a.query_timeout,
                         fmt=a.format, suppress_window=a.suppress_window, latency=self.latency)
            if a.metrics_port:
                from detector import metrics

                metrics.register_stats(p.stats)
            self.pipes[partition] = p
            self.partitions_seen.add(partition)
        return p

    def handle(self, tp, msgs) -> None:
        from detector.events import WireVersionError, event_from_wire

        pipe = self.pipe(tp.partition)
        process = pipe.process
        for m in msgs:
            try:
                d = json.loads(m.value)
                if not isinstance(d, dict):
                    raise TypeError("not a JSON object")
                ev = event_from_wire(d)
            except WireVersionError as e:
                self.skipped["wire_version"] += 1
                if not self._wire_warned:
                    self._wire_warned = True
                    print(f"detector: error: {self.conf.events_topic}[{tp.partition}]@{m.offset}: {e}; "
                          "such records are skipped and counted", file=sys.stderr)
            except (ValueError, UnicodeDecodeError):
                self.skipped["not_json"] += 1
            except (KeyError, TypeError, IndexError, AttributeError):
                self.skipped["bad_record"] += 1
            else:
                try:
                    process(ev)
                    self.processed += 1
                except Exception:  # one poisonous record must not stop the group member
                    self.skipped["pipeline_error"] += 1
                    log.exception("%s[%d]@%d: processing failed", tp.topic, tp.partition, m.offset)
            self.offsets[tp] = m.offset + 1

    def flush_and_commit(self, consumer, tps=None) -> None:
        from kafka.structs import OffsetAndMetadata

        for s in self.sinks:
            s.flush()
        todo = {tp: off for tp, off in self.offsets.items()
                if (tps is None or tp in tps) and self.committed.get(tp) != off}
        if not todo:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in todo.items()})
            self.committed.update(todo)
        except Exception as e:  # noqa: BLE001  e.g. CommitFailedError after a rebalance
            log.warning("offset commit failed (%s); those records may be processed again", e)

    def close_partition(self, partition: int) -> None:
        p = self.pipes.pop(partition, None)
        if p is not None:
            self.closed_stats.append(p.close())

    def stats(self):
        from detector.pipeline.run import PipelineStats

        tot = PipelineStats()
        for s in self.closed_stats + [p.stats for p in self.pipes.values()]:
            for f in ("events", "queries", "responses", "unanswered", "findings", "alerts",
                      "suppressed", "detector_errors", "sink_errors"):
                setattr(tot, f, getattr(tot, f) + getattr(s, f))
            tot.alerts_by_rule.update(s.alerts_by_rule)
        return tot


def run(args: argparse.Namespace) -> int:
    from kafka import ConsumerRebalanceListener, KafkaConsumer
    from kafka.errors import KafkaConfigurationError, KafkaError

    if log.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    c = _Consumer(args)
    topic = c.conf.events_topic
    try:
        consumer = KafkaConsumer(**c.conf.consumer_kwargs(args.group),
                                 bootstrap_timeout_ms=max(5000, c.conf.max_block_ms))
    except KafkaConfigurationError as e:
        raise DetectorError(f"bad Kafka configuration: {e}", errors.USAGE) from None
    except KafkaError as e:
        for s in c.sinks:
            s.close()
        raise DetectorError(f"cannot reach Kafka at {c.conf.bootstrap}: {type(e).__name__}", errors.SINK,
                            "check --kafka and that the broker runs") from None
    state = {"last": time.monotonic(), "assigned": False}

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            revoked = set(revoked)
            for tp in revoked:
                c.close_partition(tp.partition)
            c.flush_and_commit(consumer, revoked)
            for tp in revoked:
                c.offsets.pop(tp, None)
                c.committed.pop(tp, None)
            # a rebalance follows: rejoining takes seconds, which --max-idle must not count
            state["assigned"] = False
            state["last"] = time.monotonic()
            if revoked:
                print(f"consume: revoked partitions {sorted(tp.partition for tp in revoked)}",
                      file=sys.stderr, flush=True)

        def on_partitions_assigned(self, assigned):
            state["last"] = time.monotonic()
            state["assigned"] = True
            print(f"consume: group {args.group}: assigned partitions "
                  f"{sorted(tp.partition for tp in assigned)} of {topic}", file=sys.stderr, flush=True)

    consumer.subscribe([topic], listener=Listener())
    t0 = time.monotonic()
    first = first_unix = last_unix = None
    try:
        while True:
            got = consumer.poll(timeout_ms=500, max_records=2000)
            now = time.monotonic()
            if got:
                state["last"] = now
                if first is None:
                    first, first_unix = now, time.time()
                last_unix = time.time()
                for tp, msgs in got.items():
                    c.handle(tp, msgs)
                c.flush_and_commit(consumer)
                for tp in got:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        c.lag[tp.partition] = max(0, hw - c.offsets.get(tp, 0))
            else:
                for s in c.sinks:  # lets a spooling sink notice the broker is back
                    s.flush()
            if args.max_events is not None and c.processed + sum(c.skipped.values()) >= args.max_events:
                break
            if args.max_idle is not None:
                # joining a group takes a few seconds: do not count that as idle
                limit = args.max_idle if state["assigned"] else max(args.max_idle, JOIN_GRACE)
                if now - state["last"] >= limit:
                    break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see cli.py): a clean stop
        print("consume: stopping (signal)", file=sys.stderr, flush=True)
    finally:
        for part in list(c.pipes):
            c.close_partition(part)
        c.flush_and_commit(consumer)
        try:
            consumer.close(autocommit=False)
        except Exception as e:  # noqa: BLE001
            log.debug("consumer close: %s", e)
        for s in c.sinks:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                log.error("closing %s failed: %s", s.name, e)
    stats = c.stats()
    elapsed = time.monotonic() - t0
    summary = {"group": args.group, "topic": topic, "processed": c.processed, "skipped": dict(c.skipped),
               "partitions": sorted(c.partitions_seen), "alerts": stats.alerts,
               "alerts_by_rule": dict(stats.alerts_by_rule), "queries": stats.queries,
               "responses": stats.responses, "unanswered": stats.unanswered,
               "kafka": c.alert_sinks[0].counters(), "seconds": round(elapsed, 3),
               # from the first record to the last batch done: throughput without join and idle time
               "active_seconds": round(state["last"] - first, 3) if first is not None else 0.0,
               "first_record_unix": first_unix, "last_record_unix": last_unix}
    if not args.quiet:
        print_summary("consume summary", [("group", args.group), ("partitions", sorted(c.partitions_seen)),
                                          ("records processed", f"{c.processed:,}"),
                                          ("time", f"{elapsed:.2f} s")], stats, dict(c.skipped))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.fail_on_alert and stats.alerts:
        return errors.ALERTS
    return errors.OK
