"""tshark as the decoding oracle: compare our DNS decoding with tshark's, per frame."""

from __future__ import annotations

import subprocess
from collections import Counter

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader

FIELDS = ["frame.number", "dns.id", "dns.flags.response", "dns.flags.rcode", "dns.qry.name",
          "dns.qry.type", "dns.count.answers", "dns.count.queries", "dns.flags.opcode",
          "icmp.type", "icmpv6.type", "udp.port", "tcp.port", "http2.streamid", "http.request"]
DEFAULT_PORTS = frozenset({53, 5353, 5355})


def norm_name(name: str | bytes) -> bytes:
    """Names as bytes: tshark prints raw bytes and <Root>, <Name too long>...;
    we print dig-style escapes. Both map to the label bytes joined by dots."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    if name.startswith(b"<") and name.endswith(b">"):
        return b"." if name == b"<Root>" else b""
    if True:
        out = bytearray()
        i = 0
        b = name
        while i < len(b):
            c = b[i]
            if c == 0x5C and i + 1 < len(b):  # backslash escape
                if b[i + 1:i + 4].isdigit() and i + 3 < len(b) + 1:
                    out.append(int(b[i + 1:i + 4]))
                    i += 4
                    continue
                out.append(b[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        # tshark shows bytes that are not UTF-8 as U+FFFD (one per byte or per
        # sequence); compare the ASCII bytes only.
        return bytes(c for c in out if c < 0x80)


def tshark_messages(path: str) -> tuple[dict[int, list[tuple]], frozenset[int]]:
    """frame number -> [(id, qr, rcode, qname, qtype, ancount)] as tshark decodes them."""
    cmd = ["tshark", "-n", "-r", path, "-Y", "dns", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=\x1f"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, timeout=120).stdout
    res: dict[int, list[tuple]] = {}
    ports: set[int] = set()
    for bline in out.splitlines():
        bcols = bline.split(b"\t")
        cols = [c.decode("ascii", "replace") for c in bcols]
        if len(cols) < len(FIELDS) or not cols[1]:
            continue
        if cols[9] or cols[10] or cols[13] or cols[14]:
            continue  # DNS quoted inside ICMP errors, or carried in HTTP (DoH): not ours
        for c in (cols[11], cols[12]):
            ports.update(int(x) for x in c.split("\x1f") if x)
        ids = cols[1].split("\x1f")
        qrs = cols[2].split("\x1f")
        rcs = cols[3].split("\x1f")
        names = bcols[4].split(b"\x1f")
        types = cols[5].split("\x1f")
        ans = cols[6].split("\x1f")
        qds = cols[7].split("\x1f")
        ops = cols[8].split("\x1f")
        msgs = []
        qi = 0  # questions are flattened across messages: walk them by qdcount
        for i, mid in enumerate(ids):
            qd = int(qds[i]) if i < len(qds) and qds[i] else 0
            name = norm_name(names[qi]) if qd and qi < len(names) else b""
            qtype = int(types[qi]) if qd and qi < len(types) and types[qi] else 0
            qi += qd
            qr = qrs[i] in ("1", "True")
            op = int(ops[i]) if i < len(ops) and ops[i] else 0
            an_i = int(ans[i]) if i < len(ans) and ans[i] else 0
            if op not in (0, 4):  # IQUERY, UPDATE...: tshark names sections differently
                name, qtype, an_i = b"", 0, 0
            rc = int(rcs[i]) if qr and i < len(rcs) and rcs[i] else 0
            msgs.append((int(mid, 16), qr, rc, name, qtype, an_i))
        res[int(cols[0])] = msgs
    return res, frozenset(ports)


def _key(e) -> tuple:
    name = norm_name(e.qname) if e.questions else b""
    qtype, an = e.qtype, e.ancount
    if e.opcode not in (0, 4):
        name, qtype, an = b"", 0, 0
    return (e.id, e.qr, (e.flags & 0xF) if e.qr else 0, name, qtype, an)


def our_messages(path: str, ports=frozenset({53, 5353, 5355})) -> dict[int, list[tuple]]:
    res: dict[int, list[tuple]] = {}
    dec = PacketDecoder(ports)
    reader = PcapReader(path)
    for n, (ts, lt, data) in enumerate(reader, 1):
        evs = dec.frame(ts, lt, data)
        if evs:
            res[n] = [_key(e) for e in evs]
    reader.close()
    return res


def compare(path: str) -> tuple[int, int, list]:
    """Return (tshark messages, agreeing messages, [mismatch details])."""
    ref, ports = tshark_messages(path)
    # Port selection is configuration, not decoding: give ours the ports on
    # which tshark found DNS (it also uses heuristics), then compare decoding.
    ours = our_messages(path, DEFAULT_PORTS | {p for p in ports if p in _DNS_LIKE_PORTS(ports)})
    total = agree = 0
    bad = []
    for frame, msgs in ref.items():
        mine = Counter(ours.get(frame, []))
        for m in msgs:
            total += 1
            if mine[m] > 0:
                mine[m] -= 1
                agree += 1
            else:
                bad.append((frame, m, ours.get(frame)))
    return total, agree, bad


def _DNS_LIKE_PORTS(ports: frozenset[int]) -> frozenset[int]:
    # ephemeral client ports are on the other side of the flow; keep service ports
    from detector.capture.layers import _UDP_ENCAP

    return frozenset(p for p in ports if p < 10000 and p not in _UDP_ENCAP)
