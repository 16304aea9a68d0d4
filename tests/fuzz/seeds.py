"""Write the fuzz seeds kept in tests/fuzz/seeds/<target>/: small, synthetic
(made with detector/capture/pcapwrite.py, no captured data), one file each.

    .venv/bin/python -m tests.fuzz.seeds
"""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

from detector.capture.pcapwrite import (ETH4, dns_query, dns_response, eth_ip, ip6, txt_rdata, udp,
                                        write_pcap)
from detector.paths import REPO

SEEDS = Path(__file__).resolve().parent / "seeds"


def _messages() -> list[bytes]:
    q = dns_query(7, "www.example.com")
    return [
        q,
        dns_query(8, "aGVsbG8gd29ybGQ.t.tunnel.example", qtype=16, edns=False),
        dns_response(7, "www.example.com", answers=[(1, b"\x01\x02\x03\x04"), (1, b"\x05\x06\x07\x08")]),
        dns_response(9, "x.example.org", qtype=16, answers=[(16, txt_rdata(b"v=spf1 -all"))]),
        dns_response(10, "v6.example.net", qtype=28, answers=[(28, bytes(15) + b"\x01")], rcode=0),
        dns_response(11, "nx.example.com", rcode=3),
        q[:20],  # cut inside the question
    ]


def _frames() -> list[bytes]:
    out = []
    for i, m in enumerate(_messages()):
        out.append(eth_ip("10.0.0.5", "10.0.0.53", 17, udp(3000 + i, 53, m)))
    out.append(ETH4[:12] + b"\x86\xdd" + ip6("fd00::5", "fd00::53", 17, udp(4000, 53, _messages()[0])))
    return out


def _tcp_script() -> bytes:
    """A handshake, two pipelined length-prefixed queries, their answers, a FIN."""
    q1, q2 = dns_query(1, "a.example.com"), dns_query(2, "b.example.com")
    r1 = dns_response(1, "a.example.com", answers=[(1, b"\x01\x02\x03\x04")])
    pre = lambda m: struct.pack("!H", len(m)) + m  # noqa: E731
    rec = []
    def put(ctl, rel, payload=b""):
        rec.append(struct.pack("!BhBH", ctl, rel, len(payload), 0) + payload)
    put(4, -1)  # SYN
    put(4 | 2, -1)  # SYN back
    data = pre(q1) + pre(q2)
    put(0, 0, data[:30])
    put(0, 30, data[30:])
    put(2, 0, pre(r1))
    put(8, len(data))  # FIN
    return b"".join(rec)


def write() -> int:
    n = 0
    seeds: dict[str, list[bytes]] = {
        "wire": _messages(),
        "packets": [b"".join(bytes([0]) + struct.pack("!H", len(f)) + f for f in _frames())],
        "tcp": [_tcp_script()],
        "rules": [p.read_bytes() for p in sorted((REPO / "rules").glob("*.yaml")) if p.stat().st_size < 4096],
    }
    caps = []
    for lt, frames in ((1, _frames()),):
        buf = io.BytesIO()
        tmp = SEEDS / "tmp.pcap"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        write_pcap(tmp, lt, [(1.0 + i, f) for i, f in enumerate(frames)])
        caps.append(tmp.read_bytes())
        tmp.unlink()
        del buf
    seeds["pcap"] = caps
    for target, items in seeds.items():
        d = SEEDS / target
        d.mkdir(parents=True, exist_ok=True)
        for data in items:
            (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
            n += 1
    return n


if __name__ == "__main__":
    print(f"{write()} seeds in {SEEDS}")
