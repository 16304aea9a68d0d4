"""tshark's field dump of every DNS message, normalised to compare with our events.

tshark (``-T json``, one object per frame, duplicate keys kept and read in
order) keeps each message's sections apart: Queries, Answers, Authoritative
nameservers, Additional records (Zone, Prerequisites, Updates for DNS
UPDATE). This module turns that and our :class:`DnsEvent` into the same
plain values, field by field, and counts agreement per field family:

header      id, flags word, full rcode, an/ns/ar counts; a message tshark
            decodes that we do not emit (or the reverse) is a header disagreement
questions   count, and per question name, type, class, unicast-response bit
answers, authority, additional
            count, and per record name, type, ttl, class, cache-flush, rdlength
            (tshark's first OPT record is EDNS, not an additional record)
rdata       per record present on both sides, the rdata in our presentation
            format (dig style), built from tshark's typed fields
edns        presence, udp size, DO, version, flags, extended rcode, client
            subnet and scope, and per option code, name and data

What cannot be mapped exactly is compared as far as it can be (each place
says so): names are compared as their label bytes with bytes over 0x7f left
out (tshark shows those as U+FFFD, and a dot inside a label as a bare dot);
strings stop at a NUL as tshark's do; record types tshark dissects into
fields we cannot rebuild the rdata from (LOC, WKS, TKEY, TSIG, ...) are not
compared for rdata and are counted as such.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.dns.constants import QTYPES

sys.path.insert(0, str(Path(__file__).parent))
from oracle import DEFAULT_PORTS, _DNS_LIKE_PORTS  # noqa: E402

FAMILIES = ("header", "questions", "answers", "authority", "additional", "rdata", "edns")
SECTIONS = ("answers", "authority", "additional")
DNS_LAYERS = ("dns", "mdns", "llmnr")
# frames tshark decodes DNS in that are not plain DNS transport: DNS quoted in
# ICMP errors, and DNS carried in HTTP (DoH), which we do not decode here
SKIP_PROTOCOLS = frozenset({"icmp", "icmpv6", "http", "http2"})
ABSENT = "<absent>"

OPTION_NAMES = {3: "NSID", 5: "DAU", 6: "DHU", 7: "N3U", 8: "ECS", 9: "EXPIRE", 10: "COOKIE",
                11: "TCP-KEEPALIVE", 12: "PADDING", 13: "CHAIN", 14: "KEY-TAG", 15: "EDE"}
TYPE_NUMBERS = {v: k for k, v in QTYPES.items()}
SVC_KEYS = {0: "mandatory", 1: "alpn", 2: "no-default-alpn", 3: "port", 4: "ipv4hint", 5: "ech",
            6: "ipv6hint"}


# --- names and strings ------------------------------------------------------------------

_C_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


def tshark_bytes(text: str) -> bytes:
    """tshark's text of a name or string as bytes: C escapes (``\\a``, ``\\033``
    octal, ``\\\\``) undone; characters over 0x7f (U+FFFD for bytes that were not
    UTF-8) are left out, as they cannot be mapped back to the wire bytes."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            d = text[i + 1]
            if re.match(r"[0-7]{3}", text[i + 1:i + 4]):
                out.append(int(text[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
            out.append(_C_ESC.get(d, ord(d) if ord(d) < 0x80 else 0))
            i += 2
            continue
        if ord(c) < 0x80:
            out.append(ord(c))
        i += 1
    return bytes(b for b in out if b < 0x80)


def dig_bytes(text: str) -> bytes:
    """Our (dig's) presentation of a name or string as bytes: ``\\DDD`` decimal and
    ``\\X`` undone; bytes over 0x7f left out to match :func:`tshark_bytes`."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            if text[i + 1:i + 4].isdigit() and len(text[i + 1:i + 4]) == 3:
                out.append(int(text[i + 1:i + 4]) & 0xFF)
                i += 4
                continue
            out.append(ord(text[i + 1]) & 0xFF)
            i += 2
            continue
        out.append(ord(c) & 0xFF if ord(c) < 0x100 else 0x80)
        i += 1
    return bytes(b for b in out if b < 0x80)


DAMAGED = "<damaged name>"


def tshark_name(text: str) -> bytes | str:
    """A name from tshark: ``<Root>`` is the root; the other ``<...>`` texts
    (``<Name too long>``, ``<Name contains a pointer that loops>``...) say tshark
    could not decode it: :data:`DAMAGED`, which our side matches with a name on
    a message marked malformed (we keep the labels before the damage, tshark
    keeps none, so the labels themselves cannot be compared)."""
    if text == "<Root>" or text == "":
        return b"."
    if text.startswith("<") and text.endswith(">"):
        return DAMAGED
    return tshark_bytes(text)


def our_name(text: str) -> bytes:
    """Our name: one trailing dot (docs show rdata names with it) is dropped."""
    if text in (".", ""):
        return b"."
    if text.endswith(".") and not text.endswith("\\."):
        text = text[:-1]
    return dig_bytes(text)


def _cut_nul(b: bytes) -> bytes:
    # tshark's strings end at the first NUL ("Trailing stray characters")
    return b.split(b"\0", 1)[0]


def tokens(text: str) -> list:
    """Split our presentation text on spaces; a quoted string becomes bytes
    (escapes undone, cut at a NUL), everything else stays text."""
    out: list = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        if text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(_cut_nul(dig_bytes(text[i + 1:j])))
            i = j + 1
            continue
        j = i
        while j < n and text[j] != " ":
            if text[j] == '"':  # key="value" (SVCB): the quotes are presentation only
                k = j + 1
                while k < n and text[k] != '"':
                    k += 2 if text[k] == "\\" else 1
                j = k + 1
                continue
            j += 2 if text[j] == "\\" else 1
        out.append(text[i:j].replace('"', ""))
        i = j
    return out


def _hex(colon_hex: str) -> str:
    return colon_hex.replace(":", "").lower()


def _b64(colon_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(_hex(colon_hex))).decode()


def _time(text: str) -> str:
    # "Mar  7, 2025 04:00:00.000000000 UTC" -> 20250307040000 (dig's RRSIG times)
    t = re.sub(r"\s+", " ", text.split(".")[0].strip())
    try:
        return datetime.strptime(t, "%b %d, %Y %H:%M:%S").strftime("%Y%m%d%H%M%S")
    except ValueError:
        return text


def _type_number(tok) -> int | str:
    if isinstance(tok, bytes):
        return repr(tok)
    if tok in TYPE_NUMBERS:
        return TYPE_NUMBERS[tok]
    if tok.startswith("TYPE") and tok[4:].isdigit():
        return int(tok[4:])
    return int(tok) if tok.isdigit() else tok


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


# --- rdata: both sides to the same token lists -------------------------------------------

# per type: how each token of our presentation is normalised ("n" a name, "i" an
# integer, "u" text compared upper-case (hex), "s" text, "t" a type mnemonic,
# "*t" the rest are type mnemonics, "*" the rest joined (base64 or hex split by
# spaces), "*q" the rest are quoted strings, "*k" the rest are SVCB key=value)
SHAPES = {
    1: "s", 28: "a", 2: "n", 5: "n", 12: "n", 39: "n", 15: "in", 6: "nniiiii", 33: "iiin",
    16: "*q", 99: "*q", 13: "*q", 257: "isq", 35: "iiqqqn", 43: "iii*u", 44: "ii*u",
    48: "iii*", 46: "tiiissin*", 47: "n*t", 50: "iiiuu*t", 51: "iiiu", 64: "in*k", 65: "in*k", 256: "iiq",
    10: "ssu",
}


def _svc_token(t) -> str:
    if isinstance(t, bytes):
        return repr(t)
    k, eq, v = t.partition("=")
    return k.lower() + eq + v


def _norm(shape: str, toks: list) -> tuple:
    """Our tokens normalised by the type's shape (see SHAPES)."""
    out: list = []
    i = 0
    for k, s in enumerate(shape):
        if s == "*":
            rest = shape[k + 1:] or ""
            tail = toks[i:]
            if rest == "t":
                out.extend(_type_number(t) for t in tail)
            elif rest == "q":
                out.extend(t if isinstance(t, bytes) else t.encode() for t in tail)
            elif rest == "k":  # key=value: the key's case is presentation, the value's is not (base64)
                out.extend(_svc_token(t) for t in tail)
            elif rest == "u":
                out.append("".join(t for t in tail if isinstance(t, str)).upper())
            else:
                out.append("".join(t for t in tail if isinstance(t, str)))
            return tuple(out)
        if i >= len(toks):
            out.append(ABSENT)
            continue
        t = toks[i]
        i += 1
        if isinstance(t, bytes):
            out.append(t if s == "q" else repr(t))
        elif s == "n":
            out.append(our_name(t))
        elif s == "i":
            out.append(int(t) if t.isdigit() else t)
        elif s == "u":
            out.append(t.upper())
        elif s == "t":
            out.append(_type_number(t))
        elif s == "a":
            out.append(_ip(t))
        elif s == "q":
            out.append(t.encode())
        else:
            out.append(t)
    if i < len(toks):
        out.append(("extra", tuple(map(str, toks[i:]))))
    return tuple(out)


def our_rdata(rtype: int, data: str, tshark_hex: bool) -> tuple:
    """Our record data, normalised for the comparison with tshark's."""
    if data == "":
        return ()
    if tshark_hex or rtype not in SHAPES:
        return (data.lower(),)
    return _norm(SHAPES[rtype], tokens(data))


def _svc_params(rec: list) -> list[str]:
    out = []
    for k, v in rec:
        if k != "dns.svcb.svcparam" or not isinstance(v, list):
            continue
        key = _int(_first(v, "dns.svcb.svcparam.key", "-1"))
        name = SVC_KEYS.get(key, f"key{key}")
        if key == 0:
            vals = [SVC_KEYS.get(int(x), f"key{x}") for x in _all(v, "dns.svcb.svcparam.mandatory.key")]
        elif key == 1:
            vals = [tshark_bytes(x).decode() for x in _all(v, "dns.svcb.svcparam.alpn")]
        elif key == 2:
            out.append(name)
            continue
        elif key == 3:
            vals = _all(v, "dns.svcb.svcparam.port")
        elif key == 4:
            vals = _all(v, "dns.svcb.svcparam.ipv4hint.ip")
        elif key == 6:
            vals = [_ip(x) for x in _all(v, "dns.svcb.svcparam.ipv6hint.ip")]
        elif key == 5:
            vals = [_b64(x) for x in _all(v, "dns.svcb.svcparam.echconfig")]
        else:  # a key tshark does not dissect: its value as hex (not checked by hand)
            vals = [_hex(x) for x in _all(v, "dns.svcb.svcparam.value")]
        out.append(f"{name}={','.join(vals)}")
    return out


def tshark_rdata(rtype: int, rec: list) -> tuple | None:
    """tshark's typed fields of a record as the normalised tokens of our
    presentation; None when they cannot be rebuilt (not compared)."""
    f = lambda k, d=ABSENT: _first(rec, k, d)  # noqa: E731
    if _first(rec, "dns.resp.len", "0") == "0":  # no rdata: our data is ""
        return ()
    if "dns.data" in (k for k, _ in rec):  # a type tshark does not dissect: raw bytes
        raw = bytes.fromhex(_hex(f("dns.data")))
        if rtype == 256 and len(raw) >= 4:  # URI (RFC 7553): priority weight "target"
            return (int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:4], "big"), _cut_nul(bytes(
                b for b in raw[4:] if b < 0x80)))
        return (raw.hex()[:1024],)
    try:
        if rtype == 1:
            return (f("dns.a"),)
        if rtype == 28:
            return (_ip(f("dns.aaaa")),)
        if rtype in (2, 5, 12, 39):
            key = {2: "dns.ns", 5: "dns.cname", 12: "dns.ptr.domain_name", 39: "dns.dname"}[rtype]
            return (tshark_name(f(key)),)
        if rtype == 15:
            return (_int(f("dns.mx.preference")), tshark_name(f("dns.mx.mail_exchange")))
        if rtype == 6:
            return (tshark_name(f("dns.soa.mname")), tshark_name(f("dns.soa.rname")),
                    *(_int(f(k)) for k in ("dns.soa.serial_number", "dns.soa.refresh_interval",
                                          "dns.soa.retry_interval", "dns.soa.expire_limit",
                                          "dns.soa.minimum_ttl")))
        if rtype == 33:
            return (_int(f("dns.srv.priority")), _int(f("dns.srv.weight")), _int(f("dns.srv.port")),
                    tshark_name(f("dns.srv.target")))
        if rtype in (16, 99):
            return tuple(_cut_nul(tshark_bytes(x)) for x in _all(rec, "dns.txt" if rtype == 16 else "dns.spf"))
        if rtype == 13:
            return (tshark_bytes(f("dns.hinfo.cpu")), tshark_bytes(f("dns.hinfo.os")))
        if rtype == 257:
            tree = dict(next((v for k, v in rec if k.endswith("_tree") and k.startswith("dns.caa.")
                              and k != "dns.caa.flags_tree"), []))
            return (int(f("dns.caa.flags"), 16), tree.get("dns.caa.tag", ABSENT),
                    _cut_nul(tshark_bytes(tree.get("dns.caa.value", ""))))
        if rtype == 35:
            return (_int(f("dns.naptr.order")), _int(f("dns.naptr.preference")),
                    tshark_bytes(f("dns.naptr.flags")), tshark_bytes(f("dns.naptr.service")),
                    tshark_bytes(f("dns.naptr.regex")), tshark_name(f("dns.naptr.replacement")))
        if rtype == 43:
            return (int(f("dns.ds.key_id"), 16), _int(f("dns.ds.algorithm")), _int(f("dns.ds.digest_type")),
                    _hex(f("dns.ds.digest")).upper())
        if rtype == 44:
            return (_int(f("dns.sshfp.algorithm")), _int(f("dns.sshfp.fingerprint.type")),
                    _hex(f("dns.sshfp.fingerprint")).upper())
        if rtype == 48:
            return (int(f("dns.dnskey.flags"), 16), _int(f("dns.dnskey.protocol")),
                    _int(f("dns.dnskey.algorithm")), _b64(f("dns.dnskey.public_key")))
        if rtype == 46:
            return (_int(f("dns.rrsig.type_covered")), _int(f("dns.rrsig.algorithm")),
                    _int(f("dns.rrsig.labels")), _int(f("dns.rrsig.original_ttl")),
                    _time(f("dns.rrsig.signature_expiration")), _time(f("dns.rrsig.signature_inception")),
                    _int(f("dns.rrsig.key_tag")), tshark_name(f("dns.rrsig.signers_name")),
                    _b64(f("dns.rrsig.signature")))
        if rtype == 47:  # the type bitmap: every dns.resp.type after the record's own
            return (tshark_name(f("dns.nsec.next_domain_name")), *map(_int, _all(rec, "dns.resp.type")[1:]))
        if rtype in (50, 51):
            salt = _hex(f("dns.nsec3.salt_value", "")).upper() or "-"
            head = (_int(f("dns.nsec3.algo")), _int(f("dns.nsec3.flags")), _int(f("dns.nsec3.iterations")), salt)
            if rtype == 51:
                return head
            return (*head, f("dns.nsec3.hash_value").upper(), *map(_int, _all(rec, "dns.resp.type")[1:]))
        if rtype in (64, 65):
            return (_int(f("dns.svcb.svcpriority")), tshark_name(f("dns.svcb.targetname")), *_svc_params(rec))
        if rtype == 10:
            raw = _hex(f("dns.null", ""))
            return ("\\#", str(len(raw) // 2), raw.upper())
    except (ValueError, KeyError):
        return None
    return None


# --- EDNS options -----------------------------------------------------------------------

def tshark_option(opt: list) -> tuple[int, str, str | None]:
    """(code, name, data) of one EDNS option, the data in our presentation
    rebuilt from the option's bytes (tshark's dns.opt.data); ECS from tshark's
    own fields. EDE: only the info code is compared (None data: see caller)."""
    code = _int(_first(opt, "dns.opt.code", "-1"))
    name = OPTION_NAMES.get(code, f"OPT{code}")
    raw = bytes.fromhex(_hex(_first(opt, "dns.opt.data", "")))
    if code == 8 and _first(opt, "dns.opt.client.netmask", None) is not None:
        addr = _first(opt, "dns.opt.client.addr4", None) or _first(opt, "dns.opt.client.addr6", None)
        if addr:
            data = f"{_ip(addr)}/{_first(opt, 'dns.opt.client.netmask')}/{_first(opt, 'dns.opt.client.scope')}"
        else:
            data = raw.hex()
    elif code == 10:
        data = raw[:8].hex() + (" " + raw[8:].hex() if len(raw) > 8 else "")
    elif code == 12:
        data = str(len(raw))
    elif code == 11:
        data = str(int.from_bytes(raw, "big")) if len(raw) == 2 else ""
    elif code == 9:
        data = str(int.from_bytes(raw, "big")) if len(raw) == 4 else ""
    elif code == 14:
        data = ",".join(str(int.from_bytes(raw[i:i + 2], "big")) for i in range(0, len(raw) - 1, 2))
    elif code in (5, 6, 7):
        data = " ".join(str(b) for b in raw)
    elif code == 13:
        data = _wire_name(raw)
    elif code == 15:
        data = str(int.from_bytes(raw[:2], "big")) if len(raw) >= 2 else raw.hex()
    else:
        data = raw.hex()
    return code, name, data


def _wire_name(raw: bytes) -> str:
    labels, i = [], 0
    while i < len(raw) and raw[i]:
        labels.append(raw[i + 1:i + 1 + raw[i]].decode("ascii", "replace"))
        i += 1 + raw[i]
    return ".".join(labels) or "."


def our_option(code: int, data: str) -> str:
    if code == 15:  # EDE: the info code, its first token (extra text is not compared)
        return data.split(" ", 1)[0]
    if code == 13:
        return our_name(data).decode("ascii", "replace")
    if code in (3,) or code not in OPTION_NAMES:
        return data.lower()
    if code == 10:
        return data.lower()
    if code == 8:
        parts = data.split("/")
        return "/".join([_ip(parts[0])] + parts[1:])
    return data


# --- reading tshark's JSON ---------------------------------------------------------------

def _int(text: str) -> int:
    """A number as tshark prints it: decimal, or hex with 0x (mDNS shows some as hex)."""
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text)


def _first(pairs: list, key: str, default=ABSENT):
    for k, v in pairs:
        if k == key:
            return v
    return default


def _all(pairs: list, key: str) -> list:
    return [v for k, v in pairs if k == key]


@dataclass
class Msg:
    """One DNS message as plain values (either side)."""
    id: int
    flags: int
    rcode: int
    counts: tuple  # an, ns, ar
    qdcount: int
    questions: list  # (name bytes, qtype, qclass, unicast_response)
    sections: dict  # section -> [dict(name, rtype, ttl, rclass, cache_flush, rdlength, rdata)]
    edns: dict | None
    ev: object = field(default=None, repr=False)


def _tshark_record(rec: list, mdns: bool) -> dict:
    rtype = _int(_first(rec, "dns.resp.type", "-1"))
    name = _first(rec, "dns.resp.name", None)
    if name is None and _first(rec, "dns.srv.name", None) is not None:  # SRV: tshark splits the name
        name = ".".join(x for x in (_first(rec, "dns.srv.service", ""), _first(rec, "dns.srv.proto", ""),
                                    _first(rec, "dns.srv.name", "")) if x)
    cls = _first(rec, "dns.resp.class", None)
    ttl = _int(_first(rec, "dns.resp.ttl", "0")) & 0xFFFFFFFF
    if rtype == 41:  # an OPT record outside EDNS's place: tshark shows its class and TTL as EDNS fields
        cls = hex(_int(_first(rec, "dns.rr.udp_payload_size", "0")))
        ttl = ((_int(_first(rec, "dns.resp.ext_rcode", "0")) << 24)
               | (_int(_first(rec, "dns.resp.edns0_version", "0")) << 16) | _int(_first(rec, "dns.resp.z", "0")))
    return {"name": tshark_name(name if name is not None else ABSENT), "rtype": rtype, "ttl": ttl,
            "rclass": int(cls, 16) if cls is not None else None,
            "cache_flush": _first(rec, "dns.resp.cache_flush", "0") in ("1", "True"),
            "rdlength": _int(_first(rec, "dns.resp.len", "0")),
            "rdata": tshark_rdata(rtype, rec), "hex": rtype != 256 and "dns.data" in (k for k, _ in rec)}


def _tshark_edns(rec: list) -> dict:
    opts = [tshark_option(v) for k, v in rec if k == "dns.opt" and isinstance(v, list)]
    z = int(_first(rec, "dns.resp.z", "0x0"), 16)
    ecs = next((o for o in opts if o[0] == 8 and o[2].count("/") == 2), None)
    return {"udp_size": _int(_first(rec, "dns.rr.udp_payload_size", "0")), "do": bool(z & 0x8000),
            "version": _int(_first(rec, "dns.resp.edns0_version", "0")),
            "flags": z, "ext_rcode": int(_first(rec, "dns.resp.ext_rcode", "0x0"), 16),
            "client_subnet": ecs[2].rsplit("/", 1)[0] if ecs else None,
            "client_subnet_scope": int(ecs[2].rsplit("/", 1)[1]) if ecs else None,
            "options": opts}


def tshark_msg(layer: list, mdns: bool) -> Msg:
    flags = int(_first(layer, "dns.flags", "0x0"), 16)
    update = (flags >> 11) & 0xF == 5
    names = ({"Zone": "questions", "Prerequisites": "answers", "Updates": "authority"} if update else
             {"Queries": "questions", "Answers": "answers", "Authoritative nameservers": "authority"})
    names["Additional records"] = "additional"
    questions, sections, edns = [], {s: [] for s in SECTIONS}, None
    for k, v in layer:
        sec = names.get(k)
        if sec is None or not isinstance(v, list):
            continue
        for _, rec in v:
            if not isinstance(rec, list):
                continue
            if sec == "questions":
                cls = int(_first(rec, "dns.qry.class", "0x0"), 16)
                questions.append((tshark_name(_first(rec, "dns.qry.name", ABSENT)),
                                  _int(_first(rec, "dns.qry.type", "-1")), cls,
                                  _first(rec, "dns.qry.qu", "0") in ("1", "True")))
                continue
            r = _tshark_record(rec, mdns)
            if sec == "additional" and r["rtype"] == 41 and edns is None:
                edns = _tshark_edns(rec)  # the OPT record is EDNS, not an additional record
                continue
            sections[sec].append(r)
    cnt = (("dns.count.prerequisites", "dns.count.updates") if update else
           ("dns.count.answers", "dns.count.auth_rr"))
    rcode = (flags & 0xF) | ((edns["ext_rcode"] << 4) if edns else 0)
    qd = _first(layer, "dns.count.zones" if update else "dns.count.queries", "0")
    return Msg(int(_first(layer, "dns.id", "0x0"), 16), flags, rcode,
               tuple(_int(_first(layer, k, "0")) for k in (*cnt, "dns.count.add_rr")), int(qd),
               questions, sections, edns)


def run_tshark(path: str) -> tuple[dict[int, list[Msg]], set[int], set[int]]:
    """frame -> [Msg] as tshark decodes them; the frames skipped (ICMP, DoH);
    the UDP/TCP ports of the frames with DNS."""
    cmd = ["tshark", "-n", "-r", path, "-Y", "dns or mdns or llmnr", "-T", "json",
           "-J", "frame udp tcp dns mdns llmnr"]
    out = subprocess.run(cmd, capture_output=True, timeout=300).stdout
    try:
        pkts = json.loads(out.decode("utf-8", "surrogateescape") or "[]", object_pairs_hook=list)
    except ValueError:
        pkts = []
    frames: dict[int, list[Msg]] = {}
    skipped: set[int] = set()
    ports: set[int] = set()
    for pkt in pkts:
        layers = _first(_first(pkt, "_source", []), "layers", [])
        fr = _first(layers, "frame", [])
        num = _int(_first(fr, "frame.number", "0"))
        protos = set(_first(fr, "frame.protocols", "").split(":"))
        if protos & SKIP_PROTOCOLS:
            skipped.add(num)
            continue
        for k, v in layers:
            if k in ("udp", "tcp") and isinstance(v, list):
                for pk in (f"{k}.srcport", f"{k}.dstport"):
                    if _first(v, pk, None):
                        ports.add(_int(_first(v, pk)))
        msgs = [tshark_msg(v, k == "mdns") for k, v in layers if k in DNS_LAYERS and isinstance(v, list)]
        if msgs:
            frames[num] = msgs
    return frames, skipped, ports


# --- our side ---------------------------------------------------------------------------

def our_msg(ev) -> Msg:
    secs = {}
    for s in SECTIONS:
        secs[s] = [{"name": our_name(r.name), "rtype": r.rtype, "ttl": r.ttl, "rclass": r.rclass,
                    "cache_flush": bool(r.cache_flush), "rdlength": r.rdlength, "data": r.data}
                   for r in getattr(ev, s) or ()]
    e = ev.edns
    edns = None if e is None else {
        "udp_size": e.udp_size, "do": bool(e.do), "version": e.version, "flags": e.flags,
        "ext_rcode": e.ext_rcode, "client_subnet": e.client_subnet, "client_subnet_scope": e.client_subnet_scope,
        "options": [(o.code, o.name, our_option(o.code, o.data)) for o in (e.options or ())]}
    return Msg(ev.id, ev.flags, ev.rcode, (ev.ancount, ev.nscount, ev.arcount), len(ev.questions),
               [(our_name(q.name), q.qtype, q.qclass, bool(q.unicast_response)) for q in ev.questions],
               secs, edns, ev)


def our_frames(path: str, ports) -> dict[int, list[Msg]]:
    res: dict[int, list[Msg]] = {}
    dec = PacketDecoder(ports)
    reader = PcapReader(path)
    try:
        for n, (ts, lt, data) in enumerate(reader, 1):
            evs = dec.frame(ts, lt, data)
            if evs:
                res[n] = [our_msg(e) for e in evs]
    finally:
        reader.close()
    return res


# --- the comparison ---------------------------------------------------------------------

@dataclass
class Result:
    capture: str
    counts: dict = field(default_factory=lambda: {f: [0, 0] for f in FAMILIES})  # family -> [compared, agreed]
    bad: list = field(default_factory=list)  # (capture, frame, family, field, ours, tshark, cause)
    not_compared: Counter = field(default_factory=Counter)  # rdata of types not rebuilt from tshark
    messages: int = 0

    def check(self, frame: int, family: str, name: str, ours, theirs, cause: str = "") -> bool:
        c = self.counts[family]
        c[0] += 1
        if ours == theirs:
            c[1] += 1
            return True
        self.bad.append((self.capture, frame, family, name, _show(ours), _show(theirs), cause or name))
        return False


def _show(v) -> str:
    if isinstance(v, bytes):
        s = "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in v)
    else:
        s = repr(v) if isinstance(v, tuple) else str(v)
    return s if len(s) <= 100 else s[:97] + "..."


def _damaged(ours, theirs, o: Msg):
    """Our name stands for tshark's DAMAGED when our message is marked malformed."""
    if theirs is DAMAGED and ours is not ABSENT and o.ev is not None and o.ev.malformed:
        return DAMAGED
    return ours


#: records (and questions) the decoder keeps per section by default (PacketDecoder's
#: max_answers, a bound against one packet of thousands of names); the header's counts
#: stay true, and tshark's records beyond the bound are counted as not compared
KEPT = 64


def _kept(res: Result, ours: list, theirs: list, section: str) -> list:
    if len(ours) == KEPT and len(theirs) > KEPT:
        res.not_compared[f"{section} beyond the {KEPT} kept"] += len(theirs) - KEPT
        return theirs[:KEPT]
    return theirs


def _compare_msg(res: Result, frame: int, t: Msg, o: Msg) -> None:
    ck = res.check
    ck(frame, "header", "id", o.id, t.id)
    ck(frame, "header", "flags", f"0x{o.flags:04x}", f"0x{t.flags:04x}")
    ck(frame, "header", "rcode", o.rcode, t.rcode)
    for nm, a, b in zip(("ancount", "nscount", "arcount"), o.counts, t.counts):
        ck(frame, "header", nm, a, b)
    tqs = _kept(res, o.questions, t.questions, "questions")
    ck(frame, "questions", "count", len(o.questions), len(tqs))
    for i in range(max(len(o.questions), len(tqs))):
        oq = o.questions[i] if i < len(o.questions) else (ABSENT,) * 4
        tq = tqs[i] if i < len(tqs) else (ABSENT,) * 4
        for nm, a, b in zip(("name", "qtype", "qclass", "unicast_response"), oq, tq):
            ck(frame, "questions", nm, _damaged(a, b, o), b)
    for s in SECTIONS:
        orr, trr = o.sections[s], t.sections[s]
        trr = _kept(res, orr, trr, s)
        ck(frame, s, "count", len(orr), len(trr))
        for i in range(max(len(orr), len(trr))):
            a = orr[i] if i < len(orr) else {}
            b = trr[i] if i < len(trr) else {}
            rt = b.get("rtype", a.get("rtype"))
            for nm in ("name", "rtype", "ttl", "rclass", "cache_flush", "rdlength"):
                ck(frame, s, nm, _damaged(a.get(nm, ABSENT), b.get(nm, ABSENT), o), b.get(nm, ABSENT),
                   f"{nm} ({QTYPES.get(rt, rt)})")
            if not a or not b:
                continue
            if b["rdata"] is None:
                res.not_compared[QTYPES.get(rt, f"TYPE{rt}")] += 1
                continue
            mine = our_rdata(a["rtype"], a["data"], b["hex"])
            if DAMAGED in b["rdata"] and o.ev is not None and o.ev.malformed:  # see tshark_name
                mine = tuple(DAMAGED if y is DAMAGED else x for x, y in zip(mine, b["rdata"]))
            ck(frame, "rdata", f"{s}.{QTYPES.get(rt, rt)}", mine, b["rdata"], f"rdata {QTYPES.get(rt, f'TYPE{rt}')}")
    oe, te = o.edns, t.edns
    ck(frame, "edns", "present", oe is not None, te is not None)
    if oe is None or te is None:
        return
    for nm in ("udp_size", "do", "version", "flags", "ext_rcode", "client_subnet", "client_subnet_scope"):
        a, b = oe[nm], te[nm]
        if nm == "client_subnet" and a:
            a = _ip(a.split("/")[0]) + "/" + a.split("/")[1] if "/" in a else a
        ck(frame, "edns", nm, a, b)
    ck(frame, "edns", "options.count", len(oe["options"]), len(te["options"]))
    for i in range(max(len(oe["options"]), len(te["options"]))):
        a = oe["options"][i] if i < len(oe["options"]) else (ABSENT,) * 3
        b = te["options"][i] if i < len(te["options"]) else (ABSENT,) * 3
        opt = b[1] if b[0] != ABSENT else a[1]
        for nm, x, y in zip(("code", "name", "data"), a, b):
            ck(frame, "edns", f"option.{nm}", x, y, f"option {opt} {nm}")


def _match(t: Msg, pool: list[Msg]) -> Msg | None:
    for pred in (lambda o: o.id == t.id and o.flags == t.flags and o.questions[:1] == t.questions[:1],
                 lambda o: o.id == t.id and o.flags == t.flags, lambda o: o.id == t.id):
        for i, o in enumerate(pool):
            if pred(o):
                return pool.pop(i)
    return None


def compare_capture(path: str) -> Result:
    """Compare every DNS message of one capture, field by field."""
    res = Result(Path(path).name)
    try:
        ref, skipped, ports = run_tshark(path)
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"{path}: tshark's output not understood: {e!r}") from e
    # Port selection is configuration, not decoding: our decoder is given the
    # service ports tshark found DNS on (as tests/oracle.py compare() does).
    ours = our_frames(path, DEFAULT_PORTS | _DNS_LIKE_PORTS(frozenset(ports)))
    frames = sorted((set(ref) | set(ours)) - skipped)
    pools = {f: list(ours.get(f, [])) for f in frames}
    missing = []
    for frame in frames:
        for t in ref.get(frame, []):
            res.messages += 1
            o = _match(t, pools[frame])
            if o is None:
                missing.append((frame, t))
                continue
            res.check(frame, "header", "message", "emitted", "emitted")
            _compare_msg(res, frame, t, o)
    for frame, t in missing:
        # TCP: a message both decode may be given to a neighbouring frame (a
        # segment missing or retransmitted): which frame is reassembly, not decoding
        near = [f for f in frames if abs(f - frame) <= 8 and pools[f]]
        o = next((x for f in near for x in [_match(t, [y for y in pools[f] if y.id == t.id])] if x), None)
        if o is not None:
            for f in near:
                if o in pools[f]:
                    pools[f].remove(o)
            res.check(frame, "header", "message", "emitted", "emitted")
            _compare_msg(res, frame, t, o)
        else:
            res.check(frame, "header", "message", ABSENT, "emitted", "message tshark decodes, we do not emit")
    for frame in frames:
        for o in pools[frame]:
            # on a port we were given only because tshark found DNS there by its
            # heuristics, our message is the port choice's, not the decoder's
            if o.ev.src_port in DEFAULT_PORTS or o.ev.dst_port in DEFAULT_PORTS:
                res.check(frame, "header", "message", f"emitted id={o.id}", ABSENT,
                          "message we emit, tshark does not")
    return res


def compare_all(paths: list[str], workers: int = 2) -> list[Result]:
    """compare_capture over every capture, in ``workers`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(compare_capture, paths, chunksize=1))


def totals(results: list[Result]) -> dict[str, tuple[int, int]]:
    tot = {f: [0, 0] for f in FAMILIES}
    for r in results:
        for f, (c, a) in r.counts.items():
            tot[f][0] += c
            tot[f][1] += a
    return {f: (c, a) for f, (c, a) in tot.items()}


def report(results: list[Result]) -> str:
    """The whole disagreement list, grouped by family and cause, with counts."""
    lines = ["DNS decoding vs tshark: field agreement per family", ""]
    for f, (c, a) in totals(results).items():
        lines.append(f"{f:11} {a:>8,}/{c:<8,} {100 * a / c if c else 100:8.3f}%  ({c - a:,} disagree)")
    nc = Counter()
    for r in results:
        nc.update(r.not_compared)
    lines += ["", f"messages compared: {sum(r.messages for r in results):,} in {len(results)} captures",
              "rdata not compared (tshark's fields do not rebuild the rdata): "
              + (", ".join(f"{k} {v}" for k, v in nc.most_common()) or "none"), ""]
    groups = defaultdict(list)
    for r in results:
        for b in r.bad:
            groups[(b[2], b[6])].append(b)
    for (fam, cause), bs in sorted(groups.items(), key=lambda x: (FAMILIES.index(x[0][0]), -len(x[1]))):
        caps = Counter(b[0] for b in bs)
        lines.append(f"== {fam}: {cause}: {len(bs):,} in {len(caps)} captures "
                     f"({', '.join(f'{k} {v}' for k, v in caps.most_common(6))}{', ...' if len(caps) > 6 else ''})")
        for b in bs:
            lines.append(f"   {b[0]} {b[1]} {b[2]}.{b[3]} ours={b[4]} tshark={b[5]}")
        lines.append("")
    return "\n".join(lines) + "\n"


def all_captures(data: Path) -> list[Path]:
    pats = ["pcap/*/*.pcap", "pcap/*/*.pcapng", "tunnel/*.pcap", "tunnel/ndpi/*.pcap*"]
    return sorted(p for pat in pats for p in data.glob(pat))


if __name__ == "__main__":  # python tests/tshark_fields.py REPORT_FILE: the full report
    from detector.paths import shared_data

    out = compare_all([str(p) for p in all_captures(shared_data())])
    text = report(out)
    Path(sys.argv[1]).write_text(text) if len(sys.argv) > 1 else print(text)
    print("\n".join(text.splitlines()[:12]))
