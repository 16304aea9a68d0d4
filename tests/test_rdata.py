"""Typed rdata, EDNS options, mDNS bits and best effort on damage, on real captures.

The oracle for record data is BIND itself: ``named-rrchecker -p`` reads a
record in RFC 3597's generic form (``\\# len hex``, the rdata bytes as they
were on the wire) and prints it in the presentation format dig uses. Our text
differs from it in two documented ways only: names have no trailing dot, and
long base64/hex fields are one piece (dig +nosplit), so each of our tokens
must be a run of the oracle's tokens. EDNS options and the mDNS bits are
checked against tshark's fields; both decoders must give the same events.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import astuple

import pytest

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.dns import rdata, wire

needs_c = pytest.mark.skipif(wire._cwire is None, reason="C decoder not built (no compiler)")

# captures with the rarer types (found with tshark -Y 'dns.resp.type == N')
TYPED = [
    "pcap/zeek_traces/dns__hinfo.pcap", "pcap/zeek_traces/dns__dns-wks.pcap",
    "pcap/suricata_verify/dns__dns-udp-null__input.pcap", "pcap/zeek_traces/dns__loc-29-trunc.pcap",
    "pcap/zeek_traces/dns__loc-invalid-length.pcap", "pcap/zeek_traces/dns__naptr.pcap",
    "pcap/zeek_traces/dnssec__ds.pcap", "pcap/suricata_verify/dns__dns-sshfp__dns-sshfp.pcap",
    "pcap/tcpdump_tests/dnssec.pcap", "pcap/zeek_traces/dns__sshfp-trunc.pcap",
    "pcap/zeek_traces/dns-edns-ecs.pcap", "pcap/zeek_traces/dnssec__dnskey.pcap",
    "pcap/zeek_traces/dnssec__nsec3.pcap", "pcap/zeek_traces/dnssec__nsec3param.pcap",
    "pcap/zeek_traces/dns-svcb.pcap", "pcap/zeek_traces/dns-svcb-rdlength-mismatch.pcap",
    "pcap/zeek_traces/dns-https.pcap", "pcap/zeek_traces/dns__ech.pcap",
    "pcap/zeek_traces/dns__svcb-alpn-malformed-len-too-long.pcap",
    "pcap/zeek_traces/dns__svcb-alpn-malformed-len-too-short.pcap", "pcap/tcpdump_tests/dns-uri.pcap",
    "pcap/zeek_traces/dns-caa.pcap", "pcap/dnscap_tests/sll2.pcap", "pcap/zeek_traces/dns-txt-multiple.pcap",
    "pcap/zeek_traces/dns-spf.pcap", "pcap/suricata_verify/dns__dns-udp-eve-txt__input.pcap",
]
PLAIN = {1, 16, 28, 99}  # types wire.py does itself with no names (the generic form can say them)


class _Frames(PacketDecoder):
    """The DNS payloads of a capture with their frame number and ports."""

    def __init__(self) -> None:
        super().__init__()
        self.frame_no = 0
        self.msgs: list[tuple[int, bytes, int, int]] = []

    def _dns(self, ts, transport, ipv, src, sport, dst, dport, payload, out, short=False) -> None:
        self.msgs.append((self.frame_no, bytes(payload), sport, dport))


def frames(path) -> list[tuple[int, bytes, int, int]]:
    dec = _Frames()
    for i, (ts, lt, fr) in enumerate(PcapReader(str(path)), 1):
        dec.frame_no = i
        dec.frame(ts, lt, fr)
    return dec.msgs


def args(sport: int, dport: int) -> tuple:
    return (1.0, "udp", 4, "192.0.2.1", sport, "192.0.2.2", dport)


def both(m: bytes, sport: int = 40000, dport: int = 53, max_answers: int = 64):
    """The event from the Python decoder, checked equal to the C decoder's."""
    ev = wire.py_decode(m, *args(sport, dport), max_answers)
    if wire._cwire is not None:
        assert astuple(wire.decode(m, *args(sport, dport), max_answers)) == astuple(ev), m.hex()
    return ev


