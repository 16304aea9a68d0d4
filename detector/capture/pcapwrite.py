"""Write pcap files and build DNS frames: for the bundled demo capture, the
benchmark's generated traffic and tests. Not used on the detection path."""

from __future__ import annotations

import socket
import struct
from typing import BinaryIO

ETH4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
ETH6 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"
_REC = struct.Struct("<IIII")


class PcapWriter:
    """Classic pcap, microsecond timestamps."""

    def __init__(self, f: BinaryIO, linktype: int = 1) -> None:
        self.f = f
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        self.count = 0

    def write(self, ts: float, frame: bytes) -> None:
        us = int(round(ts * 1e6))
        self.f.write(_REC.pack(us // 1_000_000, us % 1_000_000, len(frame), len(frame)))
        self.f.write(frame)
        self.count += 1


def write_pcap(path, linktype: int, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        w = PcapWriter(f, linktype)
        for ts, fr in frames:
            w.write(ts, fr)


def name_wire(name: str) -> bytes:
    out = b""
    for lab in name.strip(".").split("."):
        if lab:
            b = lab.encode("ascii", "replace")[:63]
            out += bytes([len(b)]) + b
    return out + b"\0"


def dns_query(qid: int, name: str, qtype: int = 1, edns: bool = True) -> bytes:
    m = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    m += name_wire(name) + struct.pack("!HH", qtype, 1)
    if edns:
        m += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return m


def dns_response(qid: int, name: str, qtype: int = 1, answers: list[tuple[int, bytes]] = (),
                 rcode: int = 0, ttl: int = 300) -> bytes:
    """``answers``: (rtype, rdata) pairs, each named by a pointer to the question."""
    m = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    m += name_wire(name) + struct.pack("!HH", qtype, 1)
    for rtype, rdata in answers:
        m += struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(rdata)) + rdata
    return m


def txt_rdata(text: bytes) -> bytes:
    out = b""
    for i in range(0, len(text), 255):
        chunk = text[i:i + 255]
        out += bytes([len(chunk)]) + chunk
    return out or b"\0"


def udp(sp: int, dp: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload


def tcp(sp: int, dp: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 0x50, flags, 65535, 0, 0) + payload


def ip4(src: str | bytes, dst: str | bytes, proto: int, payload: bytes) -> bytes:
    s = socket.inet_aton(src) if isinstance(src, str) else src
    d = socket.inet_aton(dst) if isinstance(dst, str) else dst
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, s, d) + payload


def ip6(src: str | bytes, dst: str | bytes, proto: int, payload: bytes) -> bytes:
    s = socket.inet_pton(socket.AF_INET6, src) if isinstance(src, str) else src
    d = socket.inet_pton(socket.AF_INET6, dst) if isinstance(dst, str) else dst
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, 64, s, d) + payload


def eth_ip(src: str | bytes, dst: str | bytes, proto: int, payload: bytes) -> bytes:
    v6 = (isinstance(src, str) and ":" in src) or (isinstance(src, bytes) and len(src) == 16)
    return (ETH6 + ip6(src, dst, proto, payload)) if v6 else (ETH4 + ip4(src, dst, proto, payload))
