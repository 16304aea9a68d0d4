"""Fuzz targets: each takes the fuzzer's bytes and drives one parser of hostile
input the way the product does. A target fails (raises) only on behaviour that
is a bug: an exception other than the parser's documented error, or the C and
Python DNS decoders disagreeing.

* ``wire``: one DNS message through the C decoder and the pure-Python one;
  both refuse it with DnsParseError, or both give the same event.
* ``packets``: the bytes as a stream of link-layer frames (Ethernet, raw IP,
  SLL...) through the packet decoder: IP, UDP, TCP reassembly, DNS.
* ``tcp``: the bytes as a script of TCP segments on two DNS-over-TCP
  streams (sequence offsets, flags, payloads: overlaps, holes, reorders,
  retransmissions) through the packet decoder's reassembly.
* ``pcap``: the bytes as a capture file (pcap or pcapng) through the reader
  and the packet decoder; a classic pcap also through the replay source with the
  C fast path on and off, which must agree.
* ``rules``: the bytes as a rule file through the loader and the validators.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import asdict

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import CaptureError, PcapReader
from detector.capture.pcapwrite import ETH4, ip4, tcp
from detector.dns import wire
from detector.errors import DetectorError
from detector.ruleset import RuleError

LINKTYPES = (1, 101, 113, 276, 0, 12, 228, 229, 10, 129, 149, 192, 239, 258, 9, 50)
_TMP = tempfile.mkdtemp(prefix="detector-fuzz-")


def wire_target(data: bytes) -> None:
    c = p = None
    try:
        c = asdict(wire.decode(data, 1.0, "udp", 4, "10.0.0.1", 1000, "10.0.0.53", 53))
    except wire.DnsParseError as e:
        c = ("error", e.args[0] if e.args else "")
    try:
        p = asdict(wire.py_decode(data, 1.0, "udp", 4, "10.0.0.1", 1000, "10.0.0.53", 53))
    except wire.DnsParseError as e:
        p = ("error", e.args[0] if e.args else "")
    if wire.decode is wire.py_decode:  # no C twin built: nothing to compare
        return
    if c != p:
        raise AssertionError(f"C and Python decoders disagree on {data.hex()}:\nC  {c}\nPy {p}")


def packets_target(data: bytes) -> None:
    dec = PacketDecoder()
    off, ts = 0, 1.0
    while off + 3 <= len(data):
        lt = LINKTYPES[data[off] % len(LINKTYPES)]
        n = struct.unpack_from("!H", data, off + 1)[0] % 1600
        frame = data[off + 3:off + 3 + n]
        off += 3 + n
        ts += 0.001
        dec.frame(ts, lt, frame)
    dec.flush()


def tcp_target(data: bytes) -> None:
    """Records of 6 bytes + payload: stream (1 bit), direction (1 bit), flags (SYN,
    FIN, RST, ACK), a signed sequence offset from the stream's base, payload length."""
    dec = PacketDecoder()
    cli = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    srv = bytes([10, 0, 0, 53])
    off, ts = 0, 1.0
    while off + 6 <= len(data):
        ctl, rel, n = data[off], struct.unpack_from("!h", data, off + 1)[0], data[off + 3]
        payload = data[off + 6:off + 6 + n]
        off += 6 + n
        stream, back = ctl & 1, ctl >> 1 & 1
        flags = (0x02 if ctl & 4 else 0) | (0x01 if ctl & 8 else 0) | (0x04 if ctl & 16 else 0) | 0x10
        base = 1000 if not back else 50000
        seq = (base + rel) & 0xFFFFFFFF
        sport = 40000 + stream
        if back:
            seg = ETH4 + ip4(srv, cli[stream], 6, tcp(53, sport, seq, 1, flags, payload))
        else:
            seg = ETH4 + ip4(cli[stream], srv, 6, tcp(sport, 53, seq, 1, flags, payload))
        ts += 0.001
        dec.frame(ts, 1, seg)
    dec.flush()


def pcap_target(data: bytes) -> None:
    path = os.path.join(_TMP, "in.cap")
    with open(path, "wb") as f:
        f.write(data)
    try:
        r = PcapReader(path)
    except CaptureError:
        return
    dec = PacketDecoder()
    try:
        for i, (ts, lt, frame) in enumerate(r):
            dec.frame(ts, lt, frame)
            if i > 10000:
                break
    except CaptureError:
        pass
    finally:
        r.close()
    dec.flush()
    if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                    b"\xa1\xb2\x3c\x4d"):
        try:
            fast, slow = _replayed(path, True), _replayed(path, False)
        except DetectorError:  # refused whole (an unknown link type): the same either way
            return
        if fast != slow:
            raise AssertionError(f"the C fast path and frame-by-frame disagree on {data.hex()}")


def _replayed(path: str, fast: bool) -> tuple:
    """A classic pcap as PcapSource gives it, the C fast path on or off."""
    from detector.sources.pcap import PcapSource

    src = PcapSource([path], warn=lambda msg: None)
    src.fast = fast
    evs = [asdict(e) for b in src.batches() for e in b.events]
    return evs, src.dec.packets, src.dec.dns_messages, dict(src.dec.stats), src.truncated


def rules_target(data: bytes) -> None:
    from detector.detect.registry import load_rules

    path = os.path.join(_TMP, "rule.yaml")
    with open(path, "wb") as f:
        f.write(data[:65536])
    try:
        load_rules([path])
    except RuleError:
        pass


TARGETS = {"wire": wire_target, "packets": packets_target, "tcp": tcp_target, "pcap": pcap_target,
           "rules": rules_target}