def raw_records(m: bytes):
    """(rtype, rdata offset, rdlength) of every record, by walking the wire form."""
    qd, an, ns, ar = struct.unpack_from("!HHHH", m, 4)
    off = 12
    for _ in range(qd):
        off = wire.skip_name(m, off) + 4
    for _ in range(an + ns + ar):
        off = wire.skip_name(m, off)
        t, _, _, ln = struct.unpack_from("!HHIH", m, off)
        off += 10
        if off + ln > len(m):
            return
        yield t, off, ln
        off += ln


def bind_text(rtype: int, rd: bytes) -> str | None:
    """BIND's presentation of the rdata, None when BIND refuses it."""
    p = subprocess.run(["named-rrchecker", "-p"], input=f"IN TYPE{rtype} \\# {len(rd)} {rd.hex()}\n",
                       capture_output=True, text=True, timeout=20)
    if p.returncode:
        return None
    return p.stdout.split("\t", 2)[2].strip()


def same_as_bind(ours: str, bind: str) -> bool:
    """Each of our tokens is a run of BIND's (its long fields are cut every 56
    characters); BIND's names end with a dot (outside quotes), ours do not."""
    theirs = [t[:-1] if len(t) > 1 and t.endswith(".") and not t.startswith('"') else t
              for t in bind.split(" ")]
    j = 0
    for tok in ours.split(" "):
        acc = ""
        while acc != tok:
            if j >= len(theirs) or len(acc) >= len(tok):
                return False
            acc += theirs[j]
            j += 1
    return j == len(theirs)


def test_record_data_is_what_bind_prints_on_real_records(data):
    assert shutil.which("named-rrchecker"), "named-rrchecker (bind9, installed by setup.sh) is needed"
    seen: set[tuple[int, bytes]] = set()
    refused = []
    for f in TYPED:
        for _, m, sp, dp in frames(data / f):
            try:
                raw = list(raw_records(m))
            except wire.DnsParseError:
                continue
            ev = both(m, sp, dp, max_answers=1000)
            recs = list(ev.answers) + list(ev.authority) + list(ev.additional)
            # the first OPT of the additional section is ev.edns, not a record
            if ev.edns is not None:
                start = ev.ancount + ev.nscount
                opts = [i for i, r in enumerate(raw) if r[0] == 41 and i >= start]
                if opts:
                    raw.pop(opts[0])
            assert len(recs) == len(raw), f
            for (t, off, ln), rec in zip(raw, recs):
                assert rec.rtype == t and rec.rdlength == ln
                if not (t in rdata._PRESENT or t in PLAIN) or t in (249, 250) or not ln:
                    continue
                key = (t, m[off:off + ln])
                if key in seen:
                    continue
                seen.add(key)
                bind = bind_text(t, m[off:off + ln])
                if bind is None:  # BIND refuses it: so do we, hex and bad_rdata
                    assert rec.data == m[off:off + min(ln, 512)].hex() and ev.malformed == "bad_rdata", f
                    refused.append(t)
                else:
                    assert same_as_bind(rec.data, bind), (f, rec.data, bind)
    types = {t for t, _ in seen}
    assert {10, 11, 13, 16, 29, 35, 43, 44, 46, 47, 48, 50, 51, 64, 65, 99, 256, 257} <= types, types
    assert len(seen) >= 100 and sorted(set(refused)) == [29, 64, 65]


def test_dig_forms_of_the_common_cases(data):
    """Spot checks with the exact text: CAA, HTTPS, DNSKEY, RRSIG times, NSEC3,
    LOC, TXT with several strings."""
    def datas(f, t):
        return [r.data for _, m, sp, dp in frames(data / f)
                for r in both(m, sp, dp).answers if r.rtype == t]
    assert datas("pcap/zeek_traces/dns-caa.pcap", 257)[0] == '0 issue "symantec.com"'
    https = datas("pcap/zeek_traces/dns-https.pcap", 65)
    assert https[0] == ('1 . alpn="h3,h3-29,h3-28,h3-27,h2" ipv4hint=104.16.132.229,104.16.133.229 '
                        'ipv6hint=2606:4700::6810:84e5,2606:4700::6810:85e5')
    txt = datas("pcap/zeek_traces/dns-txt-multiple.pcap", 16)
    assert txt and all(d.startswith('"') and d.endswith('"') for d in txt)
    assert any('" "' in d for d in txt), txt  # string boundaries kept
    rrsig = [d for f in ("pcap/tcpdump_tests/dnssec.pcap",) for d in datas(f, 46)]
    assert rrsig and all(len(d.split()[4]) == 14 and d.split()[4].startswith("20") for d in rrsig)


