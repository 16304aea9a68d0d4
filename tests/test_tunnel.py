"""Tunnel and exfiltration detection on real tools, real captures and benign data.

Real tools: Debian's iodine/iodined and dns2tcpc/dns2tcpd run in two network
namespaces; tcpdump records the veth; `detector replay pcap` must raise the
tunnel alert within 5 s (capture time) of the tool's first query, as for the
shared iodine and dns2tcp captures and a dnstt-style Noise tunnel built here.
Shared tunnel captures must alert; benign captures and benign name lists must
raise none. Small exfiltration has its own tests (tests/test_exfil.py).
"""

from __future__ import annotations

import contextlib

import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.events import Answer, DnsEvent, Question
from detector.pipeline.run import Pipeline
from detector.detect.registry import load_rules
from detector.paths import REPO
from tests.conftest import json_lines, run_detector

TUNNEL_RULES = ("dns-tunnel", "dns-exfiltration")
ROOT = os.geteuid() == 0


class _Keep:
    name = "keep"

    def __init__(self) -> None:
        self.docs: list[dict] = []

    def write(self, doc, key=None) -> None:
        self.docs.append(doc)

    def close(self) -> None:
        pass


def tunnel_rules():
    return load_rules([REPO / "rules" / "tunnel.yaml", REPO / "rules" / "exfil.yaml",
                       REPO / "rules" / "allowlist.yaml"])


def replay(path: Path, rules) -> list[dict]:
    sink = _Keep()
    pipe = Pipeline(rules, [sink], fmt="jsonl")
    dec = PacketDecoder()
    for ts, lt, fr in PcapReader(str(path)):
        for ev in dec.frame(ts, lt, fr):
            pipe.process(ev)
    for ev in dec.flush():
        pipe.process(ev)
    pipe.close()
    return sink.docs


# --- shared captures ---------------------------------------------------------------

def test_every_shared_tunnel_capture_alerts(data):
    rules = tunnel_rules()
    caps = sorted(p for p in list((data / "tunnel").glob("*.pcap")) + list((data / "tunnel" / "ndpi").glob("*.pcap*"))
                  if p.name != "dns_long_domainname.pcap")  # one ordinary 43-character query
    assert len(caps) >= 5
    missed = [p.name for p in caps if not any(d["rule_id"] in TUNNEL_RULES for d in replay(p, rules))]
    assert not missed, f"no tunnel alert for {missed}"


def test_benign_captures_raise_no_tunnel_alert(data):
    rules = tunnel_rules()
    real_tunnel = "dns__bug-1158__input.pcap"  # suricata-verify: a real dns2tcp session
    caps = sorted(p for pat in ("pcap/*/*.pcap", "pcap/*/*.pcapng") for p in data.glob(pat))
    assert len(caps) > 100
    false = {}
    for p in caps:
        docs = [d for d in replay(p, rules) if d["rule_id"] in TUNNEL_RULES]
        if p.name == real_tunnel:
            assert docs, "the dns2tcp session in suricata-verify must alert"
        elif docs:
            false[p.name] = [(d["entity"], d["domain"]) for d in docs]
    assert not false, false


def _events(names_by_client: dict[str, list[str]], qtype: int = 1, gap: float = 0.05):
    ts = 1_700_000_000.0
    for client, names in names_by_client.items():
        for i, n in enumerate(names):
            ts += gap
            yield DnsEvent(ts, "udp", 4, client, 30000 + i % 1000, "10.0.0.53", 53, i & 0xFFFF, 0x0100, 0,
                           [Question(n, qtype, 1)], size=12 + len(n) + 6)


def _run(events) -> list[dict]:
    sink = _Keep()
    pipe = Pipeline(tunnel_rules(), [sink], fmt="jsonl")
    for ev in events:
        pipe.process(ev)
    pipe.close()
    return [d for d in sink.docs if d["rule_id"] in TUNNEL_RULES]


