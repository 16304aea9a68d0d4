"""`detector consume --group NAME`: detection as a member of a Kafka consumer group.

Reads DNS events (compact wire form, see detector/events.py; a record holds
one event or a pack of them) from the events topic, runs the same Pipeline
as replay and live capture, and publishes alerts to the alerts topic (and
stdout unless --no-stdout).

Delivery semantics: at least once. Offsets are committed only after the
events before them were processed and the alerts they raised were acked by
the broker or written to the on-disk spool. After a crash the uncommitted
tail is processed again, so an alert may be published twice; it carries the
same ``event.id`` (a stable hash of rule, entity, domain and window start),
so consumers of dns-alerts drop duplicates by alert id and revision (a higher
revision of the same id is the same alert, updated).

State: sensors key events by detection entity (the process when known, else
the client), so one entity's queries, responses, DoT/DoH connections and
windows are on one partition. Each assigned partition gets its
own pipeline (correlation, detector windows, suppression), so the alerts do
not depend on how partitions are spread over the group members. On a
rebalance, a revoked partition's pipeline is closed (its open windows are
flushed as alerts) and its offsets committed; the new owner starts empty
windows from the committed offset. Windows that span a rebalance may be cut
in two (an alert may be raised early or twice, never lost). Without a
rebalance the group raises exactly the alerts of one replay for every
per-entity rule (tests/test_group_parity.py). Aggregates across clients see
only their partition's share: a random-subdomain flood against one domain
from many clients, a resolver's overall health (per-process health is exact)
and prevalence (how many clients resolve a name).

Time is the events' own timestamps (``ts``), not the consumer's clock.
"""

from __future__ import annotations

import argparse
import resource
import sys

from detector import errors
from detector.commands.common import (add_pipeline_args, exit_code, load_ruleset, open_summary, prepare,
                                      print_summary, write_summary)
from detector.errors import DetectorError
from detector.sources.driver import drive

EXAMPLES = """\
examples:
  detector consume --kafka kafka:9092 --group detectors --no-stdout
  detector consume --kafka 127.0.0.1:9092 --group g --max-idle 10 -o alerts.jsonl

exit codes: 0 ok, 1 alerts (with --fail-on-alert), 2 bad arguments, 4 invalid rules,
5 output failed or Kafka unreachable, 6 alerts kept in the Kafka spool, not delivered
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consume", help="detection on the dns-events topic as a consumer group member",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", required=True, metavar="NAME", help="consumer group id")
    p.add_argument("--max-idle", type=float, metavar="SEC",
                   help="stop after SEC seconds without a record (default: run until stopped)")
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N events (tests)")
    p.add_argument("--summary-json", metavar="FILE", help="write the run summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--publish-events", action="store_true", help=argparse.SUPPRESS)  # n/a here
    add_pipeline_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector.kafkaconf import kafka_config_from_args
    from detector.sources.kafka import KafkaSource

    if not args.kafka:
        raise DetectorError("consume needs --kafka BOOTSTRAP (or DETECTOR_KAFKA)", errors.USAGE)
    conf = kafka_config_from_args(args)
    rules = load_ruleset(args)
    summary_file = open_summary(args)
    # events read from the topic are not published back to it
    outputs, lanes = prepare(args, publish_events=False, rules=rules)
    try:
        source = KafkaSource(conf, args.group, max_idle=args.max_idle, max_events=args.max_events)
    except BaseException:
        outputs.close()
        raise
    if args.metrics_port:
        from detector import metrics

        metrics.register_source(source.stats)
        metrics.register_lag(source.lags)
    res = drive(source, lanes, outputs,
                on_interrupt=lambda: print("consume: stopping (signal)", file=sys.stderr, flush=True))
    stats = lanes.stats()
    summary = {"group": args.group, "topic": source.topic, "processed": source.processed,
               "skipped": dict(source.skipped), "partitions": sorted(lanes.seen), "alerts": stats.alerts,
               "alerts_by_rule": dict(stats.alerts_by_rule), "queries": stats.queries,
               "responses": stats.responses, "unanswered": stats.unanswered,
               "kafka": outputs.kafka.counters(), "seconds": round(res.seconds, 3),
               # from the first record to the last batch done: throughput without join and idle time
               "active_seconds": round(res.last - res.first, 3) if res.first is not None else 0.0,
               "first_record_unix": source.first_unix, "last_record_unix": source.last_unix,
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if not args.quiet:
        print_summary("consume summary", [("group", args.group), ("partitions", sorted(lanes.seen)),
                                          ("events processed", f"{source.processed:,}"),
                                          ("time", f"{res.seconds:.2f} s")], stats, dict(source.skipped))
    # a signal is how a group member is told to leave: a clean stop, not an error
    code = errors.ALERTS if args.fail_on_alert and stats.alerts else errors.OK
    return exit_code(outputs, code, write_summary(summary_file, summary))