def test_tsig_and_tkey_as_dig_prints_them(data):
    """BIND will not read TSIG/TKEY (meta types) so the text is checked against
    tshark's fields of the same records."""
    def last(f, t):
        return [r.data for _, m, sp, dp in frames(data / f)
                for r in list(both(m, sp, dp).additional) + both(m, sp, dp).answers if r.rtype == t]
    assert last("pcap/zeek_traces/dns-tsig.pcap", 250)[0] == (
        "hmac-md5.sig-alg.reg.int 1409683154 300 16 Rr2/Me8CNrjrrjF1LIfbfw== 9703 NOERROR 0")
    tkey = last("pcap/zeek_traces/dns__tkey.pcap", 249)
    # gss-tsig, inception/expiry (YYYYMMDDHHMMSS), mode 3 (GSS-API), no error, key size, key
    assert tkey[0].startswith("gss-tsig 20230221000916 20230222000916 3 NOERROR 3073 YIIL/QYG")
    assert tkey[0].endswith(" 0")


def test_null_wks_hinfo(data):
    f = lambda p, t: [r.data for _, m, sp, dp in frames(data / p)  # noqa: E731
                      for r in both(m, sp, dp).answers if r.rtype == t]
    null = f("pcap/suricata_verify/dns__dns-udp-null__input.pcap", 10)
    assert null and null[0].startswith("\\# ")
    assert f("pcap/zeek_traces/dns__hinfo.pcap", 13)[0].count('"') == 4


EDNS_QUERIES = [  # tcpdump's edns-opts.pcap, the queries; checked against tshark's dns.opt fields
    [],  # no OPT record
    [],  # an OPT record without options
    [(8, "ECS", "192.0.2.0/24/0")],
    [(8, "ECS", "192.1.2.3/32/0")],
    [(8, "ECS", "2001:db8:85a3::8a2e:0:0/100/0")],
    [(10, "COOKIE", "a954d29208767b5c")],
    [(5, "DAU", "6 7")],
    [(5, "DAU", "253"), (6, "DHU", "2"), (7, "N3U", "1")],
    [(13, "CHAIN", "foo.example.com")],
    [(11, "TCP-KEEPALIVE", "1234")],
    [(14, "KEY-TAG", "40000")],
    [(14, "KEY-TAG", "30000,60000")],
    [(9, "EXPIRE", "")],
    [(9, "EXPIRE", "1209600")],
    [(3, "NSID", "")],
    [(3, "NSID", "00112233445566778899")],
    [(77, "OPT77", "deadbeef")],
    [(12, "PADDING", "6")],
    [(3, "NSID", "0123456789abcdef"), (12, "PADDING", "12"), (10, "COOKIE", "aaaaaaaaaaaaaaaa")],
    [(8, "ECS", "192.1.0.0/16/0"), (10, "COOKIE", "aaaaaaaaaaaaaaaa")],
    [(13, "CHAIN", "com"), (6, "DHU", "3"), (12, "PADDING", "4"), (3, "NSID", "aabbccddeeff")],
]


def _tshark(path, *fields: str, filt: str = "") -> dict[int, list[str]]:
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"]
    for f in fields:
        cmd += ["-e", f]
    if filt:
        cmd += ["-Y", filt]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return {int(x.split("\t")[0]): x.split("\t")[1:] for x in out.splitlines() if x}


