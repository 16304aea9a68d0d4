"""`detector replay pcap FILE...`: run the detection pipeline over captures."""

from __future__ import annotations

import argparse

from detector import errors
from detector.capture.layers import DEFAULT_PORTS
from detector.commands.common import (add_pipeline_args, exit_code, load_ruleset, open_summary, port_list,
                                      prepare, print_summary, rules_off, write_summary)
from detector.errors import DetectorError
from detector.sources.driver import Progress, drive
from detector.sources.pcap import PcapSource, check_inputs

HELP = """\
Replay pcap or pcapng captures through the same pipeline as live capture.

Link types: Ethernet (with 802.1Q/QinQ VLAN tags), Linux cooked SLL and SLL2
(tcpdump -i any), raw IPv4/IPv6, BSD/OpenBSD loopback, PPP. IPv4 and IPv6 with
extension headers, IP fragments reassembled, DNS over UDP and over TCP with
stream reassembly; GRE, ERSPAN, VXLAN, Geneve and Teredo are decapsulated.
Time is the capture's own timestamps, so a replay gives the same alerts every time.

Resolver policy: a capture comes from another network, so this host's
/etc/resolv.conf is never used. DNS to a server outside the resolvers listed
in the rules (allowlist.resolvers in rules/resolvers.yaml or an allowlist
file) or given with --resolvers is an unauthorized-resolver alert. With
neither, that rule is off: it says so once on stderr and in the summary, and
raises nothing. Multicast, broadcast and mDNS/LLMNR are never a resolver.
"""

EXAMPLES = """\
examples:
  detector replay pcap dns.pcap                      alerts (ECS JSON lines) on stdout
  detector replay pcap dns.pcap --events --format jsonl | jq .qname
  detector replay pcap a.pcap b.pcapng -o alerts.jsonl --fail-on-alert
  tcpdump -U -w - port 53 | detector replay pcap -   a capture read from stdin as it comes
  detector replay pcap mdns.pcap --ports 53,5353,5355,8053
  detector replay pcap site.pcap --resolvers 10.0.0.53,10.0.1.0/24   flag DNS to any other server

-o FILE is truncated first (--append adds to it). Inputs, rules, --summary-json
and the outputs are checked before the first packet is read.

exit codes: 0 ok, 1 alerts (with --fail-on-alert), 2 bad input (missing, a folder,
not a capture), 3 capture truncated (what was there was processed), 4 invalid rules,
5 output failed (alerts or events lost; the message says how many), 6 alerts kept
in the Kafka spool, not delivered, 130 interrupted
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="run the pipeline over captures (pcap, pcapng)",
                       description="Run the pipeline over recorded traffic.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="source", metavar="SOURCE")
    pp = rs.add_parser("pcap", help="pcap or pcapng files", description=HELP, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("files", nargs="+", metavar="FILE",
                    help="pcap or pcapng capture files; - is stdin (pcap or pcapng, read as a stream)")
    pp.add_argument("--ports", type=port_list, default=DEFAULT_PORTS, metavar="P,P,...",
                    help="UDP/TCP ports carrying DNS (default 53,5353,5355)")
    pp.add_argument("--progress", action="store_true",
                    help="show the progress line even when stderr is not a terminal (one line a second)")
    pp.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    pp.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    pp.add_argument("--publish-events", action="store_true",
                    help="publish every DNS event, enriched, to the dns-events Kafka topic (needs --kafka)")
    add_pipeline_args(pp)
    pp.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), errors.USAGE)[1])


def _not_an_input(args: argparse.Namespace) -> None:
    """-o, --events-output and --summary-json are truncated when opened: never a capture to read."""
    import os

    inputs = [f for f in args.files if f != "-"]
    for opt, path in (("-o", args.output), ("--events-output", args.events_output),
                      ("--summary-json", args.summary_json)):
        if not path or path == "-" or not os.path.exists(path):
            continue
        for f in inputs:
            try:
                same = os.path.samefile(path, f)
            except OSError:
                same = False
            if same:
                raise DetectorError(f"{opt} {path}: is the input capture {f}; writing would destroy it",
                                    errors.USAGE)


def run(args: argparse.Namespace) -> int:
    # everything that can be refused is refused before the first packet is read:
    # inputs (2), rules (4), the summary file and the outputs (5)
    check_inputs(args.files)
    _not_an_input(args)
    rules = load_ruleset(args)
    summary_file = open_summary(args)
    outputs, lanes = prepare(args, rules=rules)
    pipe = lanes.get(0)
    source = PcapSource(args.files, args.ports, conns=bool(pipe._conn_detectors))
    source.on_idle = outputs.flush  # stdin paused: what was written goes out
    if getattr(args, "metrics_port", None):
        from detector import metrics

        metrics.register_source(source.stats)
    res = drive(source, lanes, outputs,
                progress=Progress(not (args.no_progress or args.quiet), source.unit,
                                  force=args.progress and not args.quiet))
    stats = lanes.stats()
    dec = source.dec
    skipped = source.errors()
    elapsed = res.seconds
    summary = {
        "files": len(args.files),
        "packets": dec.packets,
        "dns_messages": dec.dns_messages,
        "queries": stats.queries,
        "responses": stats.responses,
        "unanswered": stats.unanswered,
        "errors": skipped,
        "alerts": stats.alerts,
        "alerts_by_rule": dict(stats.alerts_by_rule),
        "suppressed": stats.suppressed,
        "rules_off": rules_off(lanes),
        "truncated": source.truncated,
        "refused": source.refused,
        "seconds": round(elapsed, 3),
        "packets_per_second": round(dec.packets / elapsed) if elapsed > 0 else None,
    }
    if res.interrupted:
        summary["interrupted"] = True
    if not args.quiet:
        rows = [("files", len(args.files)), ("packets", f"{dec.packets:,}"),
                ("DNS messages", f"{dec.dns_messages:,}"),
                ("time", f"{elapsed:.2f} s ({summary['packets_per_second'] or 0:,} pkts/s)")]
        if dec.unknown_linktypes:
            rows.append(("unknown link types", dict(dec.unknown_linktypes)))
        rows += [("refused", why) for why in source.refused]
        rows += [("rule off", f"{rid}: {why}") for rid, why in summary["rules_off"].items()]
        if res.interrupted:
            rows.append(("interrupted", "processed the packets before the signal"))
        print_summary("replay summary", rows, stats, skipped)
    code = errors.OK
    if args.fail_on_alert and stats.alerts:
        code = errors.ALERTS
    if source.truncated:
        code = errors.TRUNCATED
    if source.refused:  # a capture (of several) could not be read: the rest was
        code = errors.USAGE
    if res.interrupted:
        code = errors.INTERRUPTED
    return exit_code(outputs, code, write_summary(summary_file, summary))
