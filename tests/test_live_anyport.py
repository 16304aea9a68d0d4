"""DNS on any port, recognized by content in the kernel (bpf/dns_skb.c), and the
"DNS on a non-standard port" rule (detector/detect/nonstandard_port.py).

Real resolvers (Debian's dnsmasq) answer on 127.0.0.1:5354 and :1053 while
`detector live --ports 53` runs; dig asks them over UDP and TCP. The alert must name dig's pid
and the port, once per process and port. Ordinary non-DNS UDP on random ports
(random bytes, NTP, STUN, SSDP, QUIC, WireGuard, syslog, TFTP, a DNS-like
header with a broken question) and TCP (HTTP, TLS, length-prefixed junk) is examined by the kernel and not taken for
DNS. The live tests need root (CI runs them as root); nothing is skipped there.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from detector.detect.nonstandard_port import NonStandardPort, expect_ports
from detector.detect.registry import load_rules
from detector.events import DnsEvent, ProcessInfo, Question
from detector.paths import REPO
from tests.test_live import start_live

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="live eBPF capture needs root")
RULE = "dns-nonstandard-port"


def dnsmasq(port: int) -> subprocess.Popen:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(exe):
        pytest.fail("dnsmasq is missing: ./setup.sh installs dnsmasq-base")
    return subprocess.Popen([exe, "-k", "--no-resolv", "--no-hosts", "--address=/#/1.2.3.4",
                             "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "-z",
                             "--user=root", "--pid-file="], stderr=subprocess.PIPE)


def dig(port: int, name: str, *opts: str) -> int:
    """dig's pid, after it got its answer."""
    p = subprocess.Popen(["dig", *opts, "+time=2", "+tries=1", "@127.0.0.1", "-p", str(port), name, "+short"],
                         stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=20)
    assert out.strip() == "1.2.3.4", out
    return p.pid


def records(out: str) -> tuple[list[dict], list[dict]]:
    docs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return [d for d in docs if "kind" in d], [d for d in docs if "rule_id" in d]


@needs_root
def test_dns_on_5354_and_1053_is_captured_and_alerted_with_digs_pid(tmp_path):
    ports = (5354, 1053)
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                pytest.fail(f"port {p} is busy on 127.0.0.1")
    servers = [dnsmasq(p) for p in ports]
    summary = tmp_path / "summary.json"
    try:
        time.sleep(0.5)
        for s in servers:
            assert s.poll() is None, s.stderr.read().decode()
        live = start_live(53, 6, "--summary-json", str(summary))
        pids = {p: dig(p, f"p{p}.anyport.example") for p in ports}
        again = dig(5354, "again.anyport.example")  # the same port, another name, another dig
        tcp = dig(1053, "tcp.anyport.example", "+tcp")  # one query and one answer, each one segment
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        for s in servers:
            s.terminate()
            s.wait(5)
    evs, alerts = records(out)
    for p in ports:
        mine = [e for e in evs if e.get("qname") == f"p{p}.anyport.example"]
        kinds = sorted(e["kind"] for e in mine)
        assert kinds == ["query", "response"], (p, mine)  # each message once, by content
        for e in mine:
            assert e["process"]["pid"] == pids[p], e
            assert p in (e["dport"], e["sport"]), e
        resp = [e for e in mine if e["kind"] == "response"][0]
        assert resp["answers"][0][3] == "1.2.3.4"
    mine = [e for e in evs if e.get("qname") == "tcp.anyport.example"]
    assert sorted((e["kind"], e["transport"]) for e in mine) == [("query", "tcp"), ("response", "tcp")], mine
    assert all(e["process"]["pid"] == tcp for e in mine), mine
    ours = [a for a in alerts if a["rule_id"] == RULE]
    by = {(a["pid"], a["features"]["port"]) for a in ours}
    assert {(pids[5354], 5354), (pids[1053], 1053), (again, 5354), (tcp, 1053)} <= by, ours
    for a in ours:
        assert a["technique"] == "T1571" and str(a["features"]["port"]) in a["reason"]
    # once per process and port (one alert; its closing revision keeps the id): a query
    # and its response are two events
    assert len({a["alert_id"] for a in ours if a["pid"] == pids[5354]}) == 1, ours
    s = json.loads(summary.read_text())
    assert s["content_dns"] >= 6 and s["content_examined"] >= s["content_dns"], s