def test_edns_options_in_wire_order(data):
    path = data / "pcap/tcpdump_tests/edns-opts.pcap"
    evs = {n: both(m, sp, dp) for n, m, sp, dp in frames(path)}
    queries = [n for n in sorted(evs) if not evs[n].qr]
    got = [[(o.code, o.name, o.data) for o in evs[n].edns.options] if evs[n].edns else [] for n in queries]
    assert got == EDNS_QUERIES
    shark = _tshark(path, "dns.opt.code", "dns.opt.len")
    for n in queries:  # the codes and lengths tshark sees, in its order
        codes = [int(c) for c in shark[n][0].split(",") if c]
        assert [o.code for o in (evs[n].edns.options if evs[n].edns else [])] == codes
    ecs = evs[queries[2]].edns
    assert ecs.client_subnet == "192.0.2.0/24" and ecs.client_subnet_scope == 0
    # the DO bit is the top bit of the flags: tshark agrees per message
    do = _tshark(path, "dns.rr.udp_payload_size", "dns.resp.z.do")
    for n, ev in evs.items():
        if ev.edns is None:
            assert not do[n][0]
            continue
        assert ev.edns.udp_size == int(do[n][0])
        assert ev.edns.do == (do[n][1] == "True" or do[n][1] == "1") and ev.edns.flags == (0x8000 if ev.edns.do else 0)


def test_badcookie_extended_rcode_and_server_cookie(data):
    evs = [both(m, sp, dp) for _, m, sp, dp in frames(data / "pcap/tcpdump_tests/dns-badcookie.pcap")]
    bad = evs[1]
    assert bad.rcode == 23 and bad.edns.ext_rcode == 1 and bad.flags & 0xF == 7  # BADCOOKIE
    client, server = bad.edns.options[0].data.split()
    assert bad.edns.options[0].name == "COOKIE" and len(client) == 16 and len(server) == 32
    assert evs[0].edns.options[0].data == client  # the query sent the client cookie alone
    assert evs[3].rcode == 0


def test_extended_dns_error_text(data):
    opts = [o for _, m, sp, dp in frames(data / "pcap/dnscap_tests/edns.pcap")
            for ev in [both(m, sp, dp)] if ev.edns for o in ev.edns.options if o.code == 15]
    assert opts and opts[0].name == "EDE"
    code = opts[0].data.split(" ", 1)[0]
    assert code.isdigit()


@pytest.mark.parametrize("capture", ["pcap/zeek_traces/dns__mdns.pcap",
                                     "pcap/zeek_traces/encap_or_realworld__var-services-std-ports.pcap"])
def test_mdns_cache_flush_bit_is_taken_out_of_the_class(data, capture):
    path = data / capture
    shark = _tshark(path, "dns.resp.cache_flush", "dns.resp.class", "dns.qry.class", filt="mdns")
    checked = flushed = 0
    for n, m, sp, dp in frames(path):
        if n not in shark:
            continue
        ev = both(m, sp, dp)
        recs = list(ev.answers) + list(ev.authority) + list(ev.additional)
        flush = [int(x) for x in shark[n][0].split(",") if x]
        assert [int(r.cache_flush) for r in recs] == flush
        assert [r.rclass for r in recs] == [int(x, 16) for x in shark[n][1].split(",") if x]
        assert [q.qclass for q in ev.questions] == [int(x, 16) for x in shark[n][2].split(",") if x]
        checked += 1
        flushed += sum(flush)
        # the same message on a port other than 5353: the class keeps its top bit
        plain = both(m, 40000, 53)
        assert [r.rclass for r in list(plain.answers) + list(plain.authority) + list(plain.additional)] == [
            r.rclass | (0x8000 if r.cache_flush else 0) for r in recs]
    assert checked and flushed


def test_mdns_unicast_response_bit_on_a_real_query(data):
    """No capture has a QU question: a real mDNS query with the bit set."""
    n, m, sp, dp = next(x for x in frames(data / "pcap/zeek_traces/dns__mdns.pcap") if x[1][5] == 2)
    end = wire.skip_name(m, 12)
    qu = m[:end + 2] + bytes([m[end + 2] | 0x80]) + m[end + 3:]
    ev = both(qu, sp, dp)
    assert ev.questions[0].unicast_response and ev.questions[0].qclass == 1
    assert not ev.questions[1].unicast_response
    ev = both(qu, 40000, 53)
    assert not ev.questions[0].unicast_response and ev.questions[0].qclass == 0x8001


