"""`detector live`: eBPF capture of every DNS message on this host, with the process."""

from __future__ import annotations

import argparse
import sys
import threading

from detector import errors
from detector.commands.common import (add_pipeline_args, exit_code, load_ruleset, open_summary, port_list,
                                      prepare, print_summary, rules_off, write_summary)
from detector.sources.driver import drive

#: set while probes are attached (the demo starts its sample traffic on it)
ARMED = threading.Event()

HELP = """\
Capture DNS live with eBPF (BCC) and run the detection pipeline on it.

Programs in bpf/ attach to the cgroup v2 root: cgroup sock_addr hooks name the
process that owns each DNS socket (pid, tid, comm, uid, gid, cgroup id), and
cgroup_skb hooks copy every DNS packet, both ways, UDP and TCP, IPv4 and IPv6,
in every network namespace. UDP on any other port is examined in the kernel
too: a packet whose content is a DNS message is captured (and raises "DNS on a
non-standard port"); --no-any-port turns that off. Addresses that names flagged
by a DGA, tunnel or denylist finding resolved to are handed to the kernel, which
then reports connects to them (nothing for ordinary connects). exe and container id come
from /proc. Needs root,
BCC (python3-bpfcc) and kernel headers; ./setup.sh installs them.
Ctrl-C or SIGTERM detaches the programs and flushes every sink.

Resolver policy: live capture watches this host, so its own resolvers
(/etc/resolv.conf nameservers, systemd-resolved's upstreams) are allowed, on
top of the rules' allowlists and --resolvers; --no-host-resolvers (or
use_host_config: false in rules/resolvers.yaml) leaves them out.

Resolver policy in the kernel (off by default): --audit reports, and --enforce
refuses (the caller's connect() or sendto() fails with EPERM), DNS on port 53
to an address outside that policy, DNS over TLS/QUIC (853, 784) to a server
outside it, and port 443 to a known DoH endpoint address; each one is a
"resolver-policy-refused" alert naming the process (features.action: refused
or audit). Loopback stubs are always allowed. --policy-cgroup PATH=exempt or
PATH=ADDR,... gives one cgroup v2 group (a container) no policy or its own
resolvers. The enforcing programs are attached by BPF links: they go with the
sensor's process, even when it is killed.
"""

