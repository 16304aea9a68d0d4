"""The C fast path of classic pcap replay (detector/capture/_cframe.c, through
PacketDecoder.scan_pcap and PcapReader.scan) against the Python path it stands
in for (PcapReader's records through PacketDecoder.frame one by one): over every
shared capture and over made ones (each link type it takes, VLAN tags, IPv4
options, fragments, TCP, tunnels, damaged messages, lengths beyond the captured
bytes, big-endian and nanosecond files, a compressed stream, a cut file), the
events are equal field by field and in order, so are the batches they come in,
and so is every counter of the decoder (with its keys in the same order: the
summary lists them so) and of the reader.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct

import pytest

from detector.capture import layers
from detector.capture.pcap import PcapReader, CaptureError
from detector.capture.pcapwrite import (dns_query, dns_response, eth_ip, ip4, ip6, tcp, txt_rdata,
                                        udp)
from detector.sources.pcap import PcapSource

pytestmark = pytest.mark.skipif(layers._cframe is None, reason="the C fast path is not built")


def replay(paths: list[str], fast: bool) -> dict:
    """Everything a replay of ``paths`` makes of them, the fast path on or off;
    ``frame_calls``: the records the fast path gave to the Python decoder."""
    src = PcapSource(paths, warn=lambda msg: None)
    src.fast = fast
    dec = src.dec
    calls = [0]
    frame = dec.frame

    def counted(*a):
        calls[0] += 1
        return frame(*a)

    dec.frame = counted  # what the C scanner calls for the records it does not decode
    batches = []
    for b in src.batches():
        batches.append([(type(e).__name__, dataclasses.asdict(e)) for e in b.events])
    return {"batches": batches, "packets": dec.packets, "dns_messages": dec.dns_messages,
            "stats": list(dec.stats.items()), "unknown_linktypes": dict(dec.unknown_linktypes),
            "truncated": src.truncated, "refused": src.refused,
            "reader_skips": dict(src.reader_skips), "frame_calls": calls[0]}


def assert_same(paths: list[str]) -> dict:
    fast, slow = replay(paths, True), replay(paths, False)
    for key in fast:
        if key == "frame_calls":
            continue
        if key == "batches" and fast[key] != slow[key]:
            f = [e for b in fast[key] for e in b]
            s = [e for b in slow[key] for e in b]
            first = next((i for i, (a, b) in enumerate(zip(f, s)) if a != b), min(len(f), len(s)))
            assert f == s, f"{paths}: event {first} differs: {f[first:first + 1]} != {s[first:first + 1]}"
            assert [len(b) for b in fast[key]] == [len(b) for b in slow[key]], f"{paths}: batches"
        assert fast[key] == slow[key], f"{paths}: {key}"
    return fast


def shared_captures(data) -> list[str]:
    out = []
    for p in sorted(data.rglob("*")):
        if p.is_file():
            try:
                PcapReader(str(p)).close()
            except CaptureError:
                continue
            out.append(str(p))
    return out


def test_every_shared_capture_decodes_the_same_on_both_paths(data):
    caps = shared_captures(data)
    assert len(caps) > 150, caps
    packets = calls = pcaps = 0
    for cap in caps:
        r = assert_same([cap])
        packets += r["packets"]
        calls += r["frame_calls"]
        pcaps += PcapReader(cap).format == "pcap"
    assert pcaps > 150
    # not vacuous: most packets were decoded in C, not handed back
    assert calls < packets * 0.6, (calls, packets)


def test_several_files_in_one_replay_decode_the_same(data):
    caps = [c for c in shared_captures(data) if "/pcap/" in c][:12]
    assert_same(caps)


# --- made captures: every branch of the fast path and of handing back ---------------------

Q = dns_query(7, "www.example.com")
R = dns_response(7, "www.example.com", 1, [(1, b"\x5d\xb8\xd8\x22"), (16, txt_rdata(b"v=spf1 -all"))])
CUT = R[:-5]  # a record cut: truncated_record
SHORT = b"\x00\x01\x00"  # under a DNS header: short_header
MDNS = dns_response(0, "printer.local", 1, [(1, b"\x0a\x00\x00\x07")])
V6A, V6B = "2001:db8::1", "fe80::1:0:0:53"


def ip4_opts(src, dst, proto, payload):
    """IPv4 with 4 bytes of options (IHL 6)."""
    s, d = (bytes(map(int, a.split("."))) for a in (src, dst))
    return struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(payload), 0, 0, 64, proto, 0, s, d) \
        + b"\x01\x01\x01\x00" + payload


def ip4_frags(src, dst, payload, cut=16, ident=99):
    """A UDP datagram in two IPv4 fragments, the first ``cut`` bytes (a multiple of 8)
    in the first."""
    s, d = (bytes(map(int, a.split("."))) for a in (src, dst))
    a, b = payload[:cut], payload[cut:]
    f1 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(a), ident, 0x2000, 64, 17, 0, s, d) + a
    f2 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(b), ident, 0x2000 | (cut // 8), 64, 17, 0,
                     s, d) + b
    f2 = f2[:6] + struct.pack("!H", cut // 8) + f2[8:]  # the last: no more fragments
    return [f1, f2]


def lookalike_frags(src, dst):
    """A first fragment holding what looks like a whole DNS datagram (its UDP length
    the fragment's), more bytes in the second: held for reassembly, not decoded."""
    whole = udp(40014, 53, Q)
    pad = (-len(whole)) % 8
    return ip4_frags(src, dst, udp(40014, 53, Q + bytes(pad)) + bytes(8), cut=len(whole) + pad,
                     ident=100)


def ip_packets() -> list[bytes]:
    """IP packets, each a case the decoder must treat as the Python path does."""
    pk = [
        ip4("10.0.0.1", "10.0.0.53", 17, udp(40000, 53, Q)),
        ip4("10.0.0.53", "10.0.0.1", 17, udp(53, 40000, R)),
        ip6(V6A, V6B, 17, udp(40001, 53, Q)),
        ip6(V6B, V6A, 17, udp(53, 40001, R)),
        ip4("10.0.0.53", "10.0.0.1", 17, udp(53, 40002, CUT)),
        ip4("10.0.0.53", "10.0.0.1", 17, udp(53, 40003, SHORT)),
        ip6(V6B, V6A, 17, udp(53, 40003, SHORT)),
        ip4("10.0.0.9", "224.0.0.251", 17, udp(5353, 5353, MDNS)),
        ip4("10.0.0.1", "10.0.0.2", 17, udp(40000, 8080, Q)),  # not DNS
        ip4("10.0.0.1", "10.0.0.2", 17, udp(40000, 853, Q)),  # DoQ: a connection
        ip4_opts("10.0.0.1", "10.0.0.53", 17, udp(40004, 53, Q)),
        ip4("10.0.0.1", "10.0.0.53", 6, tcp(40005, 53, 1000, 0, 0x02)),
        ip4("10.0.0.1", "10.0.0.53", 6, tcp(40005, 53, 1001, 1, 0x18, struct.pack("!H", len(Q)) + Q)),
        ip4("10.0.0.1", "10.0.0.2", 6, tcp(40006, 443, 5, 0, 0x02)),  # DoH: a connection
        ip4("10.0.0.1", "10.0.0.2", 4, ip4("10.1.0.1", "10.1.0.53", 17, udp(40007, 53, Q))),  # IP in IP
        ip4("10.0.0.1", "10.0.0.2", 17, udp(40008, 4789, b"\x08\0\0\0\0\0\x01\0"
                                         + eth_ip("10.2.0.1", "10.2.0.53", 17, udp(40009, 53, Q)))),
        ip6(V6A, V6B, 0, b"\x11\x00" + b"\x01\x04\x00\x00\x00\x00" + udp(40010, 53, Q)),  # hop-by-hop
        *ip4_frags("10.0.0.1", "10.0.0.53", udp(40011, 53, R)),
        *lookalike_frags("10.0.0.1", "10.0.0.53"),
    ]
    good = ip4("10.0.0.53", "10.0.0.1", 17, udp(53, 40012, R))
    pk.append(good[:-9])  # IP and UDP lengths beyond the captured bytes: capture_truncated
    bad_udp = bytearray(good)
    bad_udp[24:26] = struct.pack("!H", 2000)  # a UDP length beyond the IP packet
    pk.append(bytes(bad_udp))
    tiny = bytearray(good)
    tiny[24:26] = struct.pack("!H", 4)  # a UDP length under the header
    pk.append(bytes(tiny))
    six = ip6(V6B, V6A, 17, udp(53, 40013, R))
    pk.append(six[:-3])  # IPv6 payload length beyond the captured bytes
    zero = bytearray(six)
    zero[4:6] = b"\0\0"  # a zero payload length (jumbogram)
    pk.append(bytes(zero))
    pk.append(b"\x45\x00\x00")  # an IPv4 header cut
    pk.append(b"\x70" + bytes(40))  # IP version 7
    return pk


ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def ethertype(pkt: bytes) -> bytes:
    return b"\x86\xdd" if pkt and pkt[0] >> 4 == 6 else b"\x08\x00"


def link(linktype: int, pkt: bytes, i: int) -> bytes:
    """``pkt`` in a frame of ``linktype``; every third Ethernet frame has a VLAN tag,
    every fifth two."""
    et = ethertype(pkt)
    if linktype == 1:
        tags = b"\x81\x00\x00\x05" * (i % 3 == 0) + b"\x88\xa8\x00\x06\x81\x00\x00\x07" * (i % 5 == 0)
        return ETH + tags + et + pkt
    if linktype == 113:
        return b"\x00\x00\x00\x01\x00\x06" + ETH[:6] + b"\0\0" + et + pkt
    if linktype == 276:
        return et + b"\0\0" + b"\0\0\0\x02" + b"\x00\x01\x00\x06" + ETH[:6] + b"\0\0" + pkt
    return pkt


def odd_frames(linktype: int) -> list[bytes]:
    """Frames the link layer itself gets wrong, or that are not IP."""
    if linktype == 1:
        return [ETH + b"\x08", ETH + b"\x08\x06" + bytes(28), ETH + b"\x81\x00\x00", b""]
    if linktype in (113, 276):
        return [b"\x00\x00\x00", bytes(14) + b"\x08\x06" + bytes(28)]
    return [b"", b"\x60"]


def frames(linktype: int, rounds: int = 40) -> list[tuple[float, bytes]]:
    """Records over several minutes (with gaps: the decoder's 5-second expiry), the
    packets over and over with their ports shifted."""
    out = []
    ts = 1_700_000_000.0
    pk = ip_packets()
    for r in range(rounds):
        for i, p in enumerate(pk):
            ts += 0.25 if i else 7.5
            out.append((round(ts, 6), link(linktype, p, i + r)))
        for f in odd_frames(linktype):
            out.append((round(ts, 6), f))
    return out


def write(path, linktype: int, recs, big: bool = False, nano: bool = False, snap: int = 262144):
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snap, linktype))
        for ts, fr in recs:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            f.write(struct.pack(e + "IIII", sec, frac, len(fr), len(fr) + 3) + fr)


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 12, 14, 228, 229])
def test_each_link_type_of_the_fast_path(tmp_path, linktype):
    p = tmp_path / f"lt{linktype}.pcap"
    write(p, linktype, frames(linktype))
    r = assert_same([str(p)])
    assert r["dns_messages"] > 400
    assert r["frame_calls"] < r["packets"] * 0.8  # the fast path took its share
    stats = dict(r["stats"])
    for k in ("dns_short_header", "dns_truncated_record", "ip_bad_length", "udp_bad_length",
              "ip_reassembled", "not_dns", "truncated_packet"):
        assert stats.get(k), (k, stats)


