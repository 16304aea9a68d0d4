"""DNS over TCP under hostile or broken segment streams (issue 12): crafted
captures, decoded by PacketDecoder and by tshark with reassembly on (out of
order too) as the oracle for what the receiver is given. Limits are asserted on
the reassembler's counters and the bytes it holds, never on timing."""

from __future__ import annotations

import json
import random
import struct
import subprocess
from collections import Counter

import pytest

from conftest import run_detector
from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.capture.pcapwrite import ETH4, dns_query, ip4, tcp, write_pcap
from detector.capture.tcpstream import MAX_MESSAGE, RESYNC_LIMIT, TcpDnsReassembler

C, S = "10.1.0.2", "10.1.0.53"
PSH_ACK, SYN, SYN_ACK, ACK = 0x18, 0x02, 0x12, 0x10


def framed(qid: int, name: str) -> bytes:
    m = dns_query(qid, name, edns=False)
    return struct.pack("!H", len(m)) + m


def seg(seq: int, payload: bytes = b"", flags: int = PSH_ACK, sport: int = 40000, ack: int = 1,
        src: str = C, dst: str = S, dport: int = 53) -> bytes:
    return ETH4 + ip4(src, dst, 6, tcp(sport, dport, seq, ack, flags, payload))


def handshake(isn: int = 1000, sport: int = 40000) -> list[bytes]:
    return [seg(isn, flags=SYN, sport=sport, ack=0),
            seg(7000, flags=SYN_ACK, sport=53, dport=sport, src=S, dst=C, ack=isn + 1),
            seg(isn + 1, flags=ACK, sport=sport, ack=7001)]


def write(path, frames: list[bytes]) -> None:
    write_pcap(path, 1, [(1.0 + i * 1e-3, f) for i, f in enumerate(frames)])


def ours(path, dec: PacketDecoder | None = None) -> tuple[list[str], PacketDecoder]:
    dec = dec or PacketDecoder()
    names = []
    for ts, lt, fr in PcapReader(str(path)):
        names += [e.qname for e in dec.frame(ts, lt, fr)]
    names += [e.qname for e in dec.flush()]
    return names, dec


def tshark(path, ooo: bool = True) -> list[str]:
    """tshark's DNS names: reassembly on; out of order too (then it waits for a hole
    forever), or not (then it decodes what follows a hole, as a receiver that has
    the bytes the capture lost would)."""
    r = subprocess.run(["tshark", "-o", "tcp.desegment_tcp_streams:TRUE",
                        "-o", f"tcp.reassemble_out_of_order:{'TRUE' if ooo else 'FALSE'}",
                        "-r", str(path), "-Y", "dns",
                        "-T", "fields", "-e", "dns.qry.name"], capture_output=True, text=True, check=True)
    return [n for line in r.stdout.splitlines() for n in line.split(",") if n]


def tunnel_names(n: int) -> list[str]:
    rnd = random.Random(12)
    return [f"{rnd.randbytes(20).hex()}.{i}.t.example.net" for i in range(n)]


def test_out_of_window_junk_before_a_tunnel_hides_nothing(tmp_path):
    """65 junk segments far outside the window (a real stack drops them), then 300
    tunnel queries: all 300 are decoded, the junk is counted, never decoded."""
    names = tunnel_names(300)
    rnd = random.Random(5)
    frames = handshake()
    for _ in range(65):
        frames.append(seg((1001 + (1 << 24) + rnd.randrange(1 << 30)) & 0xFFFFFFFF, rnd.randbytes(200)))
    seq = 1001
    for i, n in enumerate(names):
        p = framed(i, n)
        frames.append(seg(seq, p))
        seq += len(p)
    path = tmp_path / "junk-ahead.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert got == names
    assert dec.stats["tcp_out_of_window"] == 65
    assert dec.stats["tcp_gaps"] == 0 and dec.tcp.held_bytes == 0
    assert tshark(path) == names  # out-of-order reassembly on: the junk is never filled in
    assert tshark(path, ooo=False) == []  # in order only, tshark is blinded as we were
    # the replay summary lists the dropped segments among its skips
    summary = path.with_suffix(".json")
    res = run_detector("replay", "pcap", "-q", "--no-stdout", "--summary-json", str(summary), str(path))
    assert res.returncode == 0, res.stderr
    s = json.loads(summary.read_text())
    assert s["dns_messages"] == 300 and s["errors"]["tcp_out_of_window"] == 65


