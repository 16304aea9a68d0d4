"""`detector replay pcap FILE...`: run the detection pipeline over captures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from detector import errors
from detector.capture.layers import DEFAULT_PORTS, SUPPORTED_LINKTYPES, PacketDecoder
from detector.capture.pcap import CaptureError, PcapReader
from detector.commands.common import (add_pipeline_args, build_pipeline, event_publisher, port_list,
                                     print_summary, rules_off)
from detector.errors import DetectorError

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
  detector replay pcap mdns.pcap --ports 53,5353,5355,8053
  detector replay pcap site.pcap --resolvers 10.0.0.53,10.0.1.0/24   flag DNS to any other server

exit codes: 0 ok, 1 alerts (with --fail-on-alert), 2 bad input, 3 capture truncated,
4 invalid rules, 5 output failed
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="run the pipeline over captures (pcap, pcapng)",
                       description="Run the pipeline over recorded traffic.")
    rs = p.add_subparsers(dest="source", metavar="SOURCE")
    pp = rs.add_parser("pcap", help="pcap or pcapng files", description=HELP, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture files")
    pp.add_argument("--ports", type=port_list, default=DEFAULT_PORTS, metavar="P,P,...",
                    help="UDP/TCP ports carrying DNS (default 53,5353,5355)")
    pp.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    pp.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    pp.add_argument("--publish-events", action="store_true",
                    help="publish every decoded DNS event to the dns-events Kafka topic (needs --kafka)")
    add_pipeline_args(pp)
    pp.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), errors.USAGE)[1])


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def show(self, name: str, done: int, size: int, packets: int, alerts: int, t0: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.25:
            return
        self.last = now
        pct = 100.0 * done / size if size else 100.0
        rate = packets / max(now - t0, 1e-9)
        bar = "#" * int(pct / 5)
        sys.stderr.write(f"\r{name[-30:]:>30} [{bar:<20}] {pct:5.1f}%  {packets:,} pkts  "
                         f"{rate / 1000:,.0f}k pkts/s  {alerts:,} alerts ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 110 + "\r")


def run(args: argparse.Namespace) -> int:
    for f in args.files:
        if not os.path.exists(f):
            raise DetectorError(f"{f}: no such file", errors.USAGE)
    publisher = event_publisher(args)
    pipe, _ = build_pipeline(args)
    conn = _conn_handler(pipe)
    dec = PacketDecoder(args.ports, on_conn=conn)
    if getattr(args, "metrics_port", None):
        from detector import metrics

        metrics.register_source(lambda: {"packets": dec.packets, "dns_messages": dec.dns_messages,
                                         **{f"skipped_{k}": v for k, v in dec.stats.items()}})
    progress = Progress(not (args.no_progress or args.quiet))
    t0 = time.monotonic()
    truncated: list[str] = []
    readers = []
    try:
        for path in args.files:
            try:
                reader = PcapReader(path)
            except CaptureError as e:
                raise DetectorError(str(e), errors.USAGE) from None
            readers.append(reader)
            lts = reader.linktypes
            if reader.format == "pcap" and lts and lts[0] not in SUPPORTED_LINKTYPES:
                raise DetectorError(
                    f"{path}: unknown link type {lts[0]}; supported: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items())),
                    errors.USAGE)
            process = pipe.process
            frame = dec.frame
            n = 0
            for ts, lt, data in reader:
                evs = frame(ts, lt, data)
                if evs:
                    for ev in evs:
                        if publisher is not None:
                            publisher.publish(ev)
                        process(ev)
                n += 1
                if not n & 0x3FFF:
                    progress.show(path, reader.offset, reader.size, dec.packets, pipe.stats.alerts, t0)
            for ev in dec.flush():
                if publisher is not None:
                    publisher.publish(ev)
                process(ev)
            if reader.truncated:
                truncated.append(f"{path}: {reader.truncated_detail}")
                print(f"detector: warning: {path} is truncated ({reader.truncated_detail}); "
                      "processed the packets before the cut", file=sys.stderr)
            reader.close()
    finally:
        progress.done()
        stats = pipe.close()
        if publisher is not None:
            publisher.close()
    elapsed = time.monotonic() - t0
    skipped = dict(dec.stats)
    for k in ("not_dns", "ip_fragment_held", "ip_reassembled"):
        skipped.pop(k, None)
    if dec.tcp.gaps:
        skipped["tcp_gaps"] = dec.tcp.gaps
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
        "rules_off": rules_off(pipe),
        "truncated": truncated,
        "seconds": round(elapsed, 3),
        "packets_per_second": round(dec.packets / elapsed) if elapsed > 0 else None,
    }
    if not args.quiet:
        rows = [("files", len(args.files)), ("packets", f"{dec.packets:,}"),
                ("DNS messages", f"{dec.dns_messages:,}"),
                ("time", f"{elapsed:.2f} s ({summary['packets_per_second'] or 0:,} pkts/s)")]
        if dec.unknown_linktypes:
            rows.append(("unknown link types", dict(dec.unknown_linktypes)))
        rows += [("rule off", f"{rid}: {why}") for rid, why in summary["rules_off"].items()]
        print_summary("replay summary", rows, stats, skipped)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    if truncated:
        return errors.TRUNCATED
    if args.fail_on_alert and stats.alerts:
        return errors.ALERTS
    return errors.OK


def _conn_handler(pipe):
    """Hand DoT/DoH connection starts to the resolver detector when it is loaded."""
    if not pipe._conn_detectors:
        return None
    from detector.events import ConnEvent

    def on_conn(ts, transport, ipv, src, sport, dst, dport):
        pipe.process_conn(ConnEvent(ts, transport, ipv, src, sport, dst, dport))

    return on_conn