def test_benign_lists_and_odd_but_ordinary_names_raise_nothing(data):
    top = []
    with open(data / "benign" / "alexa_top100k_2015.csv") as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 2:
                top.append(parts[1])
    top += [x.strip() for x in (data / "benign" / "opendns-top-domains.txt").read_text().split() if x.strip()]
    rnd = random.Random(3)
    rnd.shuffle(top)
    clients = {f"10.1.0.{i}": top[i::8] for i in range(8)}  # 8 busy clients browsing
    assert _run(_events(clients, gap=0.001)) == []
    # DNSBL and anti-virus lookups (addresses and hashes in labels), 32-hex device ids
    dnsbl = {"10.2.0.1": [f"{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
                          f".zen.spamhaus.org" for _ in range(500)]}
    sophos = {"10.2.0.2": [f"{rnd.getrandbits(128):032x}.{rnd.getrandbits(64):016x}.sophosxl.net"
                           for _ in range(500)]}
    devices = {f"10.3.{i // 250}.{i % 250}": [f"{rnd.getrandbits(128):032x}.devices.example-iot.com"] * 5
               for i in range(400)}
    assert _run(_events({**dnsbl, **sophos, **devices})) == []


def test_unknown_tool_caught_without_fingerprints():
    """A made-up tool: base32 chunks in A queries under an unremarkable domain."""
    import base64

    rnd = random.Random(5)
    names = []
    for i in range(200):
        chunk = base64.b32encode(rnd.randbytes(30)).decode().rstrip("=").lower()
        names.append(f"{chunk}.{i:x}.cdn-sync.net")
    docs = _run(_events({"10.9.9.9": names}, gap=0.2))
    tun = [d for d in docs if d["rule_id"] == "dns-tunnel"]
    assert tun and tun[0]["entity"] == "10.9.9.9" and tun[0]["domain"] == "cdn-sync.net"
    assert any("encoded names" in s for s in tun[0]["features"]["indicators"])


def test_a_water_torture_flood_is_no_tunnel_but_the_same_names_answered_are():
    """Random encoded labels answered NXDOMAIN bring nothing back: a random-subdomain
    flood (the flood rule's), not an interactive tunnel. The same names answered
    with TXT data are one."""
    import base64

    rnd = random.Random(8)
    names = [f"{base64.b32encode(rnd.randbytes(20)).decode().rstrip('=').lower()}.victim-site.com"
             for _ in range(150)]

    def exchange(rcode):
        ts = 1000.0
        for i, n in enumerate(names):
            ts += 0.05
            yield DnsEvent(ts, "udp", 4, "10.7.0.1", 40000 + i, "10.0.0.53", 53, i, 0x0100, 0,
                           [Question(n, 16, 1)], size=40 + len(n))
            ans = [] if rcode else [Answer(n, 16, 60, "x" * 120, 121)]
            yield DnsEvent(ts + 0.01, "udp", 4, "10.0.0.53", 53, "10.7.0.1", 40000 + i, i, 0x8180 | rcode,
                           rcode, [Question(n, 16, 1)], ans, ancount=len(ans), size=200)

    flood = [d for d in _run(exchange(3)) if d["rule_id"] == "dns-tunnel"]
    assert flood == []
    answered = [d for d in _run(exchange(0)) if d["rule_id"] == "dns-tunnel"]
    assert answered and answered[0]["domain"] == "victim-site.com"


def test_state_is_bounded_under_a_random_subdomain_flood():
    from detector.detect.tunnel import Tunnel

    rules = tunnel_rules()
    rule = rules.by_id("dns-tunnel")
    rule.thresholds["max_keys"] = 5000
    det = Tunnel(rule, rules)
    rnd = random.Random(9)
    ts = 1.0
    for i in range(200_000):
        ts += 0.0001
        name = f"{rnd.getrandbits(60):x}.flood.example" if i % 2 else f"x{i}.d{i}.example"
        ev = DnsEvent(ts, "udp", 4, f"10.{i % 7}.0.1", 1000, "10.0.0.53", 53, 1, 0x0100, 0, [Question(name, 1, 1)])
        from detector.dns.names import split_domain
        ev.subdomain, ev.registered_domain, ev.suffix = split_domain(name)
        det.process(ev)
    # the 100,000 one-name domains never open a window: their first names are
    # remembered in a table as bounded as the windows; the encoded flood has its windows
    assert len(det.state) <= 5000 and len(det.early) == 5000
    assert ("10.1.0.1", "flood.example") in det.state
    per_key = max(len(s.cur.uniq) for s in det.state.values())
    assert per_key <= det.max_unique


