"""Live capture under load, on the real kernel (root): what the kernel drops, how load is
shed and that shedding is counted and reported, never silent.

One LiveCapture (bpf/ loaded and attached) serves the module; a tiny UDP
responder on 127.0.0.1 answers every query. In CI (root) nothing here is
skipped. No timing is asserted: bench/live.py measures speed.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

import pytest

import detector.capture.live as live
from detector.capture.live import LiveCapture
from detector.events import DnsEvent
from detector.paths import REPO
from detector.pipeline.run import Pipeline
from detector.detect.registry import load_rules


def query(name: str, qid: int) -> bytes:
    h = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return h + b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0\0\1\0\1"


class Responder:
    """Answers every DNS query on 127.0.0.1:port with the query, QR set."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while True:
            try:
                d, a = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(d) >= 12:
                self.sock.sendto(d[:2] + bytes([d[2] | 0x80]) + d[3:], a)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def rig():
    srv = Responder()
    cap = LiveCapture(ports={srv.port})
    cap.start()
    yield cap, srv
    cap.close()
    srv.close()


def exchange(port: int, names: list[str]) -> None:
    """Each name asked from its own socket (own source port), answer awaited."""
    for i, name in enumerate(names):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(query(name, 1000 + i), ("127.0.0.1", port))
            s.recvfrom(4096)


def collect(cap: LiveCapture, want, timeout: float = 5.0) -> list:
    """poll() until `want(events)` holds or timeout."""
    evs: list = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        evs += cap.poll(0.02)
        if want(evs):
            break
    evs += cap.poll(0.05)
    return evs


def mine(evs, suffix):
    return [e for e in evs if isinstance(e, DnsEvent) and e.qname.endswith(suffix)]


def test_a_payload_without_a_dns_header_is_dropped_in_the_kernel_and_counted(rig):
    cap, srv = rig
    before = cap.counters()[live.C_SHORT]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"abc", ("127.0.0.1", srv.port))  # 3 bytes: no DNS header
        s.sendto(b"\0" * 11, ("127.0.0.1", srv.port))  # 11 bytes: still none
    exchange(srv.port, ["short.example.com"])
    evs = collect(cap, lambda e: len(mine(e, "short.example.com")) == 2)
    assert [e.qr for e in mine(evs, "short.example.com")] == [False, True]
    assert cap.counters()[live.C_SHORT] - before == 2
    cap.poll(0)
    assert cap.stats["short_payloads"] >= 2


def test_shedding_keeps_or_drops_a_query_and_its_response_together(rig):
    cap, srv = rig
    cap.poll(0)
    s0 = cap.counters()[live.C_SAMPLED]
    n = 300
    cap._set_shed(512)  # drop about half of the exchanges
    try:
        exchange(srv.port, [f"s{i}.shed.example.com" for i in range(n)])
        time.sleep(0.1)
        evs = mine(collect(cap, lambda e: False, timeout=0.5), "shed.example.com")
    finally:
        cap._set_shed(0)
    sampled = cap.counters()[live.C_SAMPLED] - s0
    queries = {(e.qname, e.src_port) for e in evs if not e.qr}
    answers = {(e.qname, e.dst_port) for e in evs if e.qr}
    assert queries == answers  # every kept query has its response, and no orphan response
    assert 0 < len(queries) < n  # something was shed, something kept
    assert sampled == 2 * (n - len(queries))  # every shed packet was counted
    # with the level back at 0 nothing is shed
    exchange(srv.port, [f"a{i}.after.example.com" for i in range(20)])
    after = mine(collect(cap, lambda e: len(mine(e, "after.example.com")) == 40), "after.example.com")
    assert len(after) == 40
    assert cap.counters()[live.C_SAMPLED] - s0 == sampled


def test_shedding_is_reported_as_a_sensor_overload_alert(rig):
    cap, srv = rig
    rules = load_rules([REPO / "rules"])
    got: list[dict] = []
    pipe = Pipeline(rules, on_alert=got.append)
    cap.on_overload = None
    cap.poll(0)
    cap._ov_next = 0.0
    cap.overload_finding()  # what earlier tests shed is reported (to nobody) now
    cap.on_overload = pipe.report
    cap._set_shed(1000)
    try:
        exchange(srv.port, [f"o{i}.over.example.com" for i in range(100)])
        time.sleep(0.1)
        cap._ov_next = 0.0  # due now (else at most every OVERLOAD_EVERY seconds)
        for ev in collect(cap, lambda e: False, timeout=0.3):
            if isinstance(ev, DnsEvent):
                pipe.process(ev)
    finally:
        cap._set_shed(0)
        cap.on_overload = None
    over = [a for a in got if "sensor-overload" in str(a)]
    assert len(over) == 1, got
    f = cap.overload_finding()  # nothing new shed since: no finding
    assert f is None
    text = str(over[0])
    assert "T1562.006" in text and "sampled out in the kernel" in text
    m = re.search(r"([\d,]+) DNS packets not analysed", text)
    assert m and int(m.group(1).replace(",", "")) > 100  # most of 200 packets at level 1000/1024