@pytest.mark.parametrize("big,nano", [(True, False), (False, True), (True, True)])
def test_byte_order_and_nanosecond_files(tmp_path, big, nano):
    p = tmp_path / "x.pcap"
    write(p, 1, frames(1, 8), big=big, nano=nano)
    r = assert_same([str(p)])
    ev = r["batches"][0][0][1]
    assert ev["ts"] == pytest.approx(1_700_000_007.5)


def test_a_link_type_the_fast_path_does_not_take(tmp_path):
    p = tmp_path / "null.pcap"
    write(p, 0, [(1.0 + i, b"\x02\0\0\0" + pk) for i, pk in enumerate(ip_packets())])
    assert_same([str(p)])


def test_a_compressed_stream_read_on_across_record_boundaries(tmp_path):
    """A gzip capture is read as a stream, a piece at a time: records cut by the
    pieces are read on for, then decoded."""
    plain = tmp_path / "big.pcap"
    write(plain, 1, frames(1, 400))
    gz = tmp_path / "big.pcap.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    r = assert_same([str(gz)])
    assert r == replay([str(plain)], True)
    assert len(r["batches"]) > 5


def test_a_cut_file_and_a_corrupt_record(tmp_path):
    p = tmp_path / "cut.pcap"
    write(p, 1, frames(1, 6))
    whole = p.read_bytes()
    p.write_bytes(whole[:-16 - 2])  # the last record (no bytes) gone, the one before cut
    r = assert_same([str(p)])
    assert r["truncated"] and "cut short" in r["truncated"][0]
    q = tmp_path / "corrupt.pcap"
    bad = bytearray(whole)
    bad[24 + 8:24 + 12] = struct.pack("<I", 0x7FFFFFFF)  # the first record's caplen
    q.write_bytes(bytes(bad) + whole[24:])
    r = assert_same([str(q)])
    assert r["truncated"] and "corrupt" in r["truncated"][0] and r["packets"] == 0
    s = tmp_path / "stray.pcap"
    s.write_bytes(whole + b"\0\0\0")
    assert "stray" in assert_same([str(s)])["truncated"][0]


def test_stdin_stream_is_read_alike(tmp_path, monkeypatch):
    """From a pipe the reader marks pauses; both paths hand on the same batches."""
    import os
    import threading

    p = tmp_path / "s.pcap"
    write(p, 1, frames(1, 30))
    body = p.read_bytes()

    def run(fast):
        rfd, wfd = os.pipe()

        def feed():
            with os.fdopen(wfd, "wb") as w:
                for i in range(0, len(body), 7000):
                    w.write(body[i:i + 7000])
                    w.flush()

        t = threading.Thread(target=feed)
        t.start()
        saved = os.dup(0)
        os.dup2(rfd, 0)
        os.close(rfd)
        try:
            r = replay(["-"], fast)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
            t.join()
        return r

    fast, slow = run(True), run(False)
    flat = lambda r: [e for b in r["batches"] for e in b]  # noqa: E731 (pauses fall where they fall)
    assert flat(fast) == flat(slow)
    for k in ("packets", "dns_messages", "stats", "truncated"):
        assert fast[k] == slow[k], k
    assert fast["dns_messages"] > 300