def test_segment_b_before_a_gives_both_once(tmp_path):
    a, b, c = framed(1, "a.example.com"), framed(2, "b.example.com"), framed(3, "c.example.com")
    frames = handshake() + [seg(1001 + len(a), b), seg(1001, a), seg(1001 + len(a) + len(b), c)]
    path = tmp_path / "b-first.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert sorted(got) == sorted(tshark(path)) == ["a.example.com", "b.example.com", "c.example.com"]
    assert got == ["a.example.com", "b.example.com", "c.example.com"]  # in stream order
    assert dec.stats["tcp_gaps"] == 0


def test_coalesced_retransmission_decodes_each_message_once(tmp_path):
    """A and B, then A+B retransmitted in one segment with C appended (a coalesced
    retransmission), then B again alone and a segment overlapping B and C."""
    a, b, c = framed(1, "a.example.com"), framed(2, "b.example.com"), framed(3, "c.example.com")
    s = 1001
    frames = handshake() + [seg(s, a), seg(s + len(a), b), seg(s, a + b + c), seg(s + len(a), b),
                            seg(s + len(a) + 5, (b + c)[5:])]
    path = tmp_path / "coalesced.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert got == ["a.example.com", "b.example.com", "c.example.com"]
    assert Counter(tshark(path)) == Counter(got)
    assert dec.tcp.retransmitted == 2 and dec.tcp.overlaps == 1


def test_out_of_order_overlap_lowest_sequence_wins_like_linux(tmp_path):
    """Junk held out of order ahead of the stream, then the real data covering it
    arrives in order: the real bytes win (Linux delivers in-order data and trims
    the held segment), and the tail of the held junk beyond them is not decoded."""
    a, b = framed(1, "a.example.com"), framed(2, "b.example.com")
    junk = framed(9, "evil.example.com")
    frames = handshake() + [seg(1001 + len(a), junk), seg(1001, a + b)]
    path = tmp_path / "ofo-overlap.pcap"
    write(path, frames)
    got, _ = ours(path)
    assert got == ["a.example.com", "b.example.com"] == tshark(path)


def test_capture_loss_acknowledged_by_the_receiver_is_skipped(tmp_path):
    """A segment the capture lost (the server ACKs past it): the messages after
    the hole are decoded once the ACK shows the receiver has the bytes."""
    msgs = [framed(i, f"m{i}.example.com") for i in range(6)]
    frames = handshake()
    seq = 1001
    for i, m in enumerate(msgs):
        if i != 2:  # lost by the capture
            frames.append(seg(seq, m))
        seq += len(m)
        frames.append(seg(7001, flags=ACK, sport=53, dport=40000, src=S, dst=C, ack=seq))
    frames.append(seg(7001, flags=ACK, sport=53, dport=40000, src=S, dst=C, ack=seq))
    path = tmp_path / "lost.pcap"
    write_pcap(path, 1, [(1.0 + i * 0.5, f) for i, f in enumerate(frames)])  # ACK grace passes
    dec = PacketDecoder()
    got = []
    for ts, lt, fr in PcapReader(str(path)):
        got += [e.qname for e in dec.frame(ts, lt, fr)]
    assert got == [f"m{i}.example.com" for i in (0, 1, 3, 4, 5)]  # before the end of capture
    assert dec.stats["tcp_gaps"] == 1
    assert tshark(path, ooo=False) == got


def test_planted_data_ahead_never_skips_real_data(tmp_path):
    """A client plants a plausible message in the window ahead and stalls: as the
    server does not ACK past the hole, the reassembler waits, and the real
    messages that fill the hole later are decoded, the planted one not at all."""
    a, b = framed(1, "a.example.com"), framed(2, "b.example.com")
    planted = framed(7, "planted.example.com")
    frames = handshake() + [seg(1001 + 4000, planted),
                            seg(7001, flags=ACK, sport=53, dport=40000, src=S, dst=C, ack=1001)]
    frames += [seg(7001, flags=ACK, sport=53, dport=40000, src=S, dst=C, ack=1001)] * 3
    frames += [seg(1001, a), seg(1001 + len(a), b)]
    path = tmp_path / "planted.pcap"
    write_pcap(path, 1, [(1.0 + i * 10.0, f) for i, f in enumerate(frames)])  # long stalls
    got, dec = ours(path)
    assert got == ["a.example.com", "b.example.com"] == tshark(path)
    assert dec.stats["tcp_gaps"] == 0


