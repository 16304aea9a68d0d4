"""DNS health: p99 latency and failure rate, from real resolvers and exact synthetic timings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from tests.conftest import REPO, json_lines, run_detector

SILENT = "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.95.0.2',5399))\nwhile True: s.recv(4096)"


def health_alerts(pcap, *extra, rules: str = "rules/health.yaml") -> list[dict]:
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", "--rules", rules, *extra)
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
    # the 30 lookups per resolver take ~31 s and the windows are aligned to the clock's
    # minutes: a run that crosses a minute splits them in two windows, each under the
    # shipped min_samples (20). Half the samples judge either half on its own.
    rule = tmp_path / "health.yaml"
    shipped = (REPO / "rules" / "health.yaml").read_text()
    assert "min_samples: 20" in shipped
    rule.write_text(shipped.replace("min_samples: 20", "min_samples: 10"))
    alerts = health_alerts(pcap, "--query-timeout", "1", rules=str(rule))
    flagged = {a["features"]["resolver"] for a in alerts}
    assert flagged == {"10.95.0.3"}, alerts
    sick = [a for a in alerts if a["features"]["scope"] == "resolver"][0]
    assert sick["severity"] == "critical" and sick["features"]["failure_rate"] > 0.05


MULTICAST_CAPTURES = ("zeek_traces/dns__mdns.pcap", "zeek_traces/dns__mdns-no-assoc.pcap",
                      "suricata_verify/llmnr__llmnr-udp__input.pcap",
                      "suricata_verify/llmnr__llmnr-hostname-match__input.pcap",
                      "suricata_verify/llmnr__llmnr-authority-additional__input.pcap",
                      "suricata_verify/llmnr__llmnr-invalid-opcode__input.pcap",
                      "suricata_verify/llmnr__llmnr-tcp__input.pcap")


def _multicast_with_a_failing_resolver(data, path, copies: int = 20) -> None:
    """Real mDNS (224.0.0.251, ff02::fb) and LLMNR (224.0.0.252, unicast 5355) captures,
    repeated every 6 s, mostly unanswered as multicast is; beside them a unicast resolver
    10.0.0.53 that times out on a quarter of its queries and a healthy one, 10.0.0.54."""
    from detector.capture.pcap import PcapReader

    real = []
    for name in MULTICAST_CAPTURES:
        reader = PcapReader(data / "pcap" / name)
        pkts = [(ts, d) for ts, lt, d in reader]
        assert reader.linktypes == [1] and pkts, name
        t0 = pkts[0][0]
        real.append([(ts - t0, d) for ts, d in pkts])
    frames, base, qid = [], 1_700_000_000.0, 0
    for i in range(copies):
        t = base + 6 * i
        for k, pkts in enumerate(real):
            frames.extend((t + k * 0.01 + dt, d) for dt, d in pkts)
        for srv in ("10.0.0.53", "10.0.0.54"):
            for j in range(4):
                qid += 1
                name = f"h{qid}.example.com"
                ts = t + 0.1 * j
                port = 30000 + qid % 30000
                frames.append((ts, eth_ip("10.0.0.5", srv, 17, udp(port, 53, dns_query(qid, name)))))
                if srv == "10.0.0.53" and j == 0:
                    continue  # a timeout
                resp = dns_response(qid, name, answers=[(1, b"\x01\x02\x03\x04")])
                frames.append((ts + 0.01, eth_ip(srv, "10.0.0.5", 17, udp(53, port, resp))))
    write_pcap(path, 1, sorted(frames, key=lambda f: f[0]))


def test_multicast_name_resolution_is_not_a_failing_resolver(data, tmp_path):
    pcap = tmp_path / "multicast.pcap"
    _multicast_with_a_failing_resolver(data, pcap)
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "--events", "-q",
                       "--rules", "rules/health.yaml")
    assert res.returncode == 0, res.stderr
    docs = json_lines(res.stdout)
    evs = [d for d in docs if "kind" in d]
    # the capture really holds unanswered multicast queries (what made "100% failure")
    groups = {d["dst"] for d in evs if d["kind"] == "unanswered"}
    assert {"224.0.0.251", "ff02::fb", "224.0.0.252"} <= groups, groups
    alerts = [d for d in docs if d.get("rule_id") == "dns-health"]
    assert {a["features"]["resolver"] for a in alerts} == {"10.0.0.53"}, [a["reason"] for a in alerts]
    sick = [a for a in alerts if a["features"]["scope"] == "resolver"]
    # one timeout in four queries; a window edge may move one timeout to the next window
    assert sick and all(a["severity"] == "critical" and 0.2 <= a["features"]["failure_rate"] <= 0.3
                        for a in sick), [a["features"]["failure_rate"] for a in sick]
