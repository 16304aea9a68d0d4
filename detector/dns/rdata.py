"""Presentation of the rarer record types and EDNS options, as dig prints them.

One implementation for both decoders: detector/dns/wire.py calls :func:`present`
for every type it does not do itself, and the C decoder (_cwire.c) calls the
same function, set in its setup(), for those types only; likewise
:func:`edns_option` for the EDNS options other than ECS, COOKIE and PADDING.

The text is dig's (BIND's) presentation, with names without the trailing dot
("." for the root) as everywhere in the events, and long base64 and hex fields
in one piece (as ``dig +nosplit``: dig's default cuts them every 56 characters).
Types done here: the RFC 1035 ones not done in wire.py (MD MF MB MG MR NULL
WKS HINFO MINFO), RP AFSDB RT KX PX, SIG/RRSIG, KEY/DNSKEY/CDNSKEY, DS/CDS/DLV,
SSHFP, NSEC, NSEC3, NSEC3PARAM, CSYNC, ZONEMD, TLSA/SMIMEA, OPENPGPKEY, DHCID,
NAPTR, LOC, URI, CAA, SVCB/HTTPS, TKEY, TSIG, EUI48/EUI64. NULL is RFC 3597's
``\\# len HEX``. A type not listed is lowercase hex of its rdata (at most 512
bytes); rdata that does not parse as its type is that hex too, with the
damage kind ``bad_rdata`` (a LOC of 15 bytes, an SVCB value past its end).
"""

from __future__ import annotations

import base64
import socket
import struct
import time

from detector.dns.constants import EDNS_OPTIONS, RCODES, qtype_name
from detector.events import EdnsOption

HEX_MAX = 512  # bytes of rdata shown as hex for a type without a presentation
_b64 = base64.b64encode
_b32hex = base64.b32hexencode


class BadRdata(ValueError):
    """The rdata does not parse as its type."""


class _Rd:
    """A cursor over one record's rdata (names may point anywhere in the message)."""

    __slots__ = ("buf", "off", "end")

    def __init__(self, buf: bytes, off: int, rdlen: int) -> None:
        self.buf, self.off, self.end = buf, off, off + rdlen

    def take(self, k: int) -> bytes:
        if self.off + k > self.end:
            raise BadRdata("rdata too short")
        s = self.buf[self.off:self.off + k]
        self.off += k
        return s

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def rest(self) -> bytes:
        s = self.buf[self.off:self.end]
        self.off = self.end
        return s

    def left(self) -> int:
        return self.end - self.off

    def name(self) -> str:
        if self.off >= self.end:
            raise BadRdata("name past the rdata")
        text, nxt, _, bad = name_at(self.buf, self.off)
        if bad or nxt > self.end:
            raise BadRdata(bad or "name past the rdata")
        self.off = nxt
        return text

    def string(self) -> bytes:
        """A character-string: a length byte, then that many bytes."""
        return self.take(self.u8())

    def done(self) -> None:
        if self.off != self.end:
            raise BadRdata("bytes after the rdata's fields")


def _hexu(b: bytes) -> str:
    return b.hex().upper()


def _b64s(b: bytes) -> str:
    return _b64(b).decode("ascii")