def test_stream_without_handshake_still_decodes(tmp_path):
    """Picked up mid-stream (the benchmark's TCP): length-prefixed data, no SYN."""
    frames, seq = [], 5000
    for i in range(5):
        p = framed(i, f"n{i}.example.com")
        frames.append(seg(seq, p, sport=41000))
        seq += len(p)
    path = tmp_path / "nosyn.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert got == [f"n{i}.example.com" for i in range(5)] == tshark(path)


def test_out_of_order_streams_are_bounded_per_stream_and_in_total():
    """1,000 streams each with a hole and 200 KB queued behind it: the reassembler
    holds at most max_ooo per stream and max_bytes in all, and counts the rest."""
    r = TcpDnsReassembler(max_ooo=1 << 16, max_bytes=8 << 20)
    chunk = bytes(1000)
    for k in range(1000):
        r.segment(k, 100, SYN, b"", 0.0)
        for j in range(200):
            r.segment(k, 101 + 10 + j * 1000, PSH_ACK, chunk, 0.0)  # 10 bytes missing
    assert r.held_bytes <= 8 << 20
    assert all(len(st.buf) + st.ooo_bytes <= 1 << 16 for st in r.fresh.values())
    assert r.stats["tcp_ooo_dropped_bytes"] + r.stats["tcp_memory_dropped_bytes"] \
        + r.held_bytes == 1000 * 200 * 1000
    assert r.stats["tcp_memory_dropped_bytes"] > 0


def test_half_open_flood_evicts_only_half_open_streams_and_counts_them(tmp_path):
    a, b = framed(1, "before.example.com"), framed(2, "after.example.com")
    frames = handshake(sport=40000) + [seg(1001, a)]
    frames += [seg(50_000 + i, flags=SYN, sport=1024 + i % 60000, src=f"10.9.{i >> 8 & 255}.{i & 255}",
                   ack=0) for i in range(3000)]
    frames.append(seg(1001 + len(a), b))
    path = tmp_path / "synflood.pcap"
    write(path, frames)
    dec = PacketDecoder()
    dec.tcp.max_streams = 500
    got, dec = ours(path, dec)
    assert got == ["before.example.com", "after.example.com"] == tshark(path)
    assert dec.stats["tcp_streams_evicted"] == 3000 + 2 - 500  # the SYN-ACK side is one too
    assert len(dec.tcp) == 500