def test_the_unique_budget_holds_over_all_keys_and_a_tunnel_past_it_is_still_seen():
    """Random-subdomain floods from 400 (client, domain) keys want far more unique names
    remembered than ``max_unique_total``: past each half-window's first UNIQ_FLOOR the
    remembered uniques over all keys stay within it, released again as halves end and
    keys go (evicted, idle). With the budget full, a tunnel that needs more uniques than
    the floor is still seen (its uniques counted as estimated, and said so), and a
    device repeating its 5 hex names stays exact: no finding (counted as new, its 150
    queries would look like a tunnel)."""
    import base64

    from detector.detect.tunnel import UNIQ_FLOOR, Tunnel
    from detector.dns.names import split_domain

    budget = 3000
    rules = tunnel_rules()
    rule = rules.by_id("dns-tunnel")
    rule.thresholds.update(max_unique_total=budget, max_keys=300, min_unique=40)
    det = Tunnel(rule, rules)
    rnd = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

    def ev(ts, client, name, qtype=1):
        e = DnsEvent(ts, "udp", 4, client, 1000, "10.0.0.53", 53, 1, 0x0100, 0, [Question(name, qtype, 1)])
        e.subdomain, e.registered_domain, e.suffix = split_domain(name)
        return e

    def check():
        held = sum(max(0, len(s.cur.uniq) - UNIQ_FLOOR) for s in det.state.values())
        assert det.uniq_held == held <= budget
        assert all(len(s.cur.uniq) <= det.max_unique for s in det.state.values())
        assert not any(s.prev is not None and s.prev.uniq for s in det.state.values())

    tunnel = [f"{base64.b32encode(rnd.randbytes(30)).decode().rstrip('=').lower()}.{i:x}.cdn-sync.net"
              for i in range(60)]
    device = [f"{rnd.getrandbits(128):032x}.devices.example-iot.com" for _ in range(5)] * 30
    found, peak = [], 0
    ts = 1000.0
    for i in range(70_000):  # 140 s: clients 10.1.x (0-40 s), then 10.2.x (40-140 s)
        ts += 0.002
        net = 1 if ts < 1040 else 2
        label = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(8, 16)))
        det.process(ev(ts, f"10.{net}.{i % 200 // 100}.{i % 100}", f"{label}.victim{i % 200}.example.com"))
        if 1060 <= ts < 1090 and i % 20 == 0:  # one tunnel name and one device name every 40 ms
            if tunnel:
                if not found and len(tunnel) == 60:
                    assert det.uniq_held == budget  # the flood holds the whole budget
                found += det.process(ev(ts, "10.9.9.9", tunnel.pop(0)))
            if device:
                found += det.process(ev(ts + 0.001, "10.8.8.8", device.pop(0)))
        if i % 1000 == 0:
            det.tick(ts)
            check()
            peak = max(peak, det.uniq_held)
    assert peak == budget and det.evicted >= 100  # the budget was reached; keys 10.1.x were evicted
    tun = [f for f in found if f.domain == "cdn-sync.net"]
    assert tun and tun[0].entity == "10.9.9.9"
    assert tun[0].features["unique_estimated"] and tun[0].features["unique_subdomains"] >= 40
    assert "~" in tun[0].reason
    assert not [f for f in found if f.domain == "example-iot.com"]
    dev = det.state[("10.8.8.8", "example-iot.com")]
    assert dev.cur.nuniq + (dev.prev.nuniq if dev.prev else 0) <= 10 and not dev.cur.extra_uniq
    det.tick(ts + 300)  # every key idle: all state goes, and the budget is free again
    assert not det.state and det.uniq_held == 0


def test_max_unique_total_must_be_a_whole_number(tmp_path):
    from detector.ruleset import RuleError

    for value, ok in (("100000", True), ("0", True), ("1.5", False), ("-1", False), ("lots", False)):
        for det in ("tunnel", "exfil"):
            f = tmp_path / f"{det}.yaml"
            f.write_text(f"id: x-{det}\ntitle: x\ndetector: {det}\nseverity: high\n"
                         "technique: {id: T1572, name: x}\n"
                         f"thresholds:\n  max_unique_total: {value}\n")
            if ok:
                load_rules([f])
            else:
                with pytest.raises(RuleError, match="max_unique_total"):
                    load_rules([f])


# --- real tools in network namespaces ------------------------------------------------

needs_root = pytest.mark.skipif(not ROOT, reason="network namespaces need root")


