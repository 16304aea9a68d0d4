"""The pure-Python DNS decoder (detector/dns/wire.py, the fallback when the C
decoder is not built) on hostile messages: no state shared between messages,
the C decoder's pointer and name-length limits, and a differential test
against C on a seeded mutation corpus of real messages."""

from __future__ import annotations

import random
import struct

import pytest

from detector.dns import wire
from test_wire_c import ARGS, outcome, payloads

needs_c = pytest.mark.skipif(wire._cwire is None, reason="C decoder not built (no compiler)")


def header(qd=1, an=0, ns=0, ar=0, flags=0x0100, qid=0x1234) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def label_name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


def pointer_at(prefix: bytes, target: bytes, at: int = 0x100) -> bytes:
    """A query whose name is ``data1`` then a pointer to offset ``at``, where
    ``target`` (a name in wire form) is placed; bytes between are padding."""
    m = header() + b"\x05data1" + struct.pack("!H", 0xC000 | at) + b"\x00\x01\x00\x01"
    return (m + prefix).ljust(at, b"\0") + target


def test_one_message_never_changes_how_the_next_decodes():
    """The name bytes before the first NUL are the same in both messages (the
    pointer C1 00 ends in a NUL); the names they point to are not."""
    first = pointer_at(b"", label_name(b"google", b"com"))
    second = pointer_at(b"", label_name(b"evil1", b"xyz"))
    assert wire.py_decode(first, *ARGS).qname == "data1.google.com"
    assert wire.py_decode(second, *ARGS).qname == "data1.evil1.xyz"
    assert wire.py_decode(first, *ARGS).qname == "data1.google.com"


@needs_c
def test_64_pointers_in_a_question_then_an_answer_pointing_at_it():
    """The question name takes exactly MAX_HOPS pointers (allowed); an answer
    pointing at it takes one more: both decoders keep the question, and the
    answer with no name (the loop is stepped over: the name's end in place is
    its first pointer), malformed compression_loop."""
    hops = wire.MAX_HOPS
    chain_at = 12 + 2 + 4 + 2 + 10 + 4
    name_at = chain_at + 2 * (hops - 1)
    m = header(an=1, flags=0x8180) + struct.pack("!H", 0xC000 | chain_at) + b"\x00\x01\x00\x01"
    m += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    for i in range(hops - 1):
        nxt = chain_at + 2 * (i + 1) if i < hops - 2 else name_at
        m += struct.pack("!H", 0xC000 | nxt)
    m += label_name(b"foo", b"com")
    py, c = wire.py_decode(m, *ARGS), wire.decode(m, *ARGS)
    assert py.qname == "foo.com" and py.malformed == "compression_loop"
    assert [(a.name, a.data) for a in py.answers] == [("", "192.0.2.1")]
    assert outcome(wire.py_decode, m) == outcome(wire.decode, m)
    # start the question one pointer further down the chain: 63 + 1 hops, the answer fits
    m2 = m[:12] + struct.pack("!H", 0xC000 | (chain_at + 2)) + m[14:]
    py = wire.py_decode(m2, *ARGS)
    assert not py.malformed and py.answers[0].name == "foo.com"
    assert outcome(wire.py_decode, m2) == outcome(wire.decode, m2)


@pytest.mark.parametrize("fn", ["py", "c"])
def test_names_over_255_bytes_on_the_wire_are_cut(fn):
    """RFC 1035 2.3.4: 255 bytes with the length bytes and the root. 255 passes,
    256 is name_too_long, in both decoders, and through a pointer too; the
    question is kept, its name cut before the label that crosses 255."""
    if fn == "c" and wire._cwire is None:
        pytest.skip("C decoder not built")
    dec = wire.py_decode if fn == "py" else wire.decode
    ok = label_name(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)  # 255 bytes
    long = label_name(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62)  # 256 bytes
    assert len(ok) == 255 and len(long) == 256
    q = lambda name: header() + name + b"\x00\x01\x00\x01"  # noqa: E731
    ev = dec(q(ok), *ARGS)
    assert not ev.malformed and len(ev.qname) == 253
    ev = dec(q(long), *ARGS)
    assert ev.malformed == "name_too_long" and ev.qname == "a" * 63 + "." + "b" * 63 + "." + "c" * 63
    assert ev.qtype == 1
    # 200 bytes of labels, then a pointer to a 56-byte name: 256 in all
    tail = label_name(b"x" * 54)
    assert len(tail) == 56
    m = header() + label_name(b"p" * 63, b"q" * 63, b"r" * 63, b"s" * 7)[:-1]
    m += struct.pack("!H", 0xC000 | (len(m) + 6)) + b"\x00\x01\x00\x01" + tail
    ev = dec(m, *ARGS)
    assert ev.malformed == "name_too_long" and ev.qname.endswith(".sssssss") and ev.qtype == 1