def test_dns_update_deletes_have_empty_data(data):
    ev = [both(m, sp, dp) for _, m, sp, dp in frames(data / "pcap/zeek_traces/dns__dynamic-update.pcap")][0]
    assert ev.opcode == 5 and ev.zone.name == "StratoLab.org" and ev.zone.qtype == 6
    deletes = [u for u in ev.updates if u.rclass in (254, 255)]
    assert deletes and all(u.data == "" and u.rdlength == 0 for u in deletes)
    assert any(u.rclass == 1 and u.data == "192.168.1.106" for u in ev.updates)


def test_best_effort_on_tcpdumps_bad_label_and_pointer_captures(data):
    """tcpdump prints these questions as far as the damage; so do we, and the
    message is kept (it used to raise nothing but keep no question)."""
    for f, kind in [("pcap/tcpdump_tests/dns-badlabel.pcap", "name_too_long"),
                    ("pcap/tcpdump_tests/dns_fwdptr.pcap", "name_too_long")]:
        (_, m, sp, dp), = frames(data / f)
        ev = wire.decode(m, *args(sp, dp))
        assert ev.malformed == kind and ev.questions
        # cut before the label that crosses 255 bytes: at most 254 bytes of labels
        assert all(len(q.name.encode().decode("unicode_escape", "ignore")) <= 254 for q in ev.questions[:50])
        assert ev.questions[0].name.startswith("\\251.\\001\\251\\003.")
    evs = [both(m, sp, dp) for _, m, sp, dp in frames(data / "pcap/zeek_traces/dns__dns-invalid-names.pcap")]
    loop = [e for e in evs if e.malformed == "compression_loop"]
    assert loop and loop[0].questions[0].name == "" and loop[0].questions[0].qtype == 1


def test_a_bad_pointer_in_an_answer_keeps_the_later_records():
    """An answer whose name points past the end: kept with no name, and the next
    answer decodes (the pointer's two bytes are its end)."""
    q = struct.pack("!HHHHHH", 7, 0x8180, 1, 2, 0, 0) + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    a1 = b"\xc3\xff" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    a2 = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 2])
    ev = both(q + a1 + a2)
    assert ev.malformed == "bad_pointer"
    assert [(a.name, a.data) for a in ev.answers] == [("", "192.0.2.1"), ("www.example.com", "192.0.2.2")]
    # a reserved label type cannot be stepped over: the records before it stay
    ev = both(q + a2 + b"\x40" + a1[2:])
    assert ev.malformed == "bad_label" and [a.data for a in ev.answers] == ["192.0.2.2"]
    assert ev.authority == () and ev.additional == ()


def test_txt_strings_quoted_with_boundaries_and_empty_ones():
    rd = b"\x0bv=spf1 -all\x00\x04a\"b\\\x02\x01\xff"
    q = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\x01x\x00\x00\x10\x00\x01"
    m = q + b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(rd)) + rd
    assert both(m).answers[0].data == '"v=spf1 -all" "" "a\\"b\\\\" "\\001\\255"'
    assert same_as_bind(both(m).answers[0].data, bind_text(16, rd))


def test_a_later_opt_is_a_record_and_max_answers_caps_each_section():
    q = struct.pack("!HHHHHH", 7, 0x8180, 1, 3, 0, 2) + b"\x01x\x00\x00\x01\x00\x01"
    a = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, i]) for i in range(3))
    opt1 = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x01008000, 0)
    opt2 = b"\x00" + struct.pack("!HHIH", 41, 512, 0, 4) + b"\x00\x01\x00\x00"
    ev = both(q + a + opt1 + opt2, max_answers=2)
    assert [x.data for x in ev.answers] == ["192.0.2.0", "192.0.2.1"] and ev.ancount == 3
    assert ev.edns.udp_size == 1232 and ev.edns.do and ev.edns.ext_rcode == 1 and ev.rcode == 16
    assert [(r.rtype, r.rclass, r.data) for r in ev.additional] == [(41, 512, "00010000")]