EXAMPLES = """\
examples:
  detector live                                   alerts on stdout until Ctrl-C
  detector live --duration 60 --events --format jsonl | jq 'select(.process.comm=="curl")'
  detector live --kafka kafka:9092 --publish-events --no-stdout   a sensor feeding consumers
  detector live --ports 53,5353,8053 --metrics-port 9464
  detector live --audit --resolvers 10.0.0.53     what --enforce would refuse, as alerts
  detector live --enforce --policy-cgroup system.slice/docker-ID.scope=exempt

exit codes: 0 ok, 1 alerts (with --fail-on-alert), 2 bad arguments, 4 invalid rules,
5 output failed (alerts or events lost; the message says how many), 6 alerts kept in
the Kafka spool, not delivered, 10 not root, 11 BCC missing, 12 kernel headers
missing, 13 BPF program refused (verifier log above), 130 interrupted
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="live eBPF capture with process attribution (root)",
                       description=HELP, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds (default: run)")
    p.add_argument("--ports", type=port_list, default=frozenset({53}), metavar="P,P,...",
                   help="ports carrying DNS (default 53)")
    p.add_argument("--no-any-port", dest="any_port", action="store_false",
                   help="capture --ports only; do not look for DNS on other UDP ports by content")
    p.add_argument("--tls", action="store_true",
                   help="also read DoH and DoT in clear text, from uprobes on the system libssl.so.3 "
                        "(OpenSSL): the messages enter the pipeline with their process")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary at the end")
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--publish-events", action="store_true",
                   help="publish every DNS event to the dns-events Kafka topic (needs --kafka)")
    p.add_argument("--no-host-resolvers", dest="host_resolvers", action="store_false",
                   help="do not allow this host's resolv.conf nameservers as resolvers")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--audit", dest="policy_mode", action="store_const", const="audit",
                      help="report, as alerts, every DNS connect/send the resolver policy would refuse")
    mode.add_argument("--enforce", dest="policy_mode", action="store_const", const="enforce",
                      help="refuse (EPERM) DNS, DoT, DoQ and DoH outside the resolver policy, with an alert")
    p.add_argument("--policy-cgroup", action="append", default=[], metavar="PATH=exempt|ADDR,...",
                   help="a cgroup v2 group (path under the cgroup2 mount) exempt from the policy, or "
                        "with resolvers of its own (repeatable; --audit/--enforce)")
    add_pipeline_args(p)
    # The capture is this host's own traffic: its resolver configuration is the policy.
    p.set_defaults(func=run, host_resolvers=True)


def run(args: argparse.Namespace) -> int:
    from detector.capture.live import check_requirements
    from detector.detect.flagged_connect import attach as attach_flagged
    from detector.detect.nonstandard_port import expect_ports
    from detector.sources.live import LiveSource

    check_requirements()  # before building sinks: a clear error first
    rules = load_ruleset(args)
    expect_ports(rules, args.ports)  # ports the operator says carry DNS are no non-standard port
    policy = _policy(args, rules)
    summary_file = open_summary(args)
    # load and attach first: the capture then drops its privileges (capture/privileges.py),
    # and capabilities are per thread, so no thread may start before (Kafka clients, metrics)
    source = LiveSource(args.ports, any_port=args.any_port, tls=args.tls, policy=policy)
    try:
        outputs, lanes = prepare(args, rules=rules)
    except BaseException:
        source.close()
        raise
    pipe = lanes.get(0)
    # shedding under overload is an alert (sensor-overload), never silent
    source.cap.on_overload = pipe.report
    # connects to addresses a flagged name resolved to: the detector learns them from
    # findings and answers, the kernel reports only connects to them
    attach_flagged(pipe, source.cap.watch_address, source.cap.unwatch_address)
    if getattr(args, "metrics_port", None):
        from detector import metrics

        metrics.register_source(source.stats)
    source.start()
    if not args.quiet:
        ports = ",".join(str(x) for x in sorted(args.ports))
        if policy is not None:
            print(f"detector: resolver policy {policy.mode}: {', '.join(policy.host_networks()[:6])}"
                  f"{' ...' if len(policy.host_networks()) > 6 else ''} and loopback "
                  f"({len(policy.doh):,} DoH addresses, {len(policy.cgroups)} cgroups of their own)",
                  file=sys.stderr, flush=True)
        print(f"detector: capturing DNS on ports {ports} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    ARMED.set()
    try:
        res = drive(source, lanes, outputs, duration=args.duration)
    finally:
        ARMED.clear()
    stats = lanes.stats()
    cs = source.stats()
    off = rules_off(lanes)
    summary = {**cs, "queries": stats.queries, "responses": stats.responses, "unanswered": stats.unanswered,
               "alerts": stats.alerts, "alerts_by_rule": dict(stats.alerts_by_rule), "rules_off": off,
               "seconds": round(res.seconds, 3)}
    if not args.quiet:
        rows = [("time", f"{res.seconds:.1f} s"), ("DNS packets", f"{cs['packets']:,}"),
                ("DNS messages", f"{cs['dns_messages']:,}"),
                ("lost BPF events", f"{cs['lost_bpf_events']:,}"), ("DoT connects", cs["connects"]),
                ("flagged connects", f"{cs.get('flagged_connects', 0):,} "
                                     f"({cs.get('flagged_addresses', 0):,} addresses watched)")]
        if args.any_port:
            rows.append(("DNS found on other ports", f"{cs.get('content_dns', 0):,} of "
                                                     f"{cs.get('content_examined', 0):,} UDP packets examined"))
        if policy is not None:
            verb = "refused" if policy.mode == "enforce" else "would be refused (audit)"
            rows.append(("outside the resolver policy", f"{cs.get('policy_outside', 0):,} {verb} "
                                                        f"({cs.get('policy_' + ('refused' if policy.mode == 'enforce' else 'audit'), 0):,} reported)"))
        if args.tls:
            rows.append(("DoH/DoT from libssl", f"{cs.get('tls_messages', 0):,} messages, "
                                                f"{cs.get('tls_connections_dns', 0):,} connections"))
        rows += [("rule off", f"{rid}: {why}") for rid, why in off.items()]
        shed = cs.get("sampled_out", 0) + cs.get("shed_backlog", 0)
        if shed:
            rows.append(("shed under overload", f"{shed:,} (sampled out {cs.get('sampled_out', 0):,}, "
                                                f"backlog {cs.get('shed_backlog', 0):,})"))
        errs = {k: v for k, v in cs.items() if k in ("parse_errors", "truncated_copies") and v}
        print_summary("live capture summary", rows, stats, errs)
    code = errors.OK
    if args.fail_on_alert and stats.alerts:
        code = errors.ALERTS
    if res.interrupted:
        code = errors.INTERRUPTED
    return exit_code(outputs, code, write_summary(summary_file, summary))


def _policy(args: argparse.Namespace, rules):
    """The resolver policy for the kernel (--audit / --enforce), or None."""
    mode = getattr(args, "policy_mode", None)
    if mode is None:
        if args.policy_cgroup:
            raise errors.DetectorError("--policy-cgroup needs --audit or --enforce", errors.USAGE)
        return None
    from detector.capture.live import cgroup2_root
    from detector.detect.resolver_policy import PolicyError, build_policy

    try:
        return build_policy(rules, mode, resolvers=tuple(str(n) for n in getattr(args, "resolvers", None) or ()),
                            host_resolvers=args.host_resolvers, cgroups=args.policy_cgroup,
                            cgroup_root=cgroup2_root())
    except PolicyError as e:
        raise errors.DetectorError(str(e), errors.USAGE) from None
