"""Unauthorized resolvers and resolver bypass, on real resolvers and real traffic.

Two real dnsmasq servers in a network namespace (one allowed, one rogue); dig
asks both, tcpdump records, `detector replay pcap` must flag only the rogue,
and only when a policy says which is allowed: replay never takes the
analyst's /etc/resolv.conf as the captured network's resolvers. A real TCP
connection to port 853 and a lookup of dns.google are bypasses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from detector.capture.pcapwrite import dns_query, eth_ip, udp, write_pcap
from tests.conftest import json_lines, run_detector

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LISTEN = "import socket,sys;s=socket.create_server(('0.0.0.0',int(sys.argv[1])));c,_=s.accept();c.close()"
OFF = "rule dns-unauthorized-resolver is off"


@pytest.fixture(scope="module")
def two_resolvers(tmp_path_factory):
    """A real capture: 10.97.0.1 asks dnsmasq on 10.97.0.2 and on 10.97.0.3, opens DoT to .3,
    looks up dns.google (answered 10.97.0.3) and opens HTTPS to that address."""
    from tests.netns import NetnsPair

    assert shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    pcap = tmp_path_factory.mktemp("resolvers") / "resolvers.pcap"
    with NetnsPair(prefix="rs", subnet="10.97.0") as net:
        srv = net.ns["server"]
        subprocess.run(["ip", "-n", srv, "addr", "add", "10.97.0.3/24", "dev", net.dev["server"]], check=True)
        for ip in ("10.97.0.2", "10.97.0.3"):
            net.popen("server", [dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/dns.google/10.97.0.3",
                                 "--address=/#/1.2.3.4",
                                 f"--listen-address={ip}", "--bind-interfaces", "-z", "--user=root",
                                 "--pid-file="])
        for port in ("853", "443"):
            net.popen("server", [sys.executable, "-c", LISTEN, port])
        time.sleep(0.8)
        with net.capture("client", pcap, "udp port 53 or tcp port 53 or tcp port 853 or tcp port 443"):
            for ip, name, want in (("10.97.0.2", "allowed.example.com", "1.2.3.4"),
                                   ("10.97.0.3", "rogue.example.com", "1.2.3.4"),
                                   ("10.97.0.2", "dns.google", "10.97.0.3")):
                r = net.run("client", ["dig", "+time=2", "+tries=1", f"@{ip}", name, "+short"])
                assert r.stdout.strip() == want, r.stdout + r.stderr
            for port in (853, 443):
                r = net.run("client", [sys.executable, "-c", "import socket,sys;socket.create_connection("
                                       f"('10.97.0.3',{port}),timeout=5).close()"])
                assert r.returncode == 0, r.stderr
    return pcap


def resolver_alerts(pcap, *extra) -> tuple[set, str]:
    """{(entity, resolver)} of unauthorized-resolver alerts, and stderr."""
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "--rules", "rules/resolvers.yaml",
                       *extra)
    assert res.returncode == 0, res.stderr
    alerts = [d for d in json_lines(res.stdout) if d.get("rule_id") == "dns-unauthorized-resolver"]
    return {(a["entity"], a["domain"]) for a in alerts}, res.stderr


@needs_root
def test_rogue_resolver_dot_and_doh_bootstrap_are_flagged(two_resolvers, tmp_path):
    pcap = two_resolvers
    allow = tmp_path / "site.yaml"
    allow.write_text("kind: allowlist\nresolvers:\n  - 10.97.0.2\n")
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", "rules/resolvers.yaml",
                       "--rules", "rules/resolver-bypass.yaml", "--rules", str(allow))
    assert res.returncode == 0, res.stderr
    alerts = [d for d in json_lines(res.stdout) if "rule_id" in d]
    rogue = {(a["entity"], a["domain"]) for a in alerts if a["rule_id"] == "dns-unauthorized-resolver"}
    assert rogue == {("10.97.0.1", "10.97.0.3")}
    bypass = {a["features"]["method"]: a for a in alerts if a["rule_id"] == "dns-resolver-bypass"}
    # the lookup of dns.google alone is no alert; HTTPS to the address it resolved to is
    assert set(bypass) == {"dot", "doh"}
    assert bypass["doh"]["features"]["doh_host"] == "dns.google" and bypass["doh"]["domain"] == "10.97.0.3"


@needs_root
def test_replay_without_policy_flags_nothing_and_says_once_the_rule_is_off(two_resolvers):
    # Neither 10.97.0.2 nor 10.97.0.3 is in this host's /etc/resolv.conf: taking it
    # as the capture's policy would flag both.
    summary = two_resolvers.parent / "summary.json"
    rogue, err = resolver_alerts(two_resolvers, "--summary-json", str(summary))
    assert rogue == set()
    assert err.count(OFF) == 1, err  # one line on stderr ...
    rows = [line.split(None, 2) for line in err.splitlines() if line.startswith("  rule off")]
    # ... and one summary row
    assert len(rows) == 1 and rows[0][2].startswith("dns-unauthorized-resolver: no resolver policy")
    assert list(json.loads(summary.read_text())["rules_off"]) == ["dns-unauthorized-resolver"]
    rogue, err = resolver_alerts(two_resolvers, "-q")
    assert rogue == set() and err.count(OFF) == 1 and "rule off" not in err, err  # -q: the line stays


@needs_root
def test_resolvers_option_allows_one_and_flags_the_other(two_resolvers):
    rogue, err = resolver_alerts(two_resolvers, "-q", "--resolvers", "10.97.0.2")
    assert rogue == {("10.97.0.1", "10.97.0.3")} and OFF not in err
    rogue, _ = resolver_alerts(two_resolvers, "-q", "--resolvers", "10.97.0.3,192.0.2.0/24")
    assert rogue == {("10.97.0.1", "10.97.0.2")}
    rogue, _ = resolver_alerts(two_resolvers, "-q", "--resolvers", "10.97.0.0/29")
    assert rogue == set()


def test_replay_never_allows_the_analysts_own_resolvers(tmp_path):
    """DNS to this host's own nameserver, in a capture from elsewhere, is judged by the
    capture's policy only: with --resolvers naming another server it is flagged."""
    from detector.detect.resolvers import host_resolvers

    mine = next((ip for ip in host_resolvers() if "." in ip and not ip.startswith("127.")), "10.255.255.53")
    frames = []
    for i, srv in enumerate([mine, "192.0.2.53"] * 5):
        query = udp(40000 + i, 53, dns_query(i, "example.com"))
        frames.append((1_700_000_000.0 + i, eth_ip("10.0.0.9", srv, 17, query)))
    pcap = tmp_path / "elsewhere.pcap"
    write_pcap(pcap, 1, frames)
    rogue, err = resolver_alerts(pcap, "-q")
    assert rogue == set() and OFF in err
    rogue, _ = resolver_alerts(pcap, "-q", "--resolvers", "192.0.2.53")
    assert rogue == {("10.0.0.9", mine)}
    # a rule asking for the host's configuration does not get it in replay either
    rule = tmp_path / "resolvers.yaml"
    rule.write_text(open("rules/resolvers.yaml").read().replace("resolvers: []", "resolvers: [192.0.2.53]"))
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", str(rule))
    assert {a["domain"] for a in json_lines(res.stdout) if "rule_id" in a} == {mine}


