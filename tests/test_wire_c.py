"""The C decoder (detector/dns/_cwire.c) against the Python reference decoder.

Both must produce the same DnsEvent, or the same error kind, for every DNS
message in the shared captures and for thousands of mutated (truncated,
bit-flipped, pointer-looped) copies of them: hostile input must not make the
two disagree, crash or hang.
"""

from __future__ import annotations

import random
from dataclasses import astuple

import pytest

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.dns import wire

pytestmark = pytest.mark.skipif(wire._cwire is None, reason="C decoder not built (no compiler)")

ARGS = (1.5, "udp", 4, "10.0.0.1", 5353, "10.0.0.2", 53)  # mDNS's port: class top bits are flags
DNS_ARGS = (1.5, "udp", 4, "10.0.0.1", 40000, "10.0.0.2", 53)  # plain DNS: classes as they are


class _Collect(PacketDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    def _dns(self, ts, transport, ipv, src, sport, dst, dport, payload, out, short=False) -> None:
        self.payloads.append(bytes(payload))


def payloads(data, limit_per_file: int = 3000) -> list[bytes]:
    pats = ["pcap/*/*.pcap", "pcap/*/*.pcapng", "tunnel/*.pcap", "tunnel/ndpi/*.pcap*"]
    out: list[bytes] = []
    for p in sorted(q for pat in pats for q in data.glob(pat)):
        dec = _Collect()
        for ts, lt, fr in PcapReader(str(p)):
            dec.frame(ts, lt, fr)
            if len(dec.payloads) >= limit_per_file:
                break
        out.extend(dec.payloads)
    return out


def decoded_both(msgs, args):
    """(C event, Python event) for each message both decoders take."""
    for m in msgs:
        try:
            got = wire.decode(m, *args)
        except wire.DnsParseError:
            continue
        yield got, wire.py_decode(m, *args)


def outcome(fn, buf: bytes, args=ARGS):
    try:
        ev = fn(buf, *args)
    except wire.DnsParseError as e:
        return ("error", e.kind, str(e))
    return astuple(ev)


def test_c_and_python_decoders_agree_on_real_and_mutated_messages(data):
    msgs = payloads(data)
    assert len(msgs) > 3000
    agree = 0
    for m in msgs:
        for args in (ARGS, DNS_ARGS):
            assert outcome(wire.decode, m, args) == outcome(wire.py_decode, m, args), m.hex()
        agree += 1
    rnd = random.Random(7)
    mutated = 0
    for m in rnd.sample(msgs, 3000):
        b = bytearray(m)
        op = rnd.randrange(6)
        if op == 0 and len(b) > 12:
            b = b[: rnd.randrange(12, len(b))]  # truncated
        elif op == 1:
            for _ in range(rnd.randint(1, 4)):  # bit flips
                i = rnd.randrange(len(b))
                b[i] ^= 1 << rnd.randrange(8)
        elif op == 2 and len(b) > 14:
            i = rnd.randrange(12, len(b) - 1)  # a pointer to itself: a loop
            b[i], b[i + 1] = 0xC0 | (i >> 8), i & 0xFF
        elif op == 4 and len(b) > 13:  # a reserved label type or a lying label length
            b[rnd.randrange(12, len(b))] = rnd.choice([0x40, 0x80, 0x3F, rnd.randrange(64)])
        elif op == 5 and len(b) > 16:  # a lying rdlength (or option length) near the end
            i = rnd.randrange(max(12, len(b) - 40), len(b) - 1)
            b[i:i + 2] = rnd.randrange(0, 64).to_bytes(2, "big")
        else:
            b[6:12] = bytes(rnd.randrange(256) for _ in range(6))  # lying counts
        b = bytes(b)
        for args in (ARGS, DNS_ARGS):
            assert outcome(wire.decode, b, args) == outcome(wire.py_decode, b, args), b.hex()
        mutated += 1
    assert agree == len(msgs) and mutated == 3000


def test_c_decoder_escapes_hostile_names_like_python():
    # a label with control, space, dot, backslash and a high byte, then a TXT answer
    q = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    q += b"\x07a\x00b.c\\\xff\x03com\x00\x00\x10\x00\x01"
    q += b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x08\x07h\x01\"i\\ \x7f"
    ev = wire.decode(q, *ARGS)
    assert ev.questions[0].name == "a\\000b\\.c\\\\\\255.com"
    assert ev.answers[0].data == '"h\\001\\"i\\\\ \\127"'
    assert astuple(ev) == astuple(wire.py_decode(q, *ARGS))
    with pytest.raises(wire.DnsParseError) as e:
        wire.decode(b"\x00" * 5, *ARGS)
    assert e.value.kind == "short_header" and "5 bytes" in str(e.value)


def test_c_decoder_builds_events_by_field_name(data):
    """The C decoder passes field names, not positions: a DnsEvent class whose fields
    are declared in another order gets every value in the right field, and a class
    that lacks a field is refused at setup with its name."""
    from dataclasses import MISSING, field, fields, make_dataclass

    from detector.events import Answer, DnsEvent, Edns, Question

    def spec(f):
        if f.default is not MISSING:
            return (f.name, object, field(default=f.default))
        if f.default_factory is not MISSING:
            return (f.name, object, field(default_factory=f.default_factory))
        return (f.name, object)

    def klass(name, keep):
        fs = [f for f in fields(DnsEvent) if keep(f.name)]
        required = [spec(f) for f in fs if len(spec(f)) == 2]
        optional = [spec(f) for f in fs if len(spec(f)) == 3]
        return make_dataclass(name, required[::-1] + optional[::-1], slots=True)  # another order

    flipped = klass("Flipped", lambda n: True)
    msgs = payloads(data, limit_per_file=50)[:500]
    try:
        wire._cwire.setup(flipped, Question, Answer, Edns, wire.DnsParseError)
        for got, ref in decoded_both(msgs, ARGS):
            assert type(got) is flipped
            for f in fields(DnsEvent):
                assert getattr(got, f.name) == getattr(ref, f.name), f.name
        lacking = klass("Lacking", lambda n: n != "size")
        with pytest.raises(TypeError, match="has no field 'size'"):
            wire._cwire.setup(lacking, Question, Answer, Edns, wire.DnsParseError)
    finally:
        wire.setup_c()
    assert type(wire.decode(msgs[0], *ARGS)) is DnsEvent


def test_c_decoder_fills_records_slot_by_slot_as_their_init_would(data):
    """The C decoder fills DnsEvent, Question and Answer slot by slot instead of running
    their __init__ (the cost of three calls an event): every field, those it passes and
    those left to their defaults, holds what __init__ would put there, a default factory
    gives each record its own object, and a class whose __init__ does more is called."""
    from dataclasses import field, fields, make_dataclass

    from detector.events import Answer, DnsEvent, Question

    assert set(wire._cwire.planned()) == {DnsEvent, Question, Answer}
    msgs = payloads(data, limit_per_file=200)
    checked = 0
    for got, ref in decoded_both(msgs, DNS_ARGS):
        for f in fields(DnsEvent):  # every slot set: a missing one raises AttributeError here
            assert getattr(got, f.name) == getattr(ref, f.name), f.name
        for a, b in zip(got.answers + got.questions, ref.answers + ref.questions):
            assert type(a) is type(b) and a == b
        checked += 1
    assert checked > 1000

    # a trailing field with a default factory: each event gets its own list
    tagged = make_dataclass("Tagged", [(f.name, f.type, f) for f in fields(DnsEvent)]
                            + [("tags", list, field(default_factory=list))], slots=True)
    # and a class whose __post_init__ must run: it is called, not filled
    def post(self):
        self.tags = ["post"]

    posted = make_dataclass("Posted", [(f.name, f.type, f) for f in fields(DnsEvent)]
                            + [("tags", list, field(default_factory=list))], slots=True,
                            namespace={"__post_init__": post})
    m = next(m for m in msgs if len(m) > 12 and m[4:6] != b"\0\0")
    try:
        wire.setup_c(tagged)
        assert tagged in wire._cwire.planned()
        one, two = wire.decode(m, *DNS_ARGS), wire.decode(m, *DNS_ARGS)
        assert type(one) is tagged and one.tags == [] and one.tags is not two.tags
        assert one.questions == wire.py_decode(m, *DNS_ARGS).questions
        wire.setup_c(posted)
        assert posted not in wire._cwire.planned()
        assert wire.decode(m, *DNS_ARGS).tags == ["post"]
    finally:
        wire.setup_c()
    assert set(wire._cwire.planned()) == {DnsEvent, Question, Answer}