def _mutate(rnd: random.Random, m: bytes, others: list[bytes]) -> bytes:
    b = bytearray(m)
    op = rnd.randrange(10)
    if op == 0 and len(b) > 12:
        b = b[:rnd.randrange(12, len(b))]  # cut short
    elif op == 1:
        for _ in range(rnd.randint(1, 6)):  # bit flips
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == 2 and len(b) > 14:  # a pointer anywhere, to anywhere (loops, forward, past end)
        i = rnd.randrange(12, len(b) - 1)
        t = rnd.randrange(len(b) + 8)
        b[i], b[i + 1] = 0xC0 | (t >> 8 & 0x3F), t & 0xFF
    elif op == 3:
        b[4:12] = bytes(rnd.randrange(256) for _ in range(8))  # lying counts
    elif op == 4 and len(b) > 13:  # a label length that lies, or a reserved label type
        i = rnd.randrange(12, len(b))
        b[i] = rnd.choice([0x3F, 0x40, 0x80, rnd.randrange(64), 0xFF])
    elif op == 5:  # splice: this message's head, another's tail
        o = rnd.choice(others)
        b = b[:rnd.randrange(12, max(13, len(b)))] + o[rnd.randrange(max(1, len(o))):]
    elif op == 6 and len(b) > 14:  # the question reached through 60-66 pointers
        try:
            qend = wire.skip_name(m, 12)
        except wire.DnsParseError:
            return bytes(b)
        qname = m[12:qend]
        rest = b[qend:]
        n = rnd.randint(60, 66)  # the question's own pointer + n - 1 in a chain
        at = 14 + len(rest)
        chain = b"".join(struct.pack("!H", 0xC000 | (at + 2 * (k + 1))) for k in range(n - 1))
        b = bytearray(b[:12]) + struct.pack("!H", 0xC000 | at) + rest + chain + qname
    elif op == 7:  # a long name: labels appended up to around 255 bytes
        total = rnd.randint(240, 260)
        name = b""
        while len(name) + 1 < total:
            ln = min(63, total - len(name) - 2)
            name += bytes([ln]) + b"z" * ln
        b = bytearray(b[:12]) + name + b"\0" + b[12:]
        b[4:6] = b"\x00\x01"
    elif op == 8:  # a label then a pointer to 0x100 (its low byte a NUL), another name there
        target = rnd.choice(others)
        try:
            tend = wire.skip_name(target, 12)
        except wire.DnsParseError:
            return bytes(b)
        b = bytearray(pointer_at(b"", target[12:tend]))
    else:  # a message that ends with the first bytes of another
        b += others[rnd.randrange(len(others))][:rnd.randrange(1, 40)]
    return bytes(b)


@needs_c
def test_python_and_c_agree_on_a_mutation_corpus(data):
    """Real messages from the shared captures, mutated with a seeded RNG: each
    mutant gives the same event, or the same refusal, from both decoders; the
    Python decoder gives the same result whatever it decoded before (no state)."""
    msgs = [m for m in payloads(data, limit_per_file=200) if len(m) >= 2]
    assert len(msgs) > 1000
    rnd = random.Random(1212)
    cases = 6000
    mutants = [_mutate(rnd, rnd.choice(msgs), msgs) for _ in range(cases)]
    kinds = set()
    for m in mutants:
        py = outcome(wire.py_decode, m)
        assert py == outcome(wire.decode, m), m.hex()
        kinds.add(py[1] if py[0] == "error" else wire.py_decode(m, *ARGS).malformed)
    # the same mutants again, in another order: a stateless decoder gives the same
    order = list(range(cases))
    rnd.shuffle(order)
    for i in order[:1500]:
        assert outcome(wire.py_decode, mutants[i]) == outcome(wire.decode, mutants[i])
    assert {"compression_loop", "bad_pointer", "name_too_long", "truncated_record", "bad_label"} <= kinds


@pytest.mark.parametrize("fn", [wire.py_decode, wire.decode], ids=["python", "c"])
def test_damaged_questions_are_kept_and_questions_kept_are_bounded(data, fn):
    from test_wire_c import _Collect
    from detector.capture.pcap import PcapReader

    def first(name):
        dec = _Collect()
        for ts, lt, fr in PcapReader(str(data / "pcap" / "tcpdump_tests" / name)):
            dec.frame(ts, lt, fr)
        return dec.payloads[0]

    # tcpdump's forward-pointer capture: one 63 KB packet of 10,518 questions whose names
    # loop forward past 255 bytes; each is in place whole, so reading goes on (tshark
    # shows all 10,518 as <Name too long>), and 64 are kept: not 8 MB of names
    buf = first("dns_fwdptr.pcap")
    ev = fn(buf, *ARGS)
    assert ev.malformed == "name_too_long" and len(ev.questions) == 64
    assert all(q.qtype == 507 for q in ev.questions)  # type and class kept, as tshark shows
    assert len(fn(buf, *ARGS, 20_000).questions) == 10_518
    # a pointer out of the message: the question is kept with its type and class, and
    # what follows is not read as more questions (its alignment is unknown)
    msg = header(qd=3) + b"\x03abc\xff\xff" + b"\x00\x01\x00\x01" + b"\x3f" * 40
    ev = fn(msg, *ARGS)
    assert ev.malformed == "bad_pointer" and [(q.name, q.qtype) for q in ev.questions] == [("abc", 1)]
    # 100 well-formed questions: 64 kept (as records per section), the count stays true
    msg = header(qd=100) + b"".join(label_name(b"q%d" % i, b"example", b"com") + b"\0\1\0\1"
                                    for i in range(100))
    ev = fn(msg, *ARGS)
    assert len(ev.questions) == 64 and ev.questions[63].name == "q63.example.com" and not ev.malformed
    assert len(fn(msg, *ARGS, 100).questions) == 100
