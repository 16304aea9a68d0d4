"""A lean DNS message decoder (RFC 1035, 6891) that builds a DnsEvent directly.

Why not dnslib on the hot path: dnslib builds a full object graph per message
(about 40 µs); replay needs ~10 µs per packet all in. This decoder reads the
header, every question and every record of the answer, authority and
additional sections; the first OPT record of the additional section becomes
``event.edns`` (not a record; a later OPT is kept as a record, its data hex).
Nothing is cached across messages: a name decodes from its own message's bytes
only (a name cache keyed by a prefix of the bytes let one packet's compression
pointer change how a later packet decoded).

Record data (``Answer.data``) is in dig's presentation format. This module
does the common types (A, AAAA, CNAME, NS, PTR, DNAME, MX, SOA, SRV, TXT, SPF);
detector/dns/rdata.py does the rarer ones (HINFO, CAA, SVCB/HTTPS, DNSSEC, LOC,
NAPTR...) and every EDNS option other than ECS, COOKIE and PADDING. A type
neither knows is lowercase hex of its rdata (at most 512 bytes); so is a known
type whose rdata does not parse as that type (A with 5 bytes). A record with
no rdata has data "" (DNS UPDATE's deletes: class NONE or ANY, RFC 2136 2.5).
Names are presentation text without the trailing dot ("." for the root):
bytes outside printable ASCII are escaped as ``\\DDD`` and a dot inside a label
as ``\\.``, as dig does, so output never carries raw control or non-UTF-8 bytes.

mDNS (either port 5353): the top bit of a question's class is the
unicast-response bit and of a record's class the cache-flush bit (RFC 6762
5.4, 10.2); they are taken out of the class. Not on other ports, and never for
OPT, whose class is the UDP payload size.

Damage, best effort (as tshark and Zeek): only a header shorter than 12 bytes
raises :class:`DnsParseError`. Otherwise the event keeps everything that could
be decoded and ``event.malformed`` names the first damage. A name whose end in
place is known is kept with the labels decoded before the damage and decoding
goes on after it: a pointer past the end or a pointer loop (the end is the
first pointer's two bytes), a name over 255 bytes on the wire (cut before the
label that crosses 255; the rest is skimmed in place). Damage that cannot be
stepped over (a name or record cut by the end of the message, a reserved label
type in place) ends decoding there; what came before it is kept.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct

from detector.events import Answer, DnsEvent, Edns, EdnsOption, Question

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QT = struct.Struct("!HH")
_H = struct.Struct("!H")
_I5 = struct.Struct("!IIIII")
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

#: name damage after which the message goes on being read: the name's bytes in place
#: were all there and every pointer pointed inside the message
_STEPPED = frozenset({"name_too_long", "compression_loop"})

MAX_HOPS = 64  # compression pointers followed for one name
MAX_NAME = 255  # bytes of a name on the wire, labels, length bytes and the root (RFC 1035 2.3.4)
MDNS_PORT = 5353
OPT = 41


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


def _skim(buf: bytes, off: int, n: int) -> int:
    """Offset after the labels in place from ``off`` (a pointer ends them), or -1
    when they run off the end or hit a reserved label type."""
    while off < n:
        ln = buf[off]
        if ln == 0:
            return off + 1
        if ln >= 0xC0:
            return off + 2 if off + 1 < n else -1
        if ln & 0xC0:
            return -1
        off += ln + 1
    return -1


def name_at(buf: bytes, off: int) -> tuple[str, int, int, str]:
    """Decode the name at ``off``, best effort.

    Returns (name, end, hops, damage): ``end`` is the offset after the name in
    place (-1 when the damage leaves it unknown), ``hops`` the compression
    pointers followed, ``damage`` "" or the kind (``bad_pointer``,
    ``compression_loop``, ``name_too_long``, ``bad_label``, ``truncated_name``).
    A damaged name is the labels decoded before the damage ("" if none).
    """
    labels: list[str] = []
    end = -1  # where parsing continues after the name (set at first pointer)
    hops = 0
    total = 0
    n = len(buf)
    while True:
        if off >= n:
            bad = "truncated_name"
            break
        ln = buf[off]
        if ln == 0:
            return (".".join(labels) if labels else "."), (end if end >= 0 else off + 1), hops, ""
        t = ln & 0xC0
        if t == 0xC0:
            if off + 1 >= n:
                bad = "truncated_name"
                break
            if end < 0:
                end = off + 2
            hops += 1
            if hops > MAX_HOPS:
                bad = "compression_loop"
                break
            ptr = ((ln & 0x3F) << 8) | buf[off + 1]
            if ptr >= n:
                bad = "bad_pointer"
                break
            off = ptr
            continue
        if t:
            bad = "bad_label"
            break
        off += 1
        if off + ln > n:
            bad = "truncated_name"
            break
        total += ln + 1
        if total >= MAX_NAME:  # with the root byte, over 255
            bad = "name_too_long"
            if end < 0:
                end = _skim(buf, off - 1, n)
            break
        lab = buf[off:off + ln]
        if lab.translate(None, _SAFE):
            labels.append(_escape(lab))
        else:
            labels.append(lab.decode("ascii"))
        off += ln
    return ".".join(labels), end, hops, bad


def read_name_hops(buf: bytes, off: int) -> tuple[str, int, int]:
    """The name at ``off``, (name, offset after it in place, pointers followed);
    strict: any damage raises DnsParseError."""
    name, end, hops, bad = name_at(buf, off)
    if bad:
        raise DnsParseError(bad)
    return name, end, hops


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """Decode the name at ``off``; return (name, offset after the name in place). Strict."""
    name, end, _, bad = name_at(buf, off)
    if bad:
        raise DnsParseError(bad)
    return name, end


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


_SAFE_TXT = bytes(c for c in range(0x20, 0x7F) if c not in (0x5C, 0x22))
_SAFE_TXT_SET = frozenset(_SAFE_TXT)


def quoted(s: bytes) -> str:
    """A character-string as dig prints it: in double quotes, ``"`` and ``\\``
    escaped with a backslash, bytes outside printable ASCII as ``\\DDD``."""
    if not s.translate(None, _SAFE_TXT):
        return '"' + s.decode("ascii") + '"'
    return '"' + "".join(chr(c) if c in _SAFE_TXT_SET else ("\\" + chr(c) if c in (0x5C, 0x22) else "\\%03d" % c)
                         for c in s) + '"'


def txt(rd: bytes) -> str:
    """TXT/SPF rdata: each character-string quoted, separated by a space (a string
    cut by the rdata's end: the bytes there are)."""
    parts = []
    i, n = 0, len(rd)
    while i < n:
        ln = rd[i]
        parts.append(quoted(rd[i + 1:i + 1 + ln]))
        i += 1 + ln
    return " ".join(parts)


def _rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> tuple[str, str]:
    """(presentation, damage kind or "") of a record's rdata."""
    if rtype == 1:
        if rdlen == 4:
            return _ntoa(buf[off:off + 4]), ""
    elif rtype == 28:
        if rdlen == 16:
            return _inet_ntop(_AF6, buf[off:off + 16]), ""
    elif rtype in (5, 2, 12, 39):  # CNAME NS PTR DNAME
        name, _, _, bad = name_at(buf, off)
        return name, bad
    elif rtype == 15:  # MX
        if rdlen >= 3:
            name, _, _, bad = name_at(buf, off + 2)
            return f"{_H.unpack_from(buf, off)[0]} {name}", bad
    elif rtype == 16 or rtype == 99:  # TXT SPF
        return txt(buf[off:off + rdlen]), ""
    elif rtype == 33:  # SRV
        if rdlen >= 7:
            pr, w, port = struct.unpack_from("!HHH", buf, off)
            name, _, _, bad = name_at(buf, off + 6)
            return f"{pr} {w} {port} {name}", bad
    elif rtype == 6:  # SOA
        m, o, _, bad = name_at(buf, off)
        if o < 0:
            return m, bad
        r, o, _, bad2 = name_at(buf, o)
        bad = bad or bad2
        if o >= 0 and o + 20 <= len(buf):
            return "%s %s %d %d %d %d %d" % ((m, r) + _I5.unpack_from(buf, o)), bad
        return f"{m} {r}", bad
    else:
        return rdata.present(rtype, buf, off, rdlen)
    return buf[off:off + min(rdlen, 512)].hex(), ""


def _edns(buf: bytes, off: int, rdlen: int, cls: int, ttl: int) -> tuple[Edns, str]:
    """The OPT record as Edns, and "" or bad_rdata (an option cut by the rdata's end)."""
    ecs = scope = None
    options: list[EdnsOption] = []
    end = off + rdlen
    bad = ""
    while off < end:
        if off + 4 > end:
            bad = "bad_rdata"
            break
        code, ln = struct.unpack_from("!HH", buf, off)
        off += 4
        if off + ln > end:
            bad = "bad_rdata"
            break
        d = buf[off:off + ln]
        off += ln
        if code == 8:  # client subnet: "addr/source/scope"
            fam = d[1] | d[0] << 8 if ln >= 4 else 0
            if fam == 1 or fam == 2:
                if fam == 1:
                    ip = _ntoa(d[4:8].ljust(4, _Z))
                else:
                    ip = _inet_ntop(_AF6, d[4:20].ljust(16, _Z))
                text = f"{ip}/{d[2]}/{d[3]}"
                if ecs is None:
                    ecs, scope = f"{ip}/{d[2]}", d[3]
            else:
                text = d.hex()
            options.append(EdnsOption(8, "ECS", text))
        elif code == 10:  # cookie: client (8 bytes) then server
            text = d[:8].hex() + " " + d[8:].hex() if ln > 8 else d.hex()
            options.append(EdnsOption(10, "COOKIE", text))
        elif code == 12:
            options.append(EdnsOption(12, "PADDING", str(ln)))
        else:
            options.append(rdata.edns_option(code, d))
    return Edns(cls, bool(ttl & 0x8000), (ttl >> 16) & 0xFF, ecs, scope, options, ttl & 0xFFFF,
                ttl >> 24), bad


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
    """Decode one DNS message (no TCP length prefix) into a DnsEvent; ``max_answers``
    records are kept per section (the counts stay the header's)."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    n = len(buf)
    if n < 12:
        raise DnsParseError("short_header", f"{n} bytes")
    mid, flags, qd, an, ns, ar = _HDR.unpack_from(buf, 0)
    mdns = src_port == MDNS_PORT or dst_port == MDNS_PORT
    off = 12
    questions: list[Question] = []
    answers: list[Answer] = []
    authority: list[Answer] | tuple = ()
    additional: list[Answer] | tuple = ()
    edns = None
    rcode = flags & 0xF
    malformed = ""
    # names decoded whole in this message, by offset (pointer targets), with the
    # pointers their decoding followed: a pointer to one costs those hops too, as in C
    local: dict[int, tuple[str, int]] = {}
    for _ in range(qd):
        start = off
        name, off, hops, bad = name_at(buf, off)
        if bad:
            malformed = malformed or bad
            if off < 0:
                break
        else:
            local[start] = (name, hops)
        if off + 4 > n:
            malformed = malformed or "truncated_question"
            off = -1
            break
        qt, qc = _QT.unpack_from(buf, off)
        off += 4
        if len(questions) < max_answers:
            if mdns:
                questions.append(Question(name, qt, qc & 0x7FFF, qc > 0x7FFF))
            else:
                questions.append(Question(name, qt, qc))
        if bad and bad not in _STEPPED:
            # a damaged question is kept, with its type and class; after a pointer out of
            # the message, what follows is not known to be aligned (tshark stops too)
            off = -1
            break
    if off >= 0 and (an or ns or ar):
        for section, count in ((0, an), (1, ns), (2, ar)):
            if not count:
                continue
            recs = answers if section == 0 else []
            for _ in range(count):
                if off >= n:
                    off = -1
                    malformed = malformed or "truncated_record"
                    break
                c = buf[off]
                known = local.get(((c & 0x3F) << 8) | buf[off + 1]) if c >= 0xC0 and off + 1 < n else None
                if known is not None and known[1] < MAX_HOPS:  # the usual case: a pointer to the question
                    name = known[0]
                    off += 2
                else:
                    name, off, _, bad = name_at(buf, off)
                    if bad:
                        malformed = malformed or bad
                        if off < 0:
                            break
                if off + 10 > n:
                    off = -1
                    malformed = malformed or "truncated_record"
                    break
                rtype, cls, ttl, rdlen = _RR.unpack_from(buf, off)
                off += 10
                end = off + rdlen
                if rtype == OPT and section == 2 and edns is None:
                    edns, bad = _edns(buf, off, min(rdlen, n - off), cls, ttl)
                    rcode |= (ttl >> 24) << 4
                    if end > n:
                        bad = "truncated_record"
                    if bad:
                        malformed = malformed or bad
                        if end > n:
                            off = -1
                            break
                    off = end
                    continue
                if end > n:
                    off = -1
                    malformed = malformed or "truncated_record"
                    break
                if len(recs) < max_answers:
                    if not rdlen:
                        data = ""
                    elif rtype == 1 and rdlen == 4:
                        data = _ntoa(buf[off:end])
                    else:
                        data, bad = _rdata(buf, rtype, off, rdlen)
                        if bad:
                            malformed = malformed or bad
                    if mdns and rtype != OPT:
                        recs.append(Answer(name, rtype, ttl, data, rdlen, cls & 0x7FFF, cls > 0x7FFF))
                    else:
                        recs.append(Answer(name, rtype, ttl, data, rdlen, cls))
                off = end
            if recs and section:
                if section == 1:
                    authority = recs
                else:
                    additional = recs
            if off < 0:
                break
    ev = DnsEvent(ts, transport, ip_version, src_ip, src_port, dst_ip, dst_port, mid, flags, rcode,
                  questions, answers, authority, additional, an, ns, ar, n, edns)
    if malformed:
        ev.malformed = malformed
    return ev


from detector.dns import rdata  # noqa: E402  (rdata uses name_at and quoted from here)


def slot_plan(cls: type) -> tuple | None:
    """What the C decoder needs to fill a ``cls`` slot by slot instead of calling it:
    ((name, default, default_factory), ...) for every field in declared order, or None
    when its __init__ does more than store the fields (a __post_init__, a field left
    out of __init__, an __init__ of its own). The C side also checks each is a slot."""
    code = getattr(getattr(cls, "__init__", None), "__code__", None)
    if (not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__")
            or getattr(code, "co_qualname", "") != "__create_fn__.<locals>.__init__"):
        return None  # (the generated __init__ is compiled from a def in __create_fn__)
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        return None
    return tuple((f.name, f.default, f.default_factory) for f in fields)


# The C twin of decode() (detector/dns/_cwire.c), when it was built: same output,
# about 4x faster. DETECTOR_PURE_PYTHON=1 forces this module's decoder.
py_decode = decode
if not os.environ.get("DETECTOR_PURE_PYTHON"):
    try:
        from detector.dns import _cwire
    except ImportError:  # no compiler at install time: pure Python it is
        _cwire = None
    else:
        decode = _cwire.decode  # noqa: F811
else:
    _cwire = None


def setup_c(event: type = DnsEvent) -> None:
    """Tell the C decoder which classes to build (``event`` for the message; tests
    give another): each filled slot by slot when :func:`slot_plan` allows it."""
    _cwire.setup(event, Question, Answer, Edns, DnsParseError, EdnsOption, rdata.present,
                 rdata.edns_option, (dataclasses.MISSING, *map(slot_plan, (event, Question, Answer))))


if _cwire is not None:
    setup_c()
