"""A lean DNS message decoder (RFC 1035, 6891) that builds a DnsEvent directly.

Why not dnslib on the hot path: dnslib builds a full object graph per message
(about 40 µs); replay needs ~10 µs per packet all in. This decoder reads the
header, the questions and the answer section, skims authority, and reads EDNS
from the additional section. It is strict about what would be unsafe (pointer
loops, names over 255 bytes on the wire, reading past the end) and lenient
about the rest. Nothing is cached across messages: a name decodes from its own
message's bytes only (a name cache keyed by a prefix of the bytes let one
packet's compression pointer change how a later packet decoded).

Errors in the header or question raise :class:`DnsParseError`; an error later
in the message keeps what was decoded and records ``event.malformed = kind``,
which the pipeline counts. Names are returned as presentation text: bytes
outside printable ASCII are escaped as ``\\DDD`` and a dot inside a label as
``\\.``, as dig does, so output never carries raw control or non-UTF-8 bytes.
"""

from __future__ import annotations

import os
import socket
import struct

from detector.events import Answer, DnsEvent, Edns, Question

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QT = struct.Struct("!HH")
_H = struct.Struct("!H")
_inet_ntop = socket.inet_ntop
_ntoa = socket.inet_ntoa
_AF6 = socket.AF_INET6
_AF4 = socket.AF_INET
_Z = b"\0"

# Characters that need no escaping in a label: letters, digits, and the
# printable punctuation other than '.', '\\', '"', ';', '(', ')', '@', '$', ' '.
_SAFE = bytes(
    c for c in range(0x21, 0x7F) if chr(c) not in '.\\"();@$'
)

MAX_HOPS = 64  # compression pointers followed for one name
MAX_NAME = 255  # bytes of a name on the wire, labels, length bytes and the root (RFC 1035 2.3.4)


