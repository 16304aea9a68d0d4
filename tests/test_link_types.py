"""Link types beyond Ethernet: FDDI on a real capture; ARCnet (Linux), Apple
PKTAP written as DLT_USER2, Linux NFLOG and PPI built in tmp_path from the IP
packets of real shared captures (the shared data has none of those). tshark is
the oracle: it must decode the same messages from the same file, and ours must
equal what the plain Ethernet capture gives."""

from __future__ import annotations

import struct
import subprocess

import pytest

from detector.capture.layers import SUPPORTED_LINKTYPES, PacketDecoder
from detector.capture.pcap import PcapReader
from detector.capture.pcapwrite import write_pcap
from oracle import compare


def events(path) -> list[tuple]:
    dec = PacketDecoder()
    out = []
    for ts, lt, fr in PcapReader(str(path)):
        out += dec.frame(ts, lt, fr)
    out += dec.flush()
    assert dec.stats["truncated_packet"] == 0 and dec.stats["unknown_linktype"] == 0
    return [(e.ts, e.transport, e.ip_version, e.src_ip, e.src_port, e.dst_ip, e.dst_port, e.id,
             e.qr, e.qname, e.qtype, len(e.answers), e.malformed) for e in out]


def tshark_ids(path) -> list[str]:
    r = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", "dns", "-T", "fields", "-e", "dns.id"],
                       capture_output=True, text=True, check=True)
    return r.stdout.split()


def ip_packets(path) -> list[tuple[float, bytes]]:
    """The IP packets of an Ethernet capture (its frames without the Ethernet header)."""
    out = []
    for ts, lt, fr in PcapReader(str(path)):
        assert lt == 1
        if fr[12:14] in (b"\x08\x00", b"\x86\xdd"):  # not ARP
            out.append((ts, bytes(fr[14:])))
    return out


def arcnet(ip: bytes) -> bytes:
    # source, destination, offset, RFC 1201 protocol ID (IP 0xD4, IPv6 0xC4), split flag, sequence
    return bytes([0x01, 0x02, 0, 0, 0xD4 if ip[0] >> 4 == 4 else 0xC4, 0, 0x12, 0x34]) + ip


def nflog(ip: bytes) -> bytes:
    fam = 2 if ip[0] >> 4 == 4 else 10
    # NFULA_PACKET_HDR: hardware protocol (network byte order), hook, padding
    hdr = struct.pack("<HH", 8, 1) + struct.pack(">HBB", 0x0800 if fam == 2 else 0x86DD, 1, 0)
    prefix = b"dns\x00"
    tlv_prefix = struct.pack("<HH", 4 + len(prefix), 10) + prefix  # NFULA_PREFIX
    payload = struct.pack("<HH", 4 + len(ip), 9) + ip  # NFULA_PAYLOAD
    payload += b"\x00" * (-len(payload) % 4)
    return bytes([fam, 0]) + struct.pack(">H", 0) + hdr + tlv_prefix + payload


def ppi(eth: bytes) -> bytes:
    field = struct.pack("<HH", 2, 20) + b"\x00" * 20  # an 802.11-common field, to be skipped
    return struct.pack("<BBHI", 0, 0, 8 + len(field), 1) + field + eth