def _alerts_after(pcap: Path) -> list[dict]:
    """`detector replay pcap` with the tunnel and exfiltration rules: their alerts."""
    rules = [a for f in ("tunnel.yaml", "exfil.yaml", "allowlist.yaml")
             for a in ("--rules", str(REPO / "rules" / f))]
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q", *rules)
    assert res.returncode == 0, res.stderr
    return [d for d in json_lines(res.stdout) if d.get("rule_id") in TUNNEL_RULES]


def _first_query_ts(pcap: Path, client: str) -> float:
    """Capture time of the first query ``client`` sent."""
    dec = PacketDecoder()
    for ts, lt, fr in PcapReader(str(pcap)):
        for ev in dec.frame(ts, lt, fr):
            if ev.src_ip == client and not ev.qr and ev.questions:
                return ev.ts
    raise AssertionError(f"no query from {client}")


SINK = ("import socket,sys;s=socket.create_server((sys.argv[1],int(sys.argv[2])));c,_=s.accept();n=0\n"
        "while True:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\nprint(n)")
SEND = ("import socket,os,sys,time;c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=30)\n"
        "for _ in range(10):\n c.sendall(os.urandom(3000)); time.sleep(0.3)\nc.close()")


def _assert_tunnel_alert_within_5s(pcap: Path, tool: str, client: str, domain: str) -> float:
    """Replaying a tool's session raises the tunnel alert for its client and domain
    within 5 s (capture time) of the client's first query; return that delay."""
    first = _first_query_ts(pcap, client)
    tun = [a for a in _alerts_after(pcap) if a["rule_id"] == "dns-tunnel"]
    assert tun, f"no tunnel alert for a {tool} session"
    assert tun[0]["entity"] == client and tun[0]["domain"] in (domain, "(no public suffix)")
    delay = tun[0]["ts"] - first
    assert delay <= 5, f"{tool}: first tunnel alert {delay:.1f} s after the first query"
    return delay


def test_shared_iodine_and_dns2tcp_captures_alert_within_5s(data):
    _assert_tunnel_alert_within_5s(data / "tunnel" / "iodine_elastic_examples.pcap", "iodine",
                                   "10.0.2.30", "pirate.sea")
    _assert_tunnel_alert_within_5s(data / "tunnel" / "dns2tcp_netrack_2018-03-23.pcap", "dns2tcp",
                                   "172.17.0.3", "hidemyself.org")


def test_dnstt_style_noise_tunnel_alerts_within_5s(tmp_path, data):
    """A dnstt-style session (base32 labels of Noise-encrypted data, TXT queries, one
    every ~0.2 s: a short burst of data, then polls) among ordinary lookups."""
    from tests.dns_sessions import T0, Capture, benign_names, dnstt

    rnd = random.Random(4)
    cap = Capture()
    for i, name in enumerate(benign_names(data, 150, seed=4)):
        cap.query(T0 - 5 + i * 0.2, f"10.30.0.{10 + i % 4}", name)
    for off, name, txt in dnstt("t.vpn-relay.net", 30, rnd):
        cap.query(T0 + off, "10.30.0.5", name, 16, txt=txt)
    pcap = cap.write(tmp_path / "dnstt.pcap")
    _assert_tunnel_alert_within_5s(pcap, "dnstt", "10.30.0.5", "vpn-relay.net")
    assert {a["entity"] for a in _alerts_after(pcap)} == {"10.30.0.5"}


