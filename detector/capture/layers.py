"""Frames to DNS events: link layer (Ethernet, Linux cooked, raw IP, loopback,
PPP, 802.11, FDDI, ARCnet, NFLOG, PKTAP, PPI), IPv4/IPv6 (extension headers, fragments),
UDP and TCP, and the common encapsulations (802.1Q/QinQ, PPPoE, GRE and PPTP's
enhanced GRE, ERSPAN, VXLAN, Geneve, Teredo, GTP-U, Broadcom's LI shim, IP-in-IP).

:class:`PacketDecoder` keeps the state that spans packets (IP fragments, TCP
streams) and the counters the replay summary prints (``stats``; the TCP
reassembler adds its ``tcp_*`` losses there, see detector.capture.tcpstream for
its policy). Nothing here raises on bad input: a packet that cannot be decoded
is counted under a reason and skipped. A packet whose IP or UDP length claims
more than the capture kept (a snap length, a lying header) is decoded as far
as it goes (``ip_bad_length``, ``udp_bad_length``), as tshark and Zeek do: the
DNS message keeps what the captured bytes hold, with ``malformed`` giving the
decoder's reason, or ``capture_truncated`` when the bytes there decode whole.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable

from detector.capture.tcpstream import TcpDnsReassembler
from detector.dns import wire
from detector.dns.wire import DnsParseError, decode
from detector.events import DnsEvent

# Whole classic-pcap records to events in C (detector/capture/_cframe.c), when it was
# built and the C DNS decoder is in use (DETECTOR_PURE_PYTHON=1 turns both off).
_cframe = None
if wire._cwire is not None:
    try:
        from detector.capture import _cframe
    except ImportError:  # not built, or built against another _cwire
        _cframe = None

# Link types (https://www.tcpdump.org/linktypes.html)
LT_NULL, LT_ETHERNET, LT_PPP, LT_RAW, LT_RAW_OLD, LT_RAW_OLD2 = 0, 1, 9, 101, 12, 14
LT_PPP_HDLC, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 50, 108, 113, 228, 229, 276
LT_80211, LT_RADIOTAP, LT_PKTAP = 105, 127, 258
LT_FDDI, LT_ARCNET_LINUX, LT_USER2, LT_PPI, LT_NFLOG = 10, 129, 149, 192, 239
SUPPORTED_LINKTYPES = {
    LT_FDDI: "FDDI", LT_ARCNET_LINUX: "ARCnet (Linux)", LT_USER2: "Apple PKTAP (DLT_USER2)",
    LT_PPI: "PPI (per-packet information)", LT_NFLOG: "Linux NFLOG",
    LT_NULL: "BSD loopback", LT_ETHERNET: "Ethernet", LT_PPP: "PPP", LT_RAW: "raw IP",
    LT_RAW_OLD: "raw IP", LT_RAW_OLD2: "raw IP", LT_PPP_HDLC: "PPP in HDLC framing",
    LT_LOOP: "OpenBSD loopback", LT_SLL: "Linux cooked (SLL)", LT_IPV4: "raw IPv4",
    LT_IPV6: "raw IPv6", LT_SLL2: "Linux cooked v2 (SLL2)", LT_80211: "802.11",
    LT_RADIOTAP: "802.11 with radiotap", LT_PKTAP: "Apple PKTAP",
}

DEFAULT_PORTS = frozenset({53, 5353, 5355})

_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_AF6 = socket.AF_INET6
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")

ETH_IP4, ETH_IP6, ETH_VLAN, ETH_QINQ, ETH_TEB = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x6558
ETH_ERSPAN2, ETH_ERSPAN3, ETH_PPP = 0x88BE, 0x22EB, 0x880B
BCM_LI_PORT = 49152  # Broadcom LI shim over UDP
MAX_DEPTH = 4  # nested encapsulations followed


class _Fragments:
    """IPv4/IPv6 fragment reassembly, bounded in datagrams and time."""

    def __init__(self, max_datagrams: int = 4096, timeout: float = 30.0) -> None:
        self.pending: OrderedDict[tuple, list] = OrderedDict()
        self.max = max_datagrams
        self.timeout = timeout
        self.expired = 0

    def add(self, key: tuple, ts: float, offset: int, more: bool, data: bytes) -> bytes | None:
        ent = self.pending.get(key)
        if ent is None:
            ent = [ts, {}, -1]  # first-seen time, {offset: bytes}, total length
            self.pending[key] = ent
            while len(self.pending) > self.max:
                self.pending.popitem(last=False)
                self.expired += 1
        parts = ent[1]
        parts.setdefault(offset, data)
        if not more:
            ent[2] = offset + len(data)
        if ent[2] < 0:
            return None
        have = 0
        out = bytearray()
        for off in sorted(parts):
            if off > have:
                return None  # a hole
            chunk = parts[off]
            if off + len(chunk) > have:
                out += chunk[have - off:]
                have = off + len(chunk)
        if have < ent[2]:
            return None
        del self.pending[key]
        return bytes(out[:ent[2]])

    def expire(self, now: float) -> None:
        while self.pending:
            k, ent = next(iter(self.pending.items()))
            if now - ent[0] <= self.timeout:
                break
            del self.pending[k]
            self.expired += 1


class PacketDecoder:
    """Decode frames into DnsEvents.

    ``on_conn(ts, transport, ip_version, src, sport, dst, dport)`` is called for
    connection starts (TCP SYN) to ``conn_ports`` (DoT 853, HTTPS 443 for DoH)
    and UDP to DoQ 853, so the resolver detector can see encrypted DNS.
    """

    def __init__(self, ports: frozenset[int] | set[int] = DEFAULT_PORTS,
                 on_conn: Callable[..., None] | None = None,
                 conn_ports: frozenset[int] = frozenset({853, 443})) -> None:
        self.ports = frozenset(ports)
        self.on_conn = on_conn
        self.conn_ports = conn_ports
        self.frags = _Fragments()
        self.stats: Counter[str] = Counter()  # skip/error reasons (tcp_*: the reassembler's)
        self.tcp = TcpDnsReassembler(stats=self.stats)
        self.packets = 0
        self.dns_messages = 0
        self.unknown_linktypes: Counter[int] = Counter()
        self._last_expire = 0.0
        self._a6: dict[bytes, str] = {}  # IPv6 address bytes -> text (bounded)

    # --- entry points -----------------------------------------------------------
    def frame(self, ts: float, linktype: int, data: bytes) -> list[DnsEvent]:
        self.packets += 1
        out: list[DnsEvent] = []
        if ts - self._last_expire > 5.0:
            self.frags.expire(ts)
            self._last_expire = ts
            if self.tcp:
                self._tcp_out(self.tcp.expire(ts), out)
        try:
            if linktype == LT_ETHERNET:
                # Fast path: Ethernet, IPv4 without options or fragments, UDP to a DNS port.
                if data[12] == 8 and data[13] == 0 and data[14] == 0x45 and data[23] == 17 \
                        and not (data[20] & 0x3F or data[21]):
                    sport = (data[34] << 8) | data[35]
                    dport = (data[36] << 8) | data[37]
                    if dport in self.ports or sport in self.ports:
                        end = 14 + ((data[16] << 8) | data[17])
                        ulen = (data[38] << 8) | data[39]
                        if 8 <= ulen <= end - 34 and end <= len(data):
                            self._dns(ts, "udp", 4, _ntoa(data[26:30]), sport, _ntoa(data[30:34]),
                                      dport, data[42:34 + ulen], out)
                            return out
                elif data[12] == 0x86 and data[13] == 0xDD and data[20] == 17 and data[14] >> 4 == 6:
                    # Fast path: Ethernet, IPv6 with UDP as the first header, to a DNS port.
                    sport = (data[54] << 8) | data[55]
                    dport = (data[56] << 8) | data[57]
                    if dport in self.ports or sport in self.ports:
                        plen = (data[18] << 8) | data[19]
                        ulen = (data[58] << 8) | data[59]
                        if 8 <= ulen <= plen and 54 + plen <= len(data):
                            a6 = self._a6
                            s6, d6 = data[22:38], data[38:54]
                            src = a6.get(s6) or self._ntop6(s6)
                            dst = a6.get(d6) or self._ntop6(d6)
                            self._dns(ts, "udp", 6, src, sport, dst, dport, data[62:54 + ulen], out)
                            return out
                self._ether(ts, data, 0, out, 0)
            elif linktype in (LT_RAW, LT_RAW_OLD, LT_RAW_OLD2, LT_IPV4, LT_IPV6):
                self._ip(ts, data, 0, out, 0)
            elif linktype == LT_SLL:
                self._ethertype(ts, _H.unpack_from(data, 14)[0], data, 16, out, 0)
            elif linktype == LT_SLL2:
                self._ethertype(ts, _H.unpack_from(data, 0)[0], data, 20, out, 0)
            elif linktype in (LT_NULL, LT_LOOP):
                fam = data[0:4]
                v = struct.unpack("<I" if linktype == LT_NULL and fam[0] else ">I", fam)[0]
                if v == 2:
                    self._ip(ts, data, 4, out, 0)
                elif v in (10, 24, 28, 30):
                    self._ip(ts, data, 4, out, 0)
                else:
                    self.stats["not_ip"] += 1
            elif linktype in (LT_PPP, LT_PPP_HDLC):
                self._ppp(ts, data, 0, out, 0)
            elif linktype == LT_RADIOTAP:
                self._wlan(ts, data, data[2] | (data[3] << 8), out)
            elif linktype == LT_80211:
                self._wlan(ts, data, 0, out)
            elif linktype == LT_PKTAP or linktype == LT_USER2:
                # Apple PKTAP (macOS wrote it as DLT_USER2 before 258 was assigned):
                # header length and the inner link type, little-endian, first
                hlen, inner = struct.unpack_from("<II", data, 0)
                if inner in (LT_PKTAP, LT_USER2, LT_PPI) or hlen < 8 or hlen > len(data):
                    self.stats["truncated_packet"] += 1
                else:
                    return self._inner(ts, inner, data[hlen:], out)
            elif linktype == LT_PPI:
                # PPI: version, flags, header length and the inner link type (little-endian)
                hlen, inner = struct.unpack_from("<HI", data, 2)
                if inner in (LT_PKTAP, LT_USER2, LT_PPI) or hlen < 8 or hlen > len(data):
                    self.stats["truncated_packet"] += 1
                else:
                    return self._inner(ts, inner, data[hlen:], out)
            elif linktype == LT_FDDI:
                # frame control and two addresses (13 bytes; 16 where the capturing
                # system pads the header, as NetBSD and Ultrix did), then 802.2 LLC
                self._llc(ts, data, 16 if data[13] != 0xAA and data[16] == 0xAA else 13, out)
            elif linktype == LT_ARCNET_LINUX:
                self._arcnet(ts, data, out)
            elif linktype == LT_NFLOG:
                self._nflog(ts, data, out)
            else:
                self.unknown_linktypes[linktype] += 1
                self.stats["unknown_linktype"] += 1
        except (struct.error, IndexError, ValueError, OSError):
            self.stats["truncated_packet"] += 1
        return out

    @property
    def can_scan(self) -> bool:
        """:meth:`scan_pcap` is there (the C fast path was built)."""
        return _cframe is not None

    def scan_pcap(self, buf, off: int, size: int, big_endian: bool, resolution: float,
                  linktype: int, limit: int, out: list) -> tuple[int, int]:
        """Decode up to ``limit`` whole classic-pcap records of ``buf[off:size]``, their
        events onto ``out`` in record order, as :meth:`frame` on each would: DNS over
        UDP in C, every other record through :meth:`frame`. Stops before a record not
        whole there (or claiming more than 64 MiB): the reader's to handle. Returns
        (offset after the records, records decoded)."""
        off, k, packets, dns = _cframe.scan(self, buf, off, size, big_endian, resolution, linktype,
                                            limit, self.ports, out, self.stats)
        self.packets += packets
        self.dns_messages += dns
        return off, k

    def _ntop6(self, b: bytes) -> str:
        a6 = self._a6
        if len(a6) >= 65536:
            a6.clear()
        t = a6[b] = _ntop(_AF6, b)
        return t

    def _inner(self, ts: float, linktype: int, data: bytes, out: list) -> list[DnsEvent]:
        self.packets -= 1  # the same packet, seen through an outer header
        out.extend(self.frame(ts, linktype, data))
        return out

    def _wlan(self, ts: float, d: bytes, off: int, out: list) -> None:
        fc = d[off]
        if (fc >> 2) & 3 != 2:  # not a data frame
            self.stats["not_ip"] += 1
            return
        flags = d[off + 1]
        if flags & 0x40:  # protected: encrypted payload
            self.stats["not_ip"] += 1
            return
        hl = 24 + (6 if flags & 3 == 3 else 0) + (2 if fc & 0x80 else 0)  # 4-address, QoS
        p = off + hl
        if d[p:p + 6] == b"\xaa\xaa\x03\x00\x00\x00":
            self._ethertype(ts, (d[p + 6] << 8) | d[p + 7], d, p + 8, out, 0)
        else:
            self.stats["not_ip"] += 1

    def _llc(self, ts: float, d: bytes, off: int, out: list) -> None:
        """802.2 LLC: only SNAP (AA AA 03, an OUI, an EtherType) carries IP here."""
        if d[off] == 0xAA and d[off + 1] == 0xAA and d[off + 2] == 0x03:
            self._ethertype(ts, (d[off + 6] << 8) | d[off + 7], d, off + 8, out, 0)
        else:
            self.stats["not_ip"] += 1

    def _arcnet(self, ts: float, d: bytes, out: list) -> None:
        """Linux ARCnet: source, destination, a 2-byte offset, the protocol ID; the
        RFC 1201 protocols then have a split flag and a sequence number (8 bytes in
        all), the old RFC 1051 ones do not (5), as tcpdump reads it."""
        proto = d[4]
        if proto in (0xF0, 0xF1):  # RFC 1051 IP, ARP
            off = 5
        else:
            off = 8
            if d[5] == 0xFF:  # an exception packet: 4 more bytes (flag, padding, flag)
                off += 4
        if proto in (0xD4, 0xF0, 0xC4):  # IP, old IP, IPv6
            self._ip(ts, d, off, out, 0)
        else:
            self.stats["not_ip"] += 1

    def _nflog(self, ts: float, d: bytes, out: list) -> None:
        """Linux NFLOG: family, version, resource ID, then TLVs (length and type in
        the byte order of the host that captured: little-endian first, big-endian
        if that does not parse), each padded to 4 bytes; NFULA_PAYLOAD (9) holds
        the IP packet."""
        if d[0] not in (2, 10):  # AF_INET, AF_INET6
            self.stats["not_ip"] += 1
            return
        n = len(d)
        for fmt in ("<HH", ">HH"):
            p = 4
            while p + 4 <= n:
                tlen, ttype = struct.unpack_from(fmt, d, p)
                if tlen < 4 or p + tlen > n:
                    break
                if ttype & 0x7FFF == 9:
                    self._ip(ts, d[:p + tlen], p + 4, out, 0)
                    return
                p += (tlen + 3) & ~3
            else:
                self.stats["not_ip"] += 1  # every TLV parsed, no payload
                return
        self.stats["truncated_packet"] += 1

    def flush(self) -> list[DnsEvent]:
        """End of input: emit DNS messages held behind TCP holes (in a stream whose
        ACKs are seen, only up to what its receiver acknowledged)."""
        out: list[DnsEvent] = []
        self._tcp_out(self.tcp.flush_gaps(), out)
        return out

    def _tcp_out(self, held: list, out: list) -> None:
        for (src, sport, dst, dport, ipv), ts, msg in held:
            self._dns(ts, "tcp", ipv, src, sport, dst, dport, msg, out)

    # --- link and network layers ---------------------------------------------------
    def _ether(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        et = (d[off + 12] << 8) | d[off + 13]
        self._ethertype(ts, et, d, off + 14, out, depth)

    def _ethertype(self, ts: float, et: int, d: bytes, off: int, out: list, depth: int) -> None:
        while et in (ETH_VLAN, ETH_QINQ, 0x9100):
            et = (d[off + 2] << 8) | d[off + 3]
            off += 4
        if et == ETH_IP4 or et == ETH_IP6:
            self._ip(ts, d, off, out, depth)
        elif et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
            self._ppp(ts, d, off + 6, out, depth)
        elif et == ETH_PPP:  # PPP in GRE (PPTP)
            self._ppp(ts, d, off, out, depth)
        elif et == ETH_TEB and depth < MAX_DEPTH:
            self._ether(ts, d, off, out, depth + 1)
        else:
            self.stats["not_ip"] += 1

    def _ppp(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        """PPP: the address and control bytes (FF 03) when not compressed away, then
        the protocol, one byte when compressed (odd first byte, RFC 1661)."""
        if d[off] == 0xFF and d[off + 1] == 0x03:
            off += 2
        if d[off] & 1:
            proto, off = d[off], off + 1
        else:
            proto, off = (d[off] << 8) | d[off + 1], off + 2
        if proto in (0x21, 0x57):  # IPv4, IPv6
            self._ip(ts, d, off, out, depth)
        else:
            self.stats["not_ip"] += 1

    def _ip(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        ver = d[off] >> 4
        if ver == 4:
            ihl = (d[off] & 0x0F) * 4
            total = (d[off + 2] << 8) | d[off + 3]
            end = off + total
            cut = 0  # bytes of this packet the capture did not keep (snap length)
            if total < ihl or end > len(d):
                self.stats["ip_bad_length"] += 1
                if total >= ihl:
                    cut = end - len(d)
                end = len(d)
            frag = (d[off + 6] << 8) | d[off + 7]
            proto = d[off + 9]
            src = _ntoa(d[off + 12:off + 16])
            dst = _ntoa(d[off + 16:off + 20])
            if frag & 0x3FFF:  # more fragments, or a non-zero offset
                whole = self.frags.add((4, src, dst, (d[off + 4] << 8) | d[off + 5], proto), ts,
                                       (frag & 0x1FFF) * 8, bool(frag & 0x2000), d[off + ihl:end])
                if whole is None:
                    self.stats["ip_fragment_held"] += 1
                    return
                self.stats["ip_reassembled"] += 1
                self._l4(ts, 4, proto, src, dst, whole, 0, len(whole), out, depth)
                return
            self._l4(ts, 4, proto, src, dst, d, off + ihl, end, out, depth, cut)
        elif ver == 6:
            plen = (d[off + 4] << 8) | d[off + 5]
            nh = d[off + 6]
            src = _ntop(_AF6, d[off + 8:off + 24])
            dst = _ntop(_AF6, d[off + 24:off + 40])
            p = off + 40
            end = p + plen
            cut = 0
            if end > len(d) or plen == 0:
                if plen:
                    self.stats["ip_bad_length"] += 1
                    cut = end - len(d)
                end = len(d)
            for _ in range(8):
                if nh in (0, 43, 60):  # hop-by-hop, routing, destination options
                    nh, p = d[p], p + (d[p + 1] + 1) * 8
                elif nh == 51:  # AH
                    nh, p = d[p], p + (d[p + 1] + 2) * 4
                elif nh == 44:  # fragment
                    fo = (d[p + 2] << 8) | d[p + 3]
                    ident = struct.unpack_from("!I", d, p + 4)[0]
                    nxt = d[p]
                    whole = self.frags.add((6, src, dst, ident, nxt), ts, fo & 0xFFF8,
                                           bool(fo & 1), d[p + 8:end])
                    if whole is None:
                        self.stats["ip_fragment_held"] += 1
                        return
                    self.stats["ip_reassembled"] += 1
                    self._l4(ts, 6, nxt, src, dst, whole, 0, len(whole), out, depth)
                    return
                else:
                    break
            self._l4(ts, 6, nh, src, dst, d, p, end, out, depth, cut)
        else:
            self.stats["not_ip"] += 1

    # --- transport -----------------------------------------------------------------
    def _l4(self, ts: float, ipv: int, proto: int, src: str, dst: str, d: bytes, off: int,
            end: int, out: list, depth: int, cut: int = 0) -> None:
        if proto == 17:
            sport = (d[off] << 8) | d[off + 1]
            dport = (d[off + 2] << 8) | d[off + 3]
            ulen = (d[off + 4] << 8) | d[off + 5]
            if 8 <= ulen <= end - off:
                pend, short = off + ulen, False
            else:  # the UDP length claims more than there is (or is no length): take what is
                pend, short = end, ulen > end - off or cut > 0
                if ulen > end - off:
                    self.stats["udp_bad_length"] += 1
            ports = self.ports
            if dport in ports or sport in ports:
                self._dns(ts, "udp", ipv, src, sport, dst, dport, d[off + 8:pend], out, short)
            elif depth < MAX_DEPTH and (dport in _UDP_ENCAP or sport == 3544 or sport == 2152
                                        or sport == BCM_LI_PORT):
                self._udp_encap(ts, sport, dport, d, off + 8, pend, out, depth + 1)
            elif dport == 853 and self.on_conn is not None:
                self.on_conn(ts, "udp", ipv, src, sport, dst, dport)
            else:
                self.stats["not_dns"] += 1
        elif proto == 6:
            sport, dport, seq, ack, doff, flags = _TCP.unpack_from(d, off)
            ports = self.ports
            if dport in ports or sport in ports:
                payload = d[off + (doff >> 4) * 4:end]
                tcp = self.tcp
                if flags & 0x10 and tcp:  # what the other side's receiver has: holes to give up
                    for m in tcp.ack((dst, dport, src, sport, ipv), ack, ts):
                        self._dns(ts, "tcp", ipv, dst, dport, src, sport, m, out)
                msgs = tcp.segment((src, sport, dst, dport, ipv), seq, flags, payload, ts, cut)
                last = len(msgs) - 1 if tcp.cut_tail else -1  # the message the cut ends
                for i, m in enumerate(msgs):
                    self._dns(ts, "tcp", ipv, src, sport, dst, dport, m, out, i == last)
            elif flags & 0x12 == 0x02 and dport in self.conn_ports and self.on_conn is not None:
                self.on_conn(ts, "tcp", ipv, src, sport, dst, dport)
            else:
                self.stats["not_dns"] += 1
        elif depth < MAX_DEPTH and proto in (4, 41):  # IP in IP
            self._ip(ts, d[:end], off, out, depth + 1)
        elif depth < MAX_DEPTH and proto == 47:
            self._gre(ts, d[:end], off, out, depth + 1)
        else:
            self.stats["not_dns"] += 1

    def _udp_encap(self, ts: float, sport: int, dport: int, d: bytes, off: int, end: int,
                   out: list, depth: int) -> None:
        d = d[:end]
        if dport == 2152 or sport == 2152:  # GTP-U
            self._gtpu(ts, d, off, out, depth)
        elif dport == BCM_LI_PORT or sport == BCM_LI_PORT:
            self._bcm_li(ts, d, off, out, depth)
        elif dport == 4789 or dport == 8472:  # VXLAN
            self._ether(ts, d, off + 8, out, depth)
        elif dport == 6081:  # Geneve
            optlen = (d[off] & 0x3F) * 4
            self._ethertype(ts, _H.unpack_from(d, off + 2)[0], d, off + 8 + optlen, out, depth)
        elif dport == 4754:  # GRE over UDP
            self._gre(ts, d, off, out, depth)
        else:  # Teredo (3544): optional auth and origin indicators, then IPv6
            if d[off] == 0 and d[off + 1] == 1:
                off += 4 + d[off + 2] + d[off + 3] + 9
            if d[off] == 0 and d[off + 1] == 0:
                off += 8
            if d[off] >> 4 == 6:
                self._ip(ts, d, off, out, depth)
            else:
                self.stats["not_dns"] += 1

    def _gtpu(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        """GTP-U (3GPP TS 29.281), the mobile core's user plane: a G-PDU (type 255)
        carries the subscriber's IP packet after the 8-byte header, 4 more bytes
        when a sequence number, N-PDU number or extension is flagged, then the
        extension headers (length in 4-byte units, next type in the last byte)."""
        fl = d[off]
        if fl >> 5 != 1 or not fl & 0x10 or d[off + 1] != 0xFF:  # not GTPv1, or not a G-PDU
            self.stats["not_dns"] += 1
            return
        p = off + 8
        if fl & 0x07:
            nxt = d[p + 3]
            p += 4
            while nxt:
                ln = d[p] * 4
                if not ln:
                    self.stats["truncated_packet"] += 1
                    return
                nxt = d[p + ln - 1]
                p += ln
        if d[p] >> 4 in (4, 6):
            self._ip(ts, d, p, out, depth)
        else:
            self.stats["not_dns"] += 1

    def _bcm_li(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        """Broadcom's lawful-intercept shim (UDP 49152, the SDK default, as tcpdump
        reads it): 4 bytes, direction (3 bits), packet type (4 bits: 4 undecided,
        5 IPv4, 6 IPv6, 7 Ethernet), subtype and LI ID; the copied packet follows."""
        shim = struct.unpack_from("!I", d, off)[0]
        direction, kind = shim >> 29, (shim >> 25) & 0xF
        p = off + 4
        if direction not in (1, 2, 3) or kind not in (4, 5, 6, 7):
            self.stats["not_dns"] += 1
        elif kind == 7:
            self._ether(ts, d, p, out, depth)
        elif kind == 4 and d[p] >> 4 not in (4, 6):
            self.stats["not_dns"] += 1
        else:
            self._ip(ts, d, p, out, depth)

    def _gre(self, ts: float, d: bytes, off: int, out: list, depth: int) -> None:
        """GRE (RFC 2784/2890) and enhanced GRE version 1 (PPTP, RFC 2637: a key,
        maybe a sequence number and an acknowledgement number, then PPP)."""
        fl = d[off]
        et = (d[off + 2] << 8) | d[off + 3]
        p = off + 4 + (4 if fl & 0x80 else 0) + (4 if fl & 0x20 else 0) + (4 if fl & 0x10 else 0)
        if d[off + 1] & 7 == 1 and d[off + 1] & 0x80:  # version 1 with an acknowledgement
            p += 4
        if et == ETH_ERSPAN2:
            self._ether(ts, d, p + 8, out, depth)
        elif et == ETH_ERSPAN3:
            self._ether(ts, d, p + 12 + (8 if d[p + 11] & 1 else 0), out, depth)
        else:
            self._ethertype(ts, et, d, p, out, depth)

    def _dns(self, ts: float, transport: str, ipv: int, src: str, sport: int, dst: str,
             dport: int, payload: bytes, out: list, short: bool = False) -> None:
        """Decode one message; ``short``: the capture kept only its first bytes (an IP
        or UDP length beyond the captured bytes, a TCP segment cut): it is decoded as
        far as it goes and marked ``capture_truncated`` unless the decoder said why."""
        try:
            ev = decode(payload, ts, transport, ipv, src, sport, dst, dport)
        except DnsParseError as e:
            self.stats["dns_" + e.kind] += 1
            return
        if short and not ev.malformed:
            ev.malformed = "capture_truncated"
        self.dns_messages += 1
        if ev.malformed:
            self.stats["dns_" + ev.malformed] += 1
        out.append(ev)


_UDP_ENCAP = frozenset({4789, 8472, 6081, 4754, 3544, 2152, BCM_LI_PORT})