def test_overload_finding_counts_what_was_shed_in_its_window(rig):
    cap, srv = rig
    cap._ov_next = 0.0
    cap.overload_finding()  # start a window
    s0 = cap.counters()[live.C_SAMPLED]
    cap._set_shed(1023)
    try:
        exchange(srv.port, [f"w{i}.win.example.com" for i in range(50)])
    finally:
        cap._set_shed(0)
    cap._ov_next = 0.0
    f = cap.overload_finding()
    assert f is not None and f.rule_id == "sensor-overload" and f.category == "health"
    assert f.technique_id == "T1562.006" and f.entity == socket.gethostname()
    assert f.features["sampled_out"] == cap.counters()[live.C_SAMPLED] - s0 > 50
    assert f.features["lost_bpf_events"] == 0


def test_a_backlog_detection_cannot_keep_up_with_is_dropped_and_counted(rig, monkeypatch):
    cap, srv = rig
    cap.poll(0)
    cap._ov_next = 0.0
    cap.overload_finding()  # start a window
    orig = live.BACKLOG_MAX
    monkeypatch.setattr(live, "BACKLOG_MAX", 4)
    base = cap._shed_backlog
    exchange(srv.port, [f"b{i}.backlog.example.com" for i in range(10)])
    time.sleep(0.1)  # the drain thread copies; nobody parses
    monkeypatch.setattr(live, "BACKLOG_MAX", orig)
    evs = mine(collect(cap, lambda e: False, timeout=0.3), "backlog.example.com")
    dropped = cap._shed_backlog - base
    assert dropped > 0 and len(evs) + dropped == 20
    cap._ov_next = 0.0
    f = cap.overload_finding()
    assert f is not None and f.features["shed_backlog"] == dropped and f.severity == "high"


def test_the_shed_level_follows_the_backlog(rig):
    cap, _ = rig
    saved = (cap._drained, cap._parsed, cap._last_backlog)
    try:
        cap._set_shed(0)
        cap._last_backlog = 0
        cap._parsed = cap._drained - (live.BACKLOG_HIGH + 1)  # behind, and growing
        cap._control_step()
        first = cap._shed_level
        cap._parsed -= 1000
        cap._control_step()
        assert 0 < first < cap._shed_level <= live.SHED_MAX
        assert cap._control[0].value == cap._shed_level  # the kernel sees it
        cap._parsed = cap._drained  # caught up
        high = cap._shed_level
        cap._control_step()
        assert cap._shed_level == high - live.SHED_STEP_DOWN
        for _ in range(64):
            cap._control_step()
        assert cap._shed_level == 0 and cap._control[0].value == 0
    finally:
        cap._drained, cap._parsed, cap._last_backlog = saved
        cap._set_shed(0)


def test_struct_dns_event_is_mirrored_field_by_field():
    """bpf/dns_event.h's struct dns_event and live._FIELDS name the same fields, in order,
    with the same sizes (the kernel's record length is checked against it on every record)."""
    text = (REPO / "bpf" / "dns_event.h").read_text()
    size = {"u64": 8, "u32": 4, "u16": 2, "u8": 1, "char": 1}

    def fields(struct_name):
        body = re.search(r"struct %s \{(.*?)\};" % struct_name, text, re.S).group(1)
        out = []
        for typ, name, n in re.findall(r"^\s*(?:struct )?(\w+) (\w+)(?:\[(\w+)\])?;", body, re.M):
            if typ == "owner":
                out += fields("owner")
                continue
            consts = {"TASK_COMM_LEN": 16, "DNS_MAX_PAYLOAD": 2048}
            count = consts[n] if n in consts else int(n or 1)
            out.append((name, size[typ] * count))
        return out

    c = fields("dns_event")
    assert c[-1] == ("data", live.DNS_MAX_PAYLOAD)
    py = [(n, struct.calcsize("<" + code)) for n, code in live._FIELDS]
    assert c[:-1] == py
    assert live.HDR_SIZE == sum(s for _, s in py)