def test_live_policy_adds_this_hosts_resolvers(tmp_path, monkeypatch):
    """`detector live` watches this host: its resolv.conf is the policy (set_policy with
    host_config=True), unless the rule opts out; replay's policy (False) never reads it."""
    from detector.detect import resolvers as mod
    from detector.events import DnsEvent, Question
    from detector.detect.registry import load_rules

    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n")
    monkeypatch.setattr(mod, "RESOLV_CONFS", (str(conf),))

    def detector(host: bool, *rule_files):
        rules = load_rules(["rules/resolvers.yaml", *rule_files])
        mod.set_policy(rules, host_config=host)
        return mod.Resolvers(rules.rules[0], rules)

    def flagged(d, srv: str) -> bool:
        ev = DnsEvent(0.0, "udp", 4, "10.0.0.9", 40000, srv, 53, 1, 0x0100, 0, [Question("example.com", 1)])
        return bool(d.process(ev))

    live = detector(True)
    assert not live.off and not flagged(live, "192.0.2.1") and flagged(live, "192.0.2.2")
    replay = detector(False)
    assert replay.off and not flagged(replay, "192.0.2.2")
    optout = tmp_path / "no-host.yaml"
    text = open("rules/resolvers.yaml").read()
    optout.write_text(text.replace("use_host_config: true", "use_host_config: false")
                      .replace("resolvers: []", "resolvers: [10.0.0.53]"))
    rules = load_rules([str(optout)])
    mod.set_policy(rules, host_config=True)
    d = mod.Resolvers(rules.rules[0], rules)
    assert flagged(d, "192.0.2.1") and not flagged(d, "10.0.0.53")


