"""DNS health: p99 latency and failure rate, from real resolvers and exact synthetic timings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from tests.conftest import json_lines, run_detector

SILENT = "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.95.0.2',5399))\nwhile True: s.recv(4096)"


def health_alerts(pcap, *extra) -> list[dict]:
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", "rules/health.yaml",
                       *extra)
    assert res.returncode == 0, res.stderr
    return [d for d in json_lines(res.stdout) if d.get("rule_id") == "dns-health"]


def _exchanges(path, latencies: list[float], rcode: int = 0) -> None:
    frames, ts = [], 1_700_000_000.0
    for i, lat in enumerate(latencies):
        ts += 0.2
        frames.append((ts, eth_ip("10.0.0.5", "10.0.0.53", 17, udp(20000 + i, 53, dns_query(i, f"n{i}.example.com")))))
        frames.append((ts + lat, eth_ip("10.0.0.53", "10.0.0.5", 17,
                                        udp(53, 20000 + i, dns_response(i, f"n{i}.example.com", rcode=rcode,
                                                                        answers=[(1, b"\x01\x02\x03\x04")])))))
    write_pcap(path, 1, sorted(frames))


def test_exact_p99_and_severity_from_synthetic_timings(tmp_path):
    slow = tmp_path / "slow.pcap"
    _exchanges(slow, [0.010] * 98 + [0.800] * 2)
    a = [d for d in health_alerts(slow) if d["features"]["scope"] == "resolver"]
    assert a and a[0]["features"]["p99_ms"] == 800.0 and a[0]["severity"] == "critical"
    assert a[0]["features"]["failure_rate"] == 0.0
    ok = tmp_path / "ok.pcap"
    _exchanges(ok, [0.010] * 100)
    assert health_alerts(ok) == []
    warn = tmp_path / "warn.pcap"
    _exchanges(warn, [0.010] * 97 + [0.200] * 3)
    w = [d for d in health_alerts(warn) if d["features"]["scope"] == "resolver"]
    assert w and w[0]["severity"] == "medium" and w[0]["features"]["p99_ms"] == 200.0


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_failing_resolver_is_flagged_and_the_healthy_one_is_not(tmp_path):
    from tests.netns import NetnsPair

    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    pcap = tmp_path / "health.pcap"
    with NetnsPair(prefix="hl", subnet="10.95.0") as net:
        subprocess.run(["ip", "-n", net.ns["server"], "addr", "add", "10.95.0.3/24", "dev", net.dev["server"]],
                       check=True)
        net.popen("server", [sys.executable, "-c", SILENT])  # an upstream that never answers
        common = ["-k", "--no-hosts", "--bind-interfaces", "-z", "--user=root", "--pid-file=", "--cache-size=0"]
        net.popen("server", [dnsmasq, *common, "--address=/#/1.2.3.4", "--listen-address=10.95.0.2"])
        net.popen("server", [dnsmasq, *common, "--no-resolv", "--server=10.95.0.2#5399",
                             "--listen-address=10.95.0.3"])
        time.sleep(0.8)
        with net.capture("client", pcap):
            script = ("import subprocess\nfor i in range(30):\n"
                      " subprocess.run(['dig','+time=1','+tries=1','@10.95.0.2',f'ok{i}.example.com'],capture_output=True)\n"
                      " subprocess.run(['dig','+time=1','+tries=1','@10.95.0.3',f'sick{i}.example.com'],capture_output=True)\n")
            r = net.run("client", [sys.executable, "-c", script], timeout=180)
            assert r.returncode == 0, r.stderr
    alerts = health_alerts(pcap, "--query-timeout", "1")
    flagged = {a["features"]["resolver"] for a in alerts}
    assert flagged == {"10.95.0.3"}, alerts
    sick = [a for a in alerts if a["features"]["scope"] == "resolver"][0]
    assert sick["severity"] == "critical" and sick["features"]["failure_rate"] > 0.05
