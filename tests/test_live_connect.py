"""Answers tied to the connections that follow (detector/detect/flagged_connect.py,
bpf/dns_sock.c's flagged map), on the real kernel.

dnsmasq on 127.0.0.1 answers evil.test (denylisted by a rule in tmp_path) with
127.0.0.77 and good.test with 127.0.0.78; TCP listeners wait on both and on
127.0.0.79. A client resolves evil.test and connects at once (before user
space can have pushed the address: the kernel's recent_connects finds it), a
second process connects twice later (the kernel reports it from the flagged
map).
Both raise "connected to 127.0.0.77 resolved from evil.test" with their pids,
once each; the connects to .78 (a good name) and .79 (never resolved) raise
nothing. Root only (CI runs them as root).
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

from detector.detect.flagged_connect import FlaggedConnect
from detector.detect.registry import load_rules
from detector.events import Answer, ConnEvent, DnsEvent, Finding, ProcessInfo, Question
from detector.paths import REPO
from tests.test_live import free_port, start_live

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="live eBPF capture needs root")
RULE = "dns-flagged-connect"
EVIL_RULE = """id: test-denylist-evil
title: Query for a test denylisted domain
detector: denylist
severity: high
technique:
  id: T1071.004
  name: "Application Layer Protocol: DNS"
params:
  domains: [evil.test]
"""

CLIENT = r"""
import os, socket, struct, sys, time
dns_port, lport = int(sys.argv[1]), int(sys.argv[2])
def resolve(name):
    h = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q = h + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, ("127.0.0.1", dns_port))
    r = s.recvfrom(2048)[0]
    return socket.inet_ntoa(r[-4:])
def connect(ip):
    c = socket.create_connection((ip, lport), timeout=3); c.sendall(b"hello"); c.close()
for step in sys.argv[3:]:
    if step.startswith("sleep"):
        time.sleep(float(step[5:]))
    elif step[0].isdigit():
        connect(step)
    else:
        ip = resolve(step); connect(ip)        # resolve, then connect at once
        print("resolved", step, ip, file=sys.stderr)