def _time(t: int) -> str:
    """A 32-bit signature time as YYYYMMDDHHMMSS UTC (RFC 4034 3.2)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def _bitmap(b: bytes) -> str:
    """An NSEC-style type bitmap (RFC 4034 4.1.2) as mnemonics, TYPEnnn when unknown."""
    out = []
    i = 0
    while i < len(b):
        if i + 2 > len(b):
            raise BadRdata("bitmap window cut")
        win, ln = b[i], b[i + 1]
        if not 1 <= ln <= 32 or i + 2 + ln > len(b):
            raise BadRdata("bitmap window length")
        for j, byte in enumerate(b[i + 2:i + 2 + ln]):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    out.append(qtype_name(win * 256 + j * 8 + bit))
        i += 2 + ln
    return " ".join(out)


def _one_name(r: _Rd) -> str:
    t = r.name()
    r.done()
    return t


def _two_names(r: _Rd) -> str:
    a = r.name()
    b = r.name()
    r.done()
    return f"{a} {b}"


def _pref_name(r: _Rd) -> str:
    p = r.u16()
    return f"{p} {_one_name(r)}"


def _px(r: _Rd) -> str:
    p = r.u16()
    return f"{p} {_two_names(r)}"


def _null(r: _Rd) -> str:
    d = r.rest()
    return f"\\# {len(d)} {_hexu(d)}" if d else "\\# 0"


def _wks(r: _Rd) -> str:
    addr = socket.inet_ntoa(r.take(4))
    proto = r.u8()
    bits = r.rest()
    ports = [str(i * 8 + k) for i, byte in enumerate(bits) for k in range(8) if byte & (0x80 >> k)]
    return " ".join([addr, str(proto)] + ports)


def _hinfo(r: _Rd) -> str:
    cpu = r.string()
    os_ = r.string()
    r.done()
    return f"{quoted(cpu)} {quoted(os_)}"


def _sig(r: _Rd) -> str:
    covered, alg, labels, ottl, exp, inc, tag = struct.unpack("!HBBIIIH", r.take(18))
    signer = r.name()
    sig = r.rest()
    return (f"{qtype_name(covered)} {alg} {labels} {ottl} {_time(exp)} {_time(inc)} {tag} {signer} "
            f"{_b64s(sig)}")


def _key(r: _Rd) -> str:
    flags, proto, alg = struct.unpack("!HBB", r.take(4))
    key = r.rest()
    return f"{flags} {proto} {alg} {_b64s(key)}" if key else f"{flags} {proto} {alg}"


def _ds(r: _Rd) -> str:
    tag, alg, dt = struct.unpack("!HBB", r.take(4))
    d = r.rest()
    return f"{tag} {alg} {dt} {_hexu(d)}" if d else f"{tag} {alg} {dt}"


def _sshfp(r: _Rd) -> str:
    alg, fpt = r.u8(), r.u8()
    return f"{alg} {fpt} {_hexu(r.rest())}"


def _tlsa(r: _Rd) -> str:
    u, s, m = r.u8(), r.u8(), r.u8()
    return f"{u} {s} {m} {_hexu(r.rest())}"


def _nsec(r: _Rd) -> str:
    nxt = r.name()
    types = _bitmap(r.rest())
    return f"{nxt} {types}" if types else nxt


def _salt(r: _Rd) -> str:
    s = r.string()
    return _hexu(s) if s else "-"


def _nsec3(r: _Rd) -> str:
    alg, flags, it = r.u8(), r.u8(), r.u16()
    salt = _salt(r)
    nxt = _b32hex(r.string()).decode("ascii").rstrip("=")
    types = _bitmap(r.rest())
    return f"{alg} {flags} {it} {salt} {nxt}" + (f" {types}" if types else "")


def _nsec3param(r: _Rd) -> str:
    alg, flags, it = r.u8(), r.u8(), r.u16()
    salt = _salt(r)
    r.done()
    return f"{alg} {flags} {it} {salt}"


def _csync(r: _Rd) -> str:
    serial, flags = r.u32(), r.u16()
    types = _bitmap(r.rest())
    return f"{serial} {flags}" + (f" {types}" if types else "")


def _zonemd(r: _Rd) -> str:
    serial, scheme, alg = r.u32(), r.u8(), r.u8()
    return f"{serial} {scheme} {alg} {_hexu(r.rest())}"


def _b64_only(r: _Rd) -> str:
    return _b64s(r.rest())


def _naptr(r: _Rd) -> str:
    order, pref = r.u16(), r.u16()
    flags, service, regexp = r.string(), r.string(), r.string()
    return f"{order} {pref} {quoted(flags)} {quoted(service)} {quoted(regexp)} {_one_name(r)}"


_POW10 = [10 ** i for i in range(10)]


def _loc_size(b: int) -> str:
    mant, exp = b >> 4, b & 0x0F
    if mant > 9 or exp > 9:
        raise BadRdata("LOC size out of range")
    if exp >= 2:
        return f"{mant * _POW10[exp - 2]}m"
    cm = mant * _POW10[exp]
    return f"{cm // 100}.{cm % 100:02d}m"


def _loc_angle(v: int, pos: str, neg: str, limit: int) -> str:
    if v >= 0x80000000:
        v -= 0x80000000
        hemi = pos
    else:
        v = 0x80000000 - v
        hemi = neg
    ms, v = v % 1000, v // 1000
    s, v = v % 60, v // 60
    m, d = v % 60, v // 60
    if d > limit:
        raise BadRdata("LOC angle out of range")
    return f"{d} {m} {s}.{ms:03d} {hemi}"


def _loc(r: _Rd) -> str:
    if r.left() != 16:
        raise BadRdata("LOC is 16 bytes")
    ver, size, hp, vp, lat, lon, alt = struct.unpack("!BBBBIII", r.take(16))
    if ver:
        raise BadRdata("LOC version")
    if alt < 10000000:
        a, sign = 10000000 - alt, "-"
    else:
        a, sign = alt - 10000000, ""
    return (f"{_loc_angle(lat, 'N', 'S', 90)} {_loc_angle(lon, 'E', 'W', 180)} "
            f"{sign}{a // 100}.{a % 100:02d}m {_loc_size(size)} {_loc_size(hp)} {_loc_size(vp)}")


def _uri(r: _Rd) -> str:
    prio, weight = r.u16(), r.u16()
    return f"{prio} {weight} {quoted(r.rest())}"


def _caa(r: _Rd) -> str:
    flags = r.u8()
    tag = r.string()
    if not tag or not tag.isalnum() or not tag.isascii():
        raise BadRdata("CAA tag")
    return f"{flags} {tag.decode('ascii')} {quoted(r.rest())}"


_SVC_KEYS = {0: "mandatory", 1: "alpn", 2: "no-default-alpn", 3: "port", 4: "ipv4hint", 5: "ech",
             6: "ipv6hint"}


def _svc_key(k: int) -> str:
    return _SVC_KEYS.get(k) or f"key{k}"


def _alpn(v: bytes) -> str:
    ids = []
    i = 0
    while i < len(v):
        ln = v[i]
        if not ln or i + 1 + ln > len(v):
            raise BadRdata("alpn id length")
        # inside the quoted list a comma or backslash of an id is escaped twice (RFC 9460 A.1)
        ids.append(quoted(v[i + 1:i + 1 + ln])[1:-1].replace(",", "\\\\,"))
        i += 1 + ln
    return '"' + ",".join(ids) + '"'


def _svc_value(k: int, v: bytes) -> str:
    if k == 0:
        if not v or len(v) % 2:
            raise BadRdata("mandatory length")
        return ",".join(_svc_key(int.from_bytes(v[i:i + 2], "big")) for i in range(0, len(v), 2))
    if k == 1:
        return _alpn(v)
    if k == 3:
        if len(v) != 2:
            raise BadRdata("port length")
        return str(int.from_bytes(v, "big"))
    if k == 4:
        if not v or len(v) % 4:
            raise BadRdata("ipv4hint length")
        return ",".join(socket.inet_ntoa(v[i:i + 4]) for i in range(0, len(v), 4))
    if k == 5:
        return _b64s(v)
    if k == 6:
        if not v or len(v) % 16:
            raise BadRdata("ipv6hint length")
        return ",".join(socket.inet_ntop(socket.AF_INET6, v[i:i + 16]) for i in range(0, len(v), 16))
    return quoted(v)


def _svcb(r: _Rd) -> str:
    prio = r.u16()
    out = [str(prio), r.name()]
    last = -1
    while r.left():
        k, ln = r.u16(), r.u16()
        if k <= last:
            raise BadRdata("SvcParam keys out of order")
        last = k
        v = r.take(ln)
        if k == 2:
            if v:
                raise BadRdata("no-default-alpn has no value")
            out.append("no-default-alpn")
        elif not v and k > 6:
            out.append(_svc_key(k))
        else:
            out.append(f"{_svc_key(k)}={_svc_value(k, v)}")
    return " ".join(out)


def _tsig_error(e: int) -> str:
    return RCODES.get(e) or str(e)


def _tkey(r: _Rd) -> str:
    alg = r.name()
    inc, exp, mode, err = r.u32(), r.u32(), r.u16(), r.u16()
    key = r.take(r.u16())
    other = r.take(r.u16())
    r.done()
    parts = [alg, _time(inc), _time(exp), str(mode), _tsig_error(err), str(len(key))]
    if key:
        parts.append(_b64s(key))
    parts.append(str(len(other)))
    if other:
        parts.append(_b64s(other))
    return " ".join(parts)


def _tsig(r: _Rd) -> str:
    alg = r.name()
    signed = int.from_bytes(r.take(6), "big")
    fudge = r.u16()
    mac = r.take(r.u16())
    orig, err = r.u16(), r.u16()
    other = r.take(r.u16())
    r.done()
    parts = [alg, str(signed), str(fudge), str(len(mac))]
    if mac:
        parts.append(_b64s(mac))
    parts += [str(orig), _tsig_error(err), str(len(other))]
    if other:
        parts.append(_b64s(other))
    return " ".join(parts)


def _eui(n: int):
    def fn(r: _Rd) -> str:
        d = r.rest()
        if len(d) != n:
            raise BadRdata("EUI length")
        return "-".join(f"{c:02x}" for c in d)
    return fn


_PRESENT = {
    3: _one_name, 4: _one_name, 7: _one_name, 8: _one_name, 9: _one_name,  # MD MF MB MG MR
    10: _null, 11: _wks, 13: _hinfo, 14: _two_names, 17: _two_names, 18: _pref_name,  # AFSDB
    21: _pref_name, 36: _pref_name, 26: _px,  # RT KX PX
    24: _sig, 46: _sig, 25: _key, 48: _key, 60: _key, 43: _ds, 59: _ds, 32769: _ds,
    44: _sshfp, 52: _tlsa, 53: _tlsa, 47: _nsec, 50: _nsec3, 51: _nsec3param, 62: _csync,
    63: _zonemd, 61: _b64_only, 49: _b64_only, 35: _naptr, 29: _loc, 256: _uri, 257: _caa,
    64: _svcb, 65: _svcb, 249: _tkey, 250: _tsig, 108: _eui(6), 109: _eui(8),
}


def present(rtype: int, buf: bytes, off: int, rdlen: int) -> tuple[str, str]:
    """(presentation, "" or "bad_rdata") of the rdata at buf[off:off+rdlen] of the
    message ``buf``: the C decoder maps a non-empty second item to bad_rdata."""
    fn = _PRESENT.get(rtype)
    if fn is not None:
        try:
            return fn(_Rd(buf, off, rdlen)), ""
        except (BadRdata, ValueError, IndexError, OverflowError, OSError, struct.error):
            return buf[off:off + min(rdlen, HEX_MAX)].hex(), "bad_rdata"
    return buf[off:off + min(rdlen, HEX_MAX)].hex(), ""


def _opt_name(d: bytes) -> str:
    text, nxt, _, bad = name_at(d, 0)
    if bad or nxt != len(d):
        raise BadRdata("CHAIN name")
    return text


def _opt_text(code: int, d: bytes) -> str:
    ln = len(d)
    if code == 3:  # NSID
        return d.hex()
    if code == 11:  # TCP-KEEPALIVE, 100 ms units
        if ln == 0:
            return ""
        if ln == 2:
            return str(int.from_bytes(d, "big"))
    elif code == 9:  # EXPIRE, seconds
        if ln == 0:
            return ""
        if ln == 4:
            return str(int.from_bytes(d, "big"))
    elif code == 13:  # CHAIN: the closest trust point
        return _opt_name(d)
    elif code == 14:  # KEY-TAG
        if ln % 2 == 0:
            return ",".join(str(int.from_bytes(d[i:i + 2], "big")) for i in range(0, ln, 2))
    elif code in (5, 6, 7):  # DAU DHU N3U: algorithm numbers
        return " ".join(str(c) for c in d)
    elif code == 15:  # EDE: info code, then UTF-8 text
        if ln >= 2:
            text = quoted(d[2:])[1:-1]
            return f"{int.from_bytes(d[:2], 'big')} {text}" if text else str(int.from_bytes(d[:2], "big"))
    return d.hex()


def edns_option(code: int, data: bytes) -> EdnsOption:
    """An EDNS option other than ECS (8), COOKIE (10) and PADDING (12): its name
    (``OPT<code>`` when unknown) and data as text; data that does not parse as
    its option is hex."""
    name = EDNS_OPTIONS.get(code) or f"OPT{code}"
    try:
        text = _opt_text(code, data)
    except (BadRdata, ValueError, IndexError):
        text = data.hex()
    return EdnsOption(code, name, text)


from detector.dns.wire import name_at, quoted  # noqa: E402  (wire imports this module first)