def test_multicast_broadcast_and_allowlisted_resolvers_never_alert(tmp_path):
    frames = []
    ts = 1_700_000_000.0
    for i in range(50):
        for src, dst, sport, dport, name in (
                ("10.0.0.9", "224.0.0.251", 5353, 5353, f"host{i}.local"),  # mDNS
                ("10.0.0.9", "224.0.0.252", 40000 + i, 5355, f"wpad{i}"),  # LLMNR
                ("fe80::9", "ff02::1:3", 40000 + i, 5355, f"wpad{i}"),
                ("10.0.0.9", "255.255.255.255", 40000 + i, 53, "nas"),  # broadcast
                ("10.0.0.9", "239.255.0.1", 40000 + i, 53, "nas"),  # any multicast group
                ("10.0.0.9", "10.0.0.53", 40000 + i, 53, "example.com")):  # the allowed resolver
            frames.append((ts + i, eth_ip(src, dst, 17, udp(sport, dport, dns_query(0 if dport == 5353 else i, name)))))
    pcap = tmp_path / "mdns.pcap"
    write_pcap(pcap, 1, frames)
    allow = tmp_path / "site.yaml"
    allow.write_text("kind: allowlist\nresolvers: [10.0.0.0/24]\n")
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", "rules/resolvers.yaml",
                       "--rules", str(allow))
    assert res.returncode == 0, res.stderr
    assert [d for d in json_lines(res.stdout) if "rule_id" in d] == []


def test_real_mdns_and_llmnr_captures_never_alert(data):
    from tests.test_health import MULTICAST_CAPTURES

    # mDNS and LLMNR to their groups, and LLMNR over TCP to a peer's unicast address (port 5355)
    files = [str(data / "pcap" / name) for name in MULTICAST_CAPTURES]
    res = run_detector("replay", "pcap", *files, "--format", "jsonl", "-q", "--rules", "rules/resolvers.yaml",
                       "--resolvers", "192.0.2.53")
    assert res.returncode == 0, res.stderr
    assert [d for d in json_lines(res.stdout) if "rule_id" in d] == []


def test_doh_and_dot_read_from_tls_are_no_rogue_resolver_and_no_odd_port(tmp_path, monkeypatch):
    """A message `detector live --tls` read from OpenSSL (protocol doh/dot, port 443 or
    853, or no address at all when the application does its own I/O, as curl does) is
    judged by the bypass rule, not as DNS to an unapproved resolver on an odd port."""
    from detector.detect import resolvers as mod
    from detector.detect.nonstandard_port import NonStandardPort
    from detector.detect.registry import load_rules
    from detector.events import DnsEvent, Question

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    monkeypatch.setattr(mod, "RESOLV_CONFS", (str(conf),))
    rules = load_rules(["rules/resolvers.yaml", "rules/nonstandard-port.yaml"])
    mod.set_policy(rules, host_config=True)
    res = mod.Resolvers(rules.rules[0], rules)
    odd = NonStandardPort(next(r for r in rules.rules if r.detector == "nonstandard_port"), rules)
    for srv, port in (("203.0.113.5", 443), ("", 0), ("203.0.113.5", 853)):
        ev = DnsEvent(0.0, "tcp", 4, "10.0.0.9", 40000, srv, port, 1, 0x0100, 0, [Question("example.com", 1)])
        assert res.process(ev) and odd.process(ev)  # as plain DNS both would alert
        ev.protocol = "dot" if port == 853 else "doh"
        res2 = mod.Resolvers(rules.rules[0], rules)
        odd2 = NonStandardPort(next(r for r in rules.rules if r.detector == "nonstandard_port"), rules)
        assert res2.process(ev) == [] and odd2.process(ev) == [], (srv, port)