print(os.getpid(), flush=True)
"""


def client(dns_port: int, lport: int, *steps: str) -> int:
    r = subprocess.run([sys.executable, "-c", CLIENT, str(dns_port), str(lport), *steps],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@needs_root
def test_connect_after_a_denylisted_answer_alerts_with_the_clients_pid(tmp_path):
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    assert os.path.exists(exe), "dnsmasq is missing: ./setup.sh installs dnsmasq-base"
    (tmp_path / "evil.yaml").write_text(EVIL_RULE)
    port, lport = free_port(), free_port()
    listeners = []
    for ip in ("127.0.0.77", "127.0.0.78", "127.0.0.79"):
        s = socket.create_server((ip, lport), backlog=16)
        listeners.append(s)
    dm = subprocess.Popen([exe, "-k", "--no-resolv", "--no-hosts", "--address=/evil.test/127.0.0.77",
                           "--address=/good.test/127.0.0.78", "--listen-address=127.0.0.1",
                           f"--port={port}", "--bind-interfaces", "-z", "--user=root", "--pid-file="],
                          stderr=subprocess.PIPE)
    summary = tmp_path / "summary.json"
    try:
        time.sleep(0.5)
        assert dm.poll() is None, dm.stderr.read().decode()
        live = start_live(port, 7, "--rules", str(REPO / "rules"), "--rules", str(tmp_path / "evil.yaml"),
                          "--summary-json", str(summary))
        first = client(port, lport, "evil.test")  # resolves and connects at once
        time.sleep(0.5)
        # never resolved it itself, the address is flagged: connects twice, one alert
        later = client(port, lport, "127.0.0.77", "sleep0.3", "127.0.0.77")
        clean = client(port, lport, "good.test", "127.0.0.79")
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        dm.terminate()
        dm.wait(5)
        for s in listeners:
            s.close()
    docs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    alerts = [d for d in docs if "rule_id" in d]
    assert any(a["rule_id"] == "test-denylist-evil" and a.get("pid") == first for a in alerts), alerts
    ours = [a for a in alerts if a["rule_id"] == RULE]
    by_pid: dict[int, set] = {}
    for a in ours:
        by_pid.setdefault(a["pid"], set()).add(a["alert_id"])
        assert a["severity"] == "high" and a["technique"] == "T1071"
        assert a["features"]["address"] == "127.0.0.77" and a["features"]["resolved_from"] == "evil.test"
        assert a["features"]["flagged_by"] == "test-denylist-evil" and a["features"]["port"] == lport
        assert "connected to 127.0.0.77" in a["reason"] and "resolved from evil.test" in a["reason"]
    assert set(by_pid) == {first, later}, (ours, err[-1500:])
    assert all(len(ids) == 1 for ids in by_pid.values()), ours  # once per process and address
    assert clean not in by_pid
    s = json.loads(summary.read_text())
    # the first client's connect came before the address was pushed (recent_connects), the
    # later client's two from the kernel's flagged map
    assert s["flagged_connects"] >= 3 and s["flagged_addresses"] == 1, s


# --- the detector alone -------------------------------------------------------------

def _response(name: str, ip: str, pid: int = 10) -> DnsEvent:
    return DnsEvent(ts=5.0, transport="udp", ip_version=4, src_ip="127.0.0.1", src_port=53,
                    dst_ip="127.0.0.1", dst_port=40000, id=1, flags=0x8180, rcode=0,
                    questions=[Question(name, 1)], answers=[Answer(name, 1, 60, ip)], kind="response",
                    process=ProcessInfo(pid, pid, "curl", "/usr/bin/curl"))


def _finding(category: str, domain: str, listed: str = "") -> Finding:
    return Finding(rule_id=f"r-{category}", title="t", score=1.0, severity="high", technique_id="T1568.002",
                   technique_name="x", entity="curl[10]", domain=domain,
                   features={"listed": listed} if listed else {}, reason="r", category=category)


def _conn(ip: str, pid: int = 10) -> ConnEvent:
    return ConnEvent(6.0, "tcp", 4, "", 0, ip, 443, ProcessInfo(pid, pid, "curl", "/usr/bin/curl"))


def test_detector_learns_flagged_answers_and_alerts_once_per_process_and_address():
    rs = load_rules([REPO / "rules" / "flagged-connect.yaml"])
    d = FlaggedConnect(rs.rules[0], rs)
    pushed = []
    d.on_watch = lambda ip, ts: pushed.append((ip, ts))
    d.process(_response("c2.bad.example", "192.0.2.9"))  # nothing flagged yet
    assert d.process_conn(_conn("192.0.2.9")) == [] and pushed == []
    d.observe_finding(_finding("denylist", "example", listed="bad.example"))
    d.observe_finding(_finding("resolvers", "good.example"))  # not a flagging category
    d.process(_response("c2.bad.example", "192.0.2.9"))
    d.process(_response("www.good.example", "192.0.2.10"))
    assert pushed == [("192.0.2.9", 5.0)]
    f = d.process_conn(_conn("192.0.2.9"))
    assert len(f) == 1 and f[0].severity == "high" and f[0].features["resolved_from"] == "c2.bad.example"
    assert f[0].event.process.pid == 10 and f[0].key == "address 192.0.2.9"
    assert d.process_conn(_conn("192.0.2.9")) == []  # once per process and address
    assert len(d.process_conn(_conn("192.0.2.9", pid=11))) == 1
    assert d.process_conn(_conn("192.0.2.10")) == []
    # a finding raised on a response (a DGA name that resolved) flags its answers at once
    g = _finding("dga", "kq3vx9.example")
    g.event = _response("kq3vx9.example", "198.51.100.4")
    d.observe_finding(g)
    assert ("198.51.100.4", 5.0) in pushed and len(d.process_conn(_conn("198.51.100.4"))) == 1


def test_the_pipeline_feeds_every_finding_to_the_flagged_connect_detector(tmp_path):
    """Not only in live capture: the pipeline itself hands each finding to the
    detectors that learn from findings, so replay and consume confirm too."""
    from detector.pipeline.run import Pipeline

    deny = tmp_path / "deny.yaml"
    deny.write_text("id: deny-test\ntitle: t\ndetector: denylist\nseverity: high\n"
                    "technique: {id: T1071.004, name: DNS}\nparams: {domains: [bad.example]}\n")
    rs = load_rules([REPO / "rules" / "flagged-connect.yaml", deny])

    class Out:
        def __init__(self):
            self.docs = []

        def write(self, doc, key=None):
            self.docs.append(doc)

        def flush(self):
            pass

        def close(self):
            pass

    out = Out()
    pipe = Pipeline(rs, [out], fmt="jsonl")
    q = _response("c2.bad.example", "192.0.2.9")
    q.flags, q.kind, q.answers, q.src_ip, q.dst_ip = 0x0100, "query", [], "127.0.0.1", "127.0.0.1"
    q.src_port, q.dst_port, q.ts = 40000, 53, 4.9
    pipe.process(q)
    pipe.process(_response("c2.bad.example", "192.0.2.9"))
    pipe.process_conn(_conn("192.0.2.9"))
    pipe.close()
    # one alert each (the flagged connect's revision at close carries the same id)
    assert sorted({(d["rule_id"], d["alert_id"]) for d in out.docs})[0][0] == "deny-test"
    assert len({d["alert_id"] for d in out.docs if d["rule_id"] == "dns-flagged-connect"}) == 1, out.docs
    assert out.docs[-1]["features"]["resolved_from"] == "c2.bad.example"
