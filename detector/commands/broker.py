"""`detector broker`: run the embedded Kafka-protocol broker (tansu) in the
foreground for local use, with the dns-alerts and dns-events topics created.
Storage is in memory: topics are gone when it stops (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import sys
import time

from detector import errors
from detector.errors import DetectorError


def _topic(text: str) -> tuple[str, int]:
    name, _, parts = text.partition(":")
    try:
        n = int(parts or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:PARTITIONS") from None
    if not name or n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:PARTITIONS (>= 1)")
    return name, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (tansu) in the foreground",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  detector broker --port 9092 --topic dns-events:4\n"
                       "  detector replay pcap x.pcap --kafka 127.0.0.1:9092\n\n"
                       "exit codes: 0 stopped (Ctrl-C or --duration), 2 bad arguments,\n"
                       "5 the broker could not start or exited")
    p.add_argument("--port", type=int, metavar="P", help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--topic", action="append", type=_topic, metavar="NAME[:PARTITIONS]",
                   help="topics to create (default dns-alerts:1 and dns-events:4)")
    p.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds (tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector.broker import EmbeddedBroker

    if args.port is not None and not 0 < args.port < 65536:
        raise DetectorError(f"--port {args.port}: must be 1-65535", errors.USAGE)
    topics = dict(args.topic) if args.topic else {"dns-alerts": 1, "dns-events": 4}
    with EmbeddedBroker(topics=topics, port=args.port) as b:
        print(b.bootstrap, flush=True)
        print(f"detector: embedded broker (tansu, in-memory) on {b.bootstrap}; topics "
              + ", ".join(f"{t}:{n}" for t, n in topics.items()) + "; Ctrl-C stops it",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        while b.alive():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                return errors.OK
            time.sleep(0.2)
        print(f"detector: error: the broker exited: {b.output()[-300:].strip()}", file=sys.stderr)
        return errors.SINK
