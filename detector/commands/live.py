"""`detector live`: eBPF capture of every DNS message on this host, with the process."""

from __future__ import annotations

import argparse
import json
import threading
import time

from detector import errors
from detector.commands.common import (add_pipeline_args, build_pipeline, event_publisher, port_list,
                                     print_summary, rules_off)

#: set while probes are attached (the demo starts its sample traffic on it)
ARMED = threading.Event()

HELP = """\
Capture DNS live with eBPF (BCC) and run the detection pipeline on it.

Programs in bpf/ attach to the cgroup v2 root: cgroup sock_addr hooks name the
process that owns each DNS socket (pid, tid, comm, uid, gid, cgroup id), and
cgroup_skb hooks copy every DNS packet, both ways, UDP and TCP, IPv4 and IPv6,
in every network namespace. exe and container id come from /proc. Needs root,
BCC (python3-bpfcc) and kernel headers; ./setup.sh installs them.
Ctrl-C or SIGTERM detaches the programs and flushes every sink.

Resolver policy: live capture watches this host, so its own resolvers
(/etc/resolv.conf nameservers, systemd-resolved's upstreams) are allowed, on
top of the rules' allowlists and --resolvers; --no-host-resolvers (or
use_host_config: false in rules/resolvers.yaml) leaves them out.
"""

EXAMPLES = """\
examples:
  detector live                                   alerts on stdout until Ctrl-C
  detector live --duration 60 --events --format jsonl | jq 'select(.process.comm=="curl")'
  detector live --kafka kafka:9092 --publish-events --no-stdout   a sensor feeding consumers
  detector live --ports 53,5353,8053 --metrics-port 9464

exit codes: 0 ok, 1 alerts (with --fail-on-alert), 10 not root, 11 BCC missing,
12 kernel headers missing, 13 BPF program refused (verifier log above), 130 interrupted
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="live eBPF capture with process attribution (root)",
                       description=HELP, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds (default: run)")
    p.add_argument("--ports", type=port_list, default=frozenset({53}), metavar="P,P,...",
                   help="ports carrying DNS (default 53)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary at the end")
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--publish-events", action="store_true",
                   help="publish every DNS event to the dns-events Kafka topic (needs --kafka)")
    p.add_argument("--no-host-resolvers", dest="host_resolvers", action="store_false",
                   help="do not allow this host's resolv.conf nameservers as resolvers")
    add_pipeline_args(p)
    # The capture is this host's own traffic: its resolver configuration is the policy.
    p.set_defaults(func=run, host_resolvers=True)


def run(args: argparse.Namespace) -> int:
    from detector.capture.live import LiveCapture, check_requirements
    from detector.events import ConnEvent

    check_requirements()  # before building sinks: a clear error first
    publisher = event_publisher(args)
    pipe, _ = build_pipeline(args)
    cap = LiveCapture(ports=args.ports)
    cap.start()
    if getattr(args, "metrics_port", None):
        from detector import metrics

        metrics.register_source(lambda: {**cap.stats, "lost_bpf_events": cap.lost})
    if not args.quiet:
        import sys

        ports = ",".join(str(x) for x in sorted(args.ports))
        print(f"detector: capturing DNS on ports {ports} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    ARMED.set()
    t0 = time.monotonic()
    end = None if args.duration is None else t0 + args.duration
    interrupted = False
    try:
        while end is None or time.monotonic() < end:
            evs = cap.poll()
            for ev in evs:
                if isinstance(ev, ConnEvent):
                    pipe.process_conn(ev)
                    continue
                if publisher is not None:
                    publisher.publish(ev)
                pipe.process(ev)
            if not evs:
                pipe.advance(time.time())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ARMED.clear()
        cap.close()
        stats = pipe.close()
        if publisher is not None:
            publisher.close()
    elapsed = time.monotonic() - t0
    summary = {**cap.stats, "lost_bpf_events": cap.lost, "queries": stats.queries,
               "responses": stats.responses, "unanswered": stats.unanswered, "alerts": stats.alerts,
               "alerts_by_rule": dict(stats.alerts_by_rule), "rules_off": rules_off(pipe),
               "seconds": round(elapsed, 3)}
    if not args.quiet:
        rows = [("time", f"{elapsed:.1f} s"), ("DNS packets", f"{cap.stats['packets']:,}"),
                ("DNS messages", f"{cap.stats['dns_messages']:,}"),
                ("lost BPF events", f"{cap.lost:,}"), ("DoT connects", cap.stats["connects"])]
        rows += [("rule off", f"{rid}: {why}") for rid, why in rules_off(pipe).items()]
        errs = {k: v for k, v in cap.stats.items() if k in ("parse_errors", "truncated_copies") and v}
        print_summary("live capture summary", rows, stats, errs)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    if interrupted:
        return errors.INTERRUPTED
    if args.fail_on_alert and stats.alerts:
        return errors.ALERTS
    return errors.OK