NOT_DNS_CLIENT = r"""
import os, random, socket, struct, sys, json
rnd = random.Random(int(sys.argv[1]))
ports = [int(p) for p in sys.argv[2].split(",")]
payloads = [
    b"\x23" + bytes(47),                                              # NTP client request
    struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12),           # STUN binding request
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\r\n",
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x00" + os.urandom(1180),  # QUIC Initial
    b"\x01\x00\x00\x00" + os.urandom(144),                            # WireGuard handshake
    b"<13>Dec  2 06:00:00 host app: hello world",                    # syslog
    b"\x00\x01file.txt\x00octet\x00",                                  # TFTP read request
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x50bad",        # DNS header, broken question
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03abc\x00\x00\x01", # question cut short
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03abc\x00\x00\x01\x00\x09",  # class 9
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer first
    struct.pack("!HHHHHH", 7, 0x0100, 1, 40, 0, 0) + b"\x03abc\x00\x00\x01\x00\x01",  # 40 answers in 21 bytes
]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
for p in ports:
    for pl in payloads:
        s.sendto(pl, ("127.0.0.1", p)); n += 1
    for _ in range(300):
        s.sendto(os.urandom(rnd.randrange(12, 1400)), ("127.0.0.1", p)); n += 1
# TCP: pushed segments, some with a length prefix that covers them exactly
import time
t = socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=3)
t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
tcp = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01" + os.urandom(506)]
tcp += [struct.pack("!H", len(pl)) + pl for pl in payloads if len(pl) >= 17]
tcp += [struct.pack("!H", 98) + os.urandom(98) for _ in range(100)]
framed = 0
for pl in tcp:
    t.sendall(pl)
    framed += struct.unpack("!H", pl[:2])[0] + 2 == len(pl)
    time.sleep(0.002)
t.close()
print(json.dumps({"pid": os.getpid(), "sent": n, "framed": framed}), flush=True)
"""


@needs_root
def test_ordinary_udp_on_random_ports_is_examined_and_not_taken_for_dns(tmp_path):
    rng = random.Random(7)
    sinks, ports = [], []
    while len(ports) < 3:  # listeners, so nothing bounces as ICMP port unreachable
        p = rng.randrange(20000, 60000)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            continue
        sinks.append(s)
        ports.append(p)
    tcp_srv = socket.create_server(("127.0.0.1", 0))
    tcp_port = tcp_srv.getsockname()[1]
    got = []

    def drain():
        c, _ = tcp_srv.accept()
        while True:
            d = c.recv(65536)
            if not d:
                break
            got.append(d)
        c.close()

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    summary = tmp_path / "summary.json"
    try:
        live = start_live(53, 4, "--summary-json", str(summary))
        r = subprocess.run([sys.executable, "-c", NOT_DNS_CLIENT, "7", ",".join(map(str, ports)), str(tcp_port)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout)
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        for s in sinks:
            s.close()
        th.join(5)
        tcp_srv.close()
    assert got, "the TCP listener received nothing"
    evs, alerts = records(out)
    ports.append(tcp_port)
    mine = [e for e in evs if e.get("dport") in ports or e.get("sport") in ports]
    assert mine == [], mine[:3]
    assert not [a for a in alerts if a["rule_id"] == RULE and a.get("pid") == sent["pid"]]
    s = json.loads(summary.read_text())
    # every datagram and every length-framed segment crossed the content check (twice on
    # loopback: egress and ingress)
    assert sent["framed"] >= 100
    assert s["content_examined"] >= 2 * (sent["sent"] + sent["framed"]), (s["content_examined"], sent)


# --- the detector alone -------------------------------------------------------------

def _ev(sport: int, dport: int, pid: int = 4242, qr: bool = False) -> DnsEvent:
    src, dst = ("127.0.0.1", "127.0.0.9") if not qr else ("127.0.0.9", "127.0.0.1")
    return DnsEvent(ts=1.0, transport="udp", ip_version=4, src_ip=src, src_port=sport, dst_ip=dst,
                    dst_port=dport, id=1, flags=0x8180 if qr else 0x0100, rcode=0,
                    questions=[Question("x.example.net", 1)], kind="response" if qr else "query",
                    process=ProcessInfo(pid, pid, "dig", "/usr/bin/dig"))


def _detector(tmp_path, processes: str = "[]"):
    text = (REPO / "rules" / "nonstandard-port.yaml").read_text()
    assert "processes: []" in text
    (tmp_path / "r.yaml").write_text(text.replace("processes: []", f"processes: {processes}"))
    rs = load_rules([tmp_path / "r.yaml"])
    return rs, rs.rules[0]


def test_detector_raises_once_per_process_and_port_and_spares_the_expected(tmp_path):
    rs, rule = _detector(tmp_path)
    d = NonStandardPort(rule, rs)
    assert d.process(_ev(40000, 53)) == [] and d.process(_ev(5353, 5353)) == []
    assert d.process(_ev(40000, 5355)) == []
    f = d.process(_ev(40000, 8053))
    assert len(f) == 1 and f[0].features["port"] == 8053 and f[0].technique_id == "T1571"
    assert f[0].key == "port 8053" and "dig[4242]" in f[0].reason and "8053" in f[0].reason
    assert d.process(_ev(8053, 40000, qr=True)) == []  # its response: same process, same port
    assert len(d.process(_ev(40001, 8053, pid=4343))) == 1  # another process
    assert len(d.process(_ev(40000, 1053))) == 1  # another port


def test_ports_given_to_the_sensor_and_in_the_rule_are_expected(tmp_path):
    rs, rule = _detector(tmp_path)
    expect_ports(rs, {53, 8053})
    d = NonStandardPort(rule, rs)
    assert d.process(_ev(40000, 8053)) == []
    assert len(d.process(_ev(40000, 9053))) == 1
    rs, rule = _detector(tmp_path, "[dig]")
    assert NonStandardPort(rule, rs).process(_ev(40000, 9053)) == []  # allowlisted process