def test_junk_on_port_53_is_given_up_after_one_bounded_scan(tmp_path):
    """Random bytes on a DNS port with no handshake: scanned once, at most
    RESYNC_LIMIT bytes, then the stream is given up and later segments are only
    counted; a handshaked stream whose length prefix cannot hold a DNS header is
    given up too; a good stream next to them is unaffected."""
    rnd = random.Random(3)
    frames, seq = [], 9000
    for _ in range(400):
        p = bytes(b | 0x80 for b in rnd.randbytes(500))  # never a plausible DNS header
        frames.append(seg(seq, p, sport=42000))
        seq += len(p)
    frames += handshake(isn=1000, sport=43000) + [seg(1001, b"\x00\x05hello" * 10, sport=43000)]
    frames += handshake(isn=3000, sport=44000) + [seg(3001, framed(1, "good.example.com"), sport=44000)]
    path = tmp_path / "junk.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert got == ["good.example.com"] == tshark(path)
    assert dec.stats["tcp_streams_given_up"] == 2
    assert dec.stats["tcp_junk_segments"] >= 400 - (RESYNC_LIMIT // 500 + 2)
    assert dec.tcp.held_bytes == 0


def test_a_stream_buffer_never_exceeds_one_message():
    """A length prefix of 65,535 and data that never ends: at most one message held."""
    r = TcpDnsReassembler()
    r.segment("k", 0, SYN, b"")
    seq = 1
    first = b"\xff\xff" + b"\x12\x34\x01\x00\x00\x01" + bytes(6)
    r.segment("k", seq, PSH_ACK, first)
    seq += len(first)
    for _ in range(200):
        out = r.segment("k", seq, PSH_ACK, bytes(1000))
        seq += 1000
        assert r.held_bytes <= MAX_MESSAGE
    assert r.retransmitted == 0


@pytest.mark.parametrize("flags", [0x04, 0x02])
def test_blind_rst_or_syn_does_not_reset_a_live_stream(tmp_path, flags):
    a, b = framed(1, "a.example.com"), framed(2, "b.example.com")
    frames = handshake() + [seg(1001, a), seg(123456, flags=flags), seg(1001 + len(a), b)]
    path = tmp_path / "blind.pcap"
    write(path, frames)
    got, dec = ours(path)
    assert got == ["a.example.com", "b.example.com"]
    # tshark agrees for the RST; a SYN it takes for a new connection, which Linux
    # in ESTABLISHED answers with a challenge ACK (RFC 5961 4.2) and ignores
    assert tshark(path) == (got if flags == 0x04 else got[:1])
    assert (dec.tcp.rst_ignored, dec.tcp.syn_ignored) == ((1, 0) if flags == 0x04 else (0, 1))
    assert not any(k.startswith("tcp_") for k in dec.stats)  # nothing lost


def test_a_segment_cut_by_the_snap_length_gives_its_message_and_the_stream_goes_on(tmp_path):
    """The capture kept only the first bytes of a segment (IP total length beyond
    the captured bytes): the message they start is decoded as far as it goes
    (question kept, malformed set), the rest of it in the next segment is
    skipped, and the message after it decodes."""
    from detector.capture.pcapwrite import dns_response
    a = dns_response(1, "cut.example.com", answers=[(1, bytes([192, 0, 2, i])) for i in range(10)])
    a = struct.pack("!H", len(a)) + a
    b = framed(2, "next.example.com")
    first, second = a[:120], a[120:]
    frames = handshake() + [seg(1001, first)[:-40], seg(1001 + len(first), second + b)]
    path = tmp_path / "snap.pcap"
    write(path, frames)
    dec = PacketDecoder()
    evs = []
    for ts, lt, fr in PcapReader(str(path)):
        evs += dec.frame(ts, lt, fr)
    assert [(e.qname, e.malformed) for e in evs] == [("cut.example.com", "truncated_record"),
                                                     ("next.example.com", "")]
    assert dec.tcp.cut_messages == 1 and dec.stats["tcp_gaps"] == 0


def test_a_hole_acknowledged_before_its_data_resumes_at_once_and_reads_late_bytes_once(tmp_path):
    """The capture writes the server's ACK before the client segment it acknowledges
    (capture order, not the network's): the data after the hole starts a message,
    so the stream resumes there at once; the lost segment then comes, twice, and
    its message is decoded once. A hole that ends inside a message waits out the
    ACK grace instead (a prefix sent alone would otherwise be lost)."""
    msgs = [framed(i, f"m{i}.example.com") for i in range(4)]
    frames = handshake()
    seq, starts = 1001, []
    for m in msgs:
        starts.append(seq)
        seq += len(m)
    ack = lambda n: seg(7001, flags=ACK, sport=53, dport=40000, src=S, dst=C, ack=n)  # noqa: E731
    frames += [seg(starts[0], msgs[0]), ack(starts[2]), seg(starts[2], msgs[2]),
               seg(starts[1], msgs[1]), seg(starts[1], msgs[1]), seg(starts[3], msgs[3])]
    path = tmp_path / "late.pcap"
    write(path, frames)  # 1 ms apart: well inside the ACK grace
    dec = PacketDecoder()
    got = []
    for ts, lt, fr in PcapReader(str(path)):
        got.append([e.qname for e in dec.frame(ts, lt, fr)])
    assert got[3:] == [["m0.example.com"], [], ["m2.example.com"], ["m1.example.com"], [],
                       ["m3.example.com"]]
    c = dec.tcp.counters()
    assert c["tcp_gaps"] == 1 and c["tcp_late_segments"] == 1 and c["tcp_retransmitted"] == 1
    assert tshark(path) == ["m0.example.com", "m1.example.com", "m2.example.com", "m3.example.com"]
    # the hole ends inside a message (its prefix was lost): no resync before the grace
    b = framed(9, "b.example.com")
    frames = handshake() + [seg(1001, msgs[0]), ack(1001 + len(msgs[0]) + 2 + len(b)),
                            seg(1001 + len(msgs[0]) + 2, b[2:])]
    write(path, frames)
    names, dec = ours(path)
    assert names == ["m0.example.com"] and dec.tcp.counters()["tcp_resync_skipped_bytes"] == len(b) - 2