class DnsParseError(ValueError):
    """A DNS message could not be decoded. ``kind`` is a short, countable reason."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def _escape(label: bytes) -> str:
    out = []
    for c in label:
        if c in _SAFE_SET:
            out.append(chr(c))
        elif c in (0x2E, 0x5C, 0x22, 0x28, 0x29, 0x3B, 0x40, 0x24):
            out.append("\\" + chr(c))
        else:
            out.append("\\%03d" % c)
    return "".join(out)


_SAFE_SET = frozenset(_SAFE)


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """Decode the name at ``off``; return (name, offset after the name in place)."""
    name, end, _ = read_name_hops(buf, off)
    return name, end


def read_name_hops(buf: bytes, off: int) -> tuple[str, int, int]:
    """As read_name, and the compression pointers followed."""
    labels: list[str] = []
    end = -1  # where parsing continues after the name (set at first pointer)
    hops = 0
    total = 0
    n = len(buf)
    while True:
        if off >= n:
            raise DnsParseError("truncated_name")
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        t = ln & 0xC0
        if t == 0xC0:
            if off + 1 >= n:
                raise DnsParseError("truncated_name")
            ptr = ((ln & 0x3F) << 8) | buf[off + 1]
            if end < 0:
                end = off + 2
            hops += 1
            if hops > MAX_HOPS:
                raise DnsParseError("compression_loop")
            if ptr >= n:
                raise DnsParseError("bad_pointer", f"pointer to {ptr} past end {n}")
            off = ptr
            continue
        if t:
            raise DnsParseError("bad_label", f"label type 0x{t:02x} at offset {off}")
        off += 1
        lab = buf[off:off + ln]
        if len(lab) < ln:
            raise DnsParseError("truncated_name")
        total += ln + 1
        if total >= MAX_NAME:  # with the root byte, over 255
            raise DnsParseError("name_too_long")
        if lab.translate(None, _SAFE):
            labels.append(_escape(lab))
        else:
            labels.append(lab.decode("ascii"))
        off += ln
    return (".".join(labels) if labels else "."), (end if end >= 0 else off), hops


def skip_name(buf: bytes, off: int) -> int:
    """Offset just after the name at ``off`` without decoding it."""
    n = len(buf)
    while True:
        if off >= n:
            raise DnsParseError("truncated_name")
        ln = buf[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            return off + 2
        if ln & 0xC0:
            raise DnsParseError("bad_label")
        off += ln + 1


def _txt(rd: bytes) -> str:
    parts = []
    i, n = 0, len(rd)
    while i < n:
        ln = rd[i]
        s = rd[i + 1:i + 1 + ln]
        parts.append(s.decode("ascii") if not s.translate(None, _SAFE_TXT) else _escape_txt(s))
        i += 1 + ln
    return " ".join(parts)


_SAFE_TXT = bytes(c for c in range(0x20, 0x7F) if c not in (0x5C, 0x22))
_SAFE_TXT_SET = frozenset(_SAFE_TXT)


def _escape_txt(s: bytes) -> str:
    return "".join(chr(c) if c in _SAFE_TXT_SET else ("\\" + chr(c) if c in (0x5C, 0x22) else "\\%03d" % c)
                   for c in s)


def _rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> str:
    if rtype == 1 and rdlen == 4:
        return _inet_ntop(_AF4, buf[off:off + 4])
    if rtype == 28 and rdlen == 16:
        return _inet_ntop(_AF6, buf[off:off + 16])
    if rtype in (5, 2, 12, 39):  # CNAME NS PTR DNAME
        return read_name(buf, off)[0]
    if rtype == 15 and rdlen >= 3:  # MX
        return f"{_H.unpack_from(buf, off)[0]} {read_name(buf, off + 2)[0]}"
    if rtype == 16:  # TXT
        return _txt(buf[off:off + rdlen])
    if rtype == 33 and rdlen >= 7:  # SRV
        pr, w, port = struct.unpack_from("!HHH", buf, off)
        return f"{pr} {w} {port} {read_name(buf, off + 6)[0]}"
    if rtype == 6:  # SOA
        m, o = read_name(buf, off)
        r, o = read_name(buf, o)
        if o + 20 <= len(buf):
            serial, refresh, retry, expire, minimum = struct.unpack_from("!IIIII", buf, o)
            return f"{m} {r} {serial} {refresh} {retry} {expire} {minimum}"
        return f"{m} {r}"
    return buf[off:off + min(rdlen, 512)].hex()


def _edns(buf: bytes, off: int, rdlen: int, cls: int, ttl: int) -> tuple[Edns, int]:
    ext_rcode = ttl >> 24
    version = (ttl >> 16) & 0xFF
    do = bool(ttl & 0x8000)
    ecs = None
    end = off + rdlen
    while off + 4 <= end:
        code, ln = struct.unpack_from("!HH", buf, off)
        off += 4
        if code == 8 and ln >= 4 and off + ln <= end:  # client subnet
            fam, src_pfx = struct.unpack_from("!HB", buf, off)
            addr = buf[off + 4:off + ln]
            try:
                if fam == 1:
                    ecs = _inet_ntop(_AF4, addr.ljust(4, _Z)[:4]) + f"/{src_pfx}"
                elif fam == 2:
                    ecs = _inet_ntop(_AF6, addr.ljust(16, _Z)[:16]) + f"/{src_pfx}"
            except ValueError:
                pass
        off += ln
    return Edns(cls, do, version, ecs), ext_rcode


def decode(
    buf: bytes,
    ts: float,
    transport: str,
    ip_version: int,
    src_ip: str,
    src_port: int,
    dst_ip: str,
    dst_port: int,
    max_answers: int = 64,
) -> DnsEvent:
    """Decode one DNS message (no TCP length prefix) into a DnsEvent."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    n = len(buf)
    if n < 12:
        raise DnsParseError("short_header", f"{n} bytes")
    mid, flags, qd, an, ns, ar = _HDR.unpack_from(buf, 0)
    off = 12
    questions: list[Question] = []
    # names decoded in this message, by offset (pointer targets), with the pointers
    # their decoding followed: a pointer to one costs those hops too, as in C
    local: dict[int, tuple[str, int]] = {}
    ev = DnsEvent(ts=ts, transport=transport, ip_version=ip_version, src_ip=src_ip, src_port=src_port,
                  dst_ip=dst_ip, dst_port=dst_port, id=mid, flags=flags, rcode=flags & 0xF,
                  questions=questions, answers=[], ancount=an, nscount=ns, arcount=ar, size=n)
    try:
        for _ in range(qd):
            start = off
            name, off, hops = read_name_hops(buf, off)
            local[start] = (name, hops)
            if off + 4 > n:
                raise DnsParseError("truncated_question")
            qt, qc = _QT.unpack_from(buf, off)
            off += 4
            questions.append(Question(name, qt, qc))
    except DnsParseError as e:
        # Keep the header and the questions read so far: the message is still
        # evidence (junk requests and broken names are what attackers send).
        ev.malformed = e.kind
        return ev
    if not (an or ns or ar):
        return ev
    try:
        answers = ev.answers
        for i in range(an):
            c = buf[off]
            if c >= 0xC0:  # the usual case: a pointer to the question name
                known = local.get(((c & 0x3F) << 8) | buf[off + 1])
                if known is None or known[1] >= MAX_HOPS:
                    name, off = read_name(buf, off)
                else:
                    name = known[0]
                    off += 2
            else:
                name, off = read_name(buf, off)
            if off + 10 > n:
                raise DnsParseError("truncated_record")
            rtype, cls, ttl, rdlen = _RR.unpack_from(buf, off)
            off += 10
            end = off + rdlen
            if end > n:
                raise DnsParseError("truncated_record")
            if i < max_answers:
                if rtype == 1 and rdlen == 4:
                    data = _ntoa(buf[off:end])
                elif rtype == 28 and rdlen == 16:
                    data = _inet_ntop(_AF6, buf[off:end])
                else:
                    data = _rdata(buf, rtype, off, rdlen)
                answers.append(Answer(name, rtype, ttl, data, rdlen))
            off = end
        for _ in range(ns):
            off = skip_name(buf, off)
            if off + 10 > n:
                raise DnsParseError("truncated_record")
            off += 10 + _RR.unpack_from(buf, off)[3]
        for _ in range(ar):
            off = skip_name(buf, off)
            if off + 10 > n:
                raise DnsParseError("truncated_record")
            rtype, cls, ttl, rdlen = _RR.unpack_from(buf, off)
            off += 10
            if rtype == 41 and ev.edns is None:
                ev.edns, ext = _edns(buf, off, min(rdlen, n - off), cls, ttl)
                ev.rcode |= ext << 4
            off += rdlen
        if off > n:
            raise DnsParseError("truncated_record")
    except DnsParseError as e:
        ev.malformed = e.kind
    except IndexError:
        ev.malformed = "truncated_record"
    except (struct.error, ValueError):
        ev.malformed = "bad_rdata"
    return ev


# The C twin of decode() (detector/dns/_cwire.c), when it was built: same output,
# about 4x faster. DETECTOR_PURE_PYTHON=1 forces this module's decoder.
py_decode = decode
if not os.environ.get("DETECTOR_PURE_PYTHON"):
    try:
        from detector.dns import _cwire
    except ImportError:  # no compiler at install time: pure Python it is
        _cwire = None
    else:
        _cwire.setup(DnsEvent, Question, Answer, Edns, DnsParseError)
        decode = _cwire.decode  # noqa: F811