@pytest.mark.parametrize("rel,least", [("pcap/dnscap_tests/dns.pcap", 80),
                                       ("pcap/dnscap_tests/dns6.pcap", 2)], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("linktype,wrap", [(129, arcnet), (239, nflog), (192, None)],
                         ids=["arcnet_linux", "nflog", "ppi"])
def test_link_types_give_what_ethernet_gives_and_what_tshark_decodes(data, tmp_path, rel, least,
                                                                      linktype, wrap):
    src = data / rel
    if wrap is None:  # PPI carries the Ethernet frame itself
        frames = [(ts, ppi(bytes(fr))) for ts, _, fr in PcapReader(str(src))]
    else:
        frames = [(ts, wrap(ip)) for ts, ip in ip_packets(src)]
    path = tmp_path / f"lt{linktype}.pcap"
    write_pcap(path, linktype, frames)
    want = events(src)
    assert len(want) >= least
    assert events(path) == want
    assert tshark_ids(path) == tshark_ids(src)
    total, agree, bad = compare(str(path))
    assert total == agree >= least, bad
    assert linktype in SUPPORTED_LINKTYPES


def test_fddi_real_capture_agrees_with_tshark(data):
    """zeek's dns-inverse-query.pcap is FDDI (link type 10): an IQUERY and its answer."""
    path = data / "pcap/zeek_traces/dns-inverse-query.pcap"
    assert PcapReader(str(path)).linktypes == [10]
    evs = events(path)
    assert [(e[7], e[8]) for e in evs] == [(0x87EE, False), (0x87EE, True)]
    assert tshark_ids(path) == ["0x87ee", "0x87ee"]
    total, agree, _ = compare(str(path))
    assert total == agree == 2


def test_dlt_user2_is_read_as_apple_pktap(data, tmp_path):
    """macOS wrote PKTAP as DLT_USER2 (149) before 258: tcpdump's PKTAP capture with
    that link type gives the same message, as tshark reads it."""
    src = data / "pcap/tcpdump_tests/LINKTYPE_PKTAP.pcap"
    raw = src.read_bytes()
    path = tmp_path / "user2.pcap"
    path.write_bytes(raw[:20] + struct.pack("<I", 149) + raw[24:])
    want = events(src)
    assert [(e[7], e[9]) for e in want] == [(0x4301, "in.m.yahoo.com")]
    assert events(path) == want
    assert tshark_ids(path) == tshark_ids(src) == ["0x4301"]


# --- encapsulations: the IP packets of a real capture, tunnelled --------------------

def outer(payload: bytes, proto: int, sport: int = 0, dport: int = 0) -> bytes:
    """An Ethernet + IPv4 frame (UDP when ports are given) around a tunnelled packet."""
    from detector.capture.pcapwrite import ETH4, ip4, udp

    if proto == 17:
        payload = udp(sport, dport, payload)
    return ETH4 + ip4("192.0.2.1", "192.0.2.2", proto, payload)


def pptp(ip: bytes, i: int) -> bytes:
    # enhanced GRE (version 1): key (payload length, call ID), sequence and, every other
    # packet, an acknowledgement; PPP with and without address/control and compression
    ack = i % 2 == 0
    ppp = (b"\xff\x03\x00\x21" if ip[0] >> 4 == 4 else b"\xff\x03\x00\x57") if ack else \
        (b"\x21" if ip[0] >> 4 == 4 else b"\x57")
    gre = struct.pack("!BBHHHI", 0x30, 0x81 if ack else 0x01, 0x880B, len(ppp) + len(ip), 7, i)
    if ack:
        gre += struct.pack("!I", i)
    return outer(gre + ppp + ip, 47)


def gtpu(ip: bytes, i: int) -> bytes:
    if i % 2:  # plain G-PDU
        hdr = struct.pack("!BBHI", 0x30, 0xFF, len(ip), 0x1234)
    else:  # with a sequence number and a PDU session container extension (5G)
        ext = bytes([1, 0x00, 0x09, 0])  # length 1 (4 bytes), QFI 9, no next extension
        hdr = struct.pack("!BBHIHBB", 0x36, 0xFF, 4 + len(ext) + len(ip), 0x1234, i, 0, 0x85) + ext
    return outer(hdr + ip, 17, 2152, 2152)


def bcm_li(frame: bytes, i: int) -> bytes:
    # direction ingress (3); packet type IPv4/IPv6 (5/6), or Ethernet (7) every third packet
    ip = frame[14:]
    kind = 7 if i % 3 == 0 else (5 if ip[0] >> 4 == 4 else 6)
    shim = struct.pack("!I", (3 << 29) | (kind << 25) | (3 << 22) | 42)
    return outer(shim + (frame if kind == 7 else ip), 17, 40000, 49152)


@pytest.mark.parametrize("rel,least", [("pcap/dnscap_tests/dns.pcap", 80),
                                       ("pcap/dnscap_tests/dns6.pcap", 2)], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("wrap", [pptp, gtpu], ids=["pptp_gre_v1", "gtp_u"])
def test_tunnels_give_what_the_plain_capture_gives_and_what_tshark_decodes(data, tmp_path, rel,
                                                                             least, wrap):
    src = data / rel
    path = tmp_path / "tunnel.pcap"
    write_pcap(path, 1, [(ts, wrap(ip, i)) for i, (ts, ip) in enumerate(ip_packets(src))])
    want = events(src)
    assert len(want) >= least
    assert events(path) == want
    assert tshark_ids(path) == tshark_ids(src)
    total, agree, bad = compare(str(path))
    assert total == agree >= least, bad


def test_broadcom_li_shim_gives_the_intercepted_packets(data, tmp_path):
    """Neither tshark 4.0 nor tcpdump 4.99 here reads Broadcom's LI shim (tcpdump's
    print-bcm-li.c, UDP 49152, is newer): the oracle is the plain capture. A shim
    with a direction or packet type outside the defined values is not followed."""
    src = data / "pcap/dnscap_tests/dns.pcap"
    frames = [(ts, bytes(fr)) for ts, _, fr in PcapReader(str(src)) if fr[12:14] == b"\x08\x00"]
    path = tmp_path / "bcmli.pcap"
    write_pcap(path, 1, [(ts, bcm_li(fr, i)) for i, (ts, fr) in enumerate(frames)])
    want = events(src)
    assert len(want) >= 80
    assert events(path) == want
    bad = [(ts, fr[:42] + bytes([0]) + fr[43:]) for ts, fr in
           ((ts, bcm_li(fr, 1)) for ts, fr in frames)]  # direction 0: not a shim
    write_pcap(path, 1, bad)
    assert events(path) == []