def iodine_session(net, tun_ip: str, capture: Path | None = None) -> int:
    """Run iodined on the server side and iodine on the client side of ``net``
    (a tests.netns.NetnsPair), push 30 kB through the tunnel to ``tun_ip``
    (the server's tunnel address) and check it arrived; return iodine's pid.
    With ``capture``, tcpdump records the client side's DNS meanwhile."""
    net.popen("server", ["iodined", "-f", "-c", "-P", "testpass", "-l", net.ip["server"], tun_ip, "t.test"])
    time.sleep(1)
    with net.capture("client", capture) if capture else contextlib.nullcontext():
        cli = net.popen("client", ["iodine", "-f", "-m", "1000", "-P", "testpass", "-r",
                                   net.ip["server"], "t.test"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
        t = time.monotonic()
        line = ""
        while time.monotonic() - t < 30 and "Connection setup complete" not in line:
            line = cli.stdout.readline()
        assert "Connection setup complete" in line
        sink = net.popen("server", [sys.executable, "-c", SINK, tun_ip, "9000"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        r = net.run("client", [sys.executable, "-c", SEND, tun_ip, "9000"])
        assert r.returncode == 0, r.stderr
        assert sink.wait(30) == 0 and int(sink.stdout.read()) == 30000  # data went through
        time.sleep(1)
    return cli.pid


@needs_root
def test_real_iodine_session_raises_the_tunnel_alert(tmp_path):
    from tests.netns import NetnsPair

    for tool in ("iodine", "iodined", "tcpdump"):
        assert shutil.which(tool), f"{tool} missing: ./setup.sh installs it"
    pcap = tmp_path / "iodine.pcap"
    with NetnsPair(prefix="io") as net:
        iodine_session(net, "192.168.99.1", capture=pcap)
    _assert_tunnel_alert_within_5s(pcap, "iodine", "10.99.0.1", "t.test")


@needs_root
def test_real_dns2tcp_session_raises_the_tunnel_alert(tmp_path):
    from tests.netns import NetnsPair

    for tool in ("dns2tcpc", "dns2tcpd", "tcpdump"):
        assert shutil.which(tool), f"{tool} missing: ./setup.sh installs it"
    pcap = tmp_path / "dns2tcp.pcap"
    conf = tmp_path / "dns2tcpd.conf"
    with NetnsPair(prefix="d2", subnet="10.98.0") as net:
        conf.write_text(f"listen = {net.ip['server']}\nport = 53\nuser = root\nchroot = /tmp\n"
                        "domain = d2.test\nresources = sink:127.0.0.1:9000\n")
        net.popen("server", [sys.executable, "-c", SINK, "127.0.0.1", "9000"])
        net.popen("server", ["dns2tcpd", "-F", "-f", str(conf)])
        time.sleep(1)
        with net.capture("client", pcap):
            net.popen("client", ["dns2tcpc", "-z", "d2.test", "-r", "sink", "-l", "9100",
                                 net.ip["server"]])
            time.sleep(1.5)
            r = net.run("client", [sys.executable, "-c", SEND, "127.0.0.1", "9100"])
            assert r.returncode == 0, r.stderr
            time.sleep(2)
    _assert_tunnel_alert_within_5s(pcap, "dns2tcp", "10.98.0.1", "d2.test")


def test_a_tunnel_behind_a_malformed_trailer_still_alerts(data, tmp_path):
    """Best-effort decoding keeps what precedes the damage, and detectors see the
    message: garbage appended to every query of a real dns2tcp session (an extra
    additional record whose name points out of the message) must not hide it."""
    import dpkt

    src = data / "tunnel" / "dns2tcp_netrack_2018-03-23.pcap"
    bad = tmp_path / "dns2tcp-trailer.pcap"
    damaged = 0
    with open(src, "rb") as f, open(bad, "wb") as g:
        r = dpkt.pcap.Reader(f)
        w = dpkt.pcap.Writer(g, linktype=r.datalink())
        for ts, buf in r:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            udp = getattr(ip, "data", None)
            if isinstance(udp, dpkt.udp.UDP) and udp.dport == 53 and len(udp.data) >= 12:
                p = bytearray(udp.data)
                p[10:12] = (int.from_bytes(p[10:12], "big") + 1).to_bytes(2, "big")  # arcount + 1
                udp.data = bytes(p) + b"\xff\xff\x00\x01"  # a pointer past the end, then junk
                udp.ulen = 8 + len(udp.data)
                udp.sum = 0
                ip.len = ip.__hdr_len__ + len(ip.opts) + udp.ulen
                ip.sum = 0
                damaged += 1
            w.writepkt(bytes(eth), ts)
    assert damaged > 1000
    from detector.capture.layers import PacketDecoder
    from detector.capture.pcap import PcapReader

    dec = PacketDecoder()
    evs = [e for ts, lt, fr in PcapReader(str(bad)) for e in dec.frame(ts, lt, fr)]
    queries = [e for e in evs if not e.qr]
    assert queries and all(e.malformed for e in queries) and all(e.questions for e in queries)
    _assert_tunnel_alert_within_5s(bad, "dns2tcp", "172.17.0.3", "hidemyself.org")
