"""Unauthorized resolvers and resolver bypass, on real resolvers and real traffic.

Two real dnsmasq servers in a network namespace (one allowed, one rogue); dig
asks both, tcpdump records, `detector replay pcap` must flag only the rogue.
A real TCP connection to port 853 and a lookup of dns.google are bypasses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from detector.capture.pcapwrite import dns_query, eth_ip, udp, write_pcap
from tests.conftest import json_lines, run_detector

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LISTEN_853 = "import socket;s=socket.create_server(('0.0.0.0',853));c,_=s.accept();c.close()"


def test_rogue_resolver_dot_and_doh_bootstrap_are_flagged(tmp_path):
    from tests.netns import NetnsPair

    assert shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    pcap = tmp_path / "resolvers.pcap"
    with NetnsPair(prefix="rs", subnet="10.97.0") as net:
        srv = net.ns["server"]
        subprocess.run(["ip", "-n", srv, "addr", "add", "10.97.0.3/24", "dev", net.dev["server"]], check=True)
        for ip in ("10.97.0.2", "10.97.0.3"):
            net.popen("server", [dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                                 f"--listen-address={ip}", "--bind-interfaces", "-z", "--user=root",
                                 "--pid-file="])
        net.popen("server", [sys.executable, "-c", LISTEN_853])
        time.sleep(0.8)
        with net.capture("client", pcap, "udp port 53 or tcp port 53 or tcp port 853"):
            for ip, name in (("10.97.0.2", "allowed.example.com"), ("10.97.0.3", "rogue.example.com"),
                             ("10.97.0.2", "dns.google")):
                r = net.run("client", ["dig", "+time=2", "+tries=1", f"@{ip}", name, "+short"])
                assert r.stdout.strip() == "1.2.3.4", r.stdout + r.stderr
            r = net.run("client", [sys.executable, "-c",
                                   "import socket;socket.create_connection(('10.97.0.3',853),timeout=5).close()"])
            assert r.returncode == 0, r.stderr
    allow = tmp_path / "site.yaml"
    allow.write_text("kind: allowlist\nresolvers:\n  - 10.97.0.2\n")
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", "rules/resolvers.yaml",
                       "--rules", "rules/resolver-bypass.yaml", "--rules", str(allow))
    assert res.returncode == 0, res.stderr
    alerts = [d for d in json_lines(res.stdout) if "rule_id" in d]
    rogue = {(a["entity"], a["domain"]) for a in alerts if a["rule_id"] == "dns-unauthorized-resolver"}
    assert rogue == {("10.97.0.1", "10.97.0.3")}
    bypass = {a["features"]["method"] for a in alerts if a["rule_id"] == "dns-resolver-bypass"}
    assert bypass == {"dot", "doh-bootstrap"}


def test_multicast_dns_and_allowlisted_resolvers_never_alert(tmp_path):
    frames = []
    ts = 1_700_000_000.0
    for i in range(50):
        frames.append((ts + i, eth_ip("10.0.0.9", "224.0.0.251", 17, udp(5353, 5353, dns_query(0, f"host{i}.local")))))
        frames.append((ts + i, eth_ip("10.0.0.9", "10.0.0.53", 17, udp(40000 + i, 53, dns_query(i, "example.com")))))
    pcap = tmp_path / "mdns.pcap"
    write_pcap(pcap, 1, frames)
    allow = tmp_path / "site.yaml"
    allow.write_text("kind: allowlist\nresolvers: [10.0.0.0/24]\n")
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", "rules/resolvers.yaml",
                       "--rules", str(allow))
    assert res.returncode == 0, res.stderr
    assert [d for d in json_lines(res.stdout) if "rule_id" in d] == []
