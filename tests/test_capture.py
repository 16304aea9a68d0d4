"""Replay of real captures: decoding agrees with tshark, TCP/IP reassembly,
link types, bad input. Uses ../shared/data/pcap and ../shared/data/tunnel."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import json_lines, run_detector
from detector.capture.layers import PacketDecoder
from detector.capture.pcap import CaptureError, PcapReader
from detector.capture.pcapwrite import write_pcap
from detector.pipeline.run import Pipeline
from detector.detect.registry import load_rules
from oracle import compare


def all_captures(data: Path) -> list[Path]:
    pats = ["pcap/*/*.pcap", "pcap/*/*.pcapng", "tunnel/*.pcap", "tunnel/ndpi/*.pcap*"]
    return sorted(p for pat in pats for p in data.glob(pat))


def decode_file(path: Path, ports=frozenset({53, 5353, 5355})) -> tuple[list, PacketDecoder, PcapReader]:
    dec = PacketDecoder(ports)
    reader = PcapReader(str(path))
    evs = []
    for ts, lt, frame in reader:
        evs.extend(dec.frame(ts, lt, frame))
    evs.extend(dec.flush())
    return evs, dec, reader


def test_every_capture_replays_through_the_whole_pipeline(data):
    """Every shared capture goes through decode, correlate, enrich, detect and
    render without an exception; the counters add up."""
    caps = all_captures(data)
    assert len(caps) > 150
    rules = load_rules()
    total_msgs = 0
    for path in caps:
        out = []

        class Collect:
            name = "collect"

            def write(self, doc, key=None):
                out.append(doc)

            def close(self):
                pass

        pipe = Pipeline(rules, [Collect()], [Collect()])
        dec = PacketDecoder()
        reader = PcapReader(str(path))
        for ts, lt, frame in reader:
            for ev in dec.frame(ts, lt, frame):
                pipe.process(ev)
        stats = pipe.close()
        assert dec.packets == reader.packets, path
        assert stats.queries + stats.responses == dec.dns_messages, path
        assert stats.events == len([d for d in out if d["event"]["kind"] == "event"]), path
        total_msgs += dec.dns_messages
    assert total_msgs > 10000


def test_decoding_agrees_with_tshark(data):
    """id, qr, rcode, question name and type and answer count, per frame, against
    tshark as the oracle, over every shared capture."""
    total = agree = 0
    worst = []
    for path in all_captures(data):
        t, a, bad = compare(str(path))
        total += t
        agree += a
        if bad:
            worst.append((path.name, t - a))
    rate = agree / total
    print(f"\ntshark agreement: {agree}/{total} DNS messages = {rate:.4%}; "
          f"disagreements: {sorted(worst, key=lambda x: -x[1])[:8]}")
    assert total > 13000
    assert rate >= 0.995


def test_tcp_several_messages_in_one_segment(data):
    evs, dec, _ = decode_file(data / "pcap/dnscap_tests/dnsotcp-many1pkt.pcap")
    assert [e.id for e in evs] == [0xE7AF, 0xE7AF, 0xE7AF, 0x12CF]
    assert all(e.transport == "tcp" and e.qname == "google.com" for e in evs)


def test_tcp_message_split_across_segments(data):
    evs, _, _ = decode_file(data / "pcap/dnscap_tests/dnsotcp-manyopkts.pcap")
    assert [e.id for e in evs] == [0xE7AF, 0xE7AF, 0xE7AF]
    assert all(e.transport == "tcp" and e.qname == "google.com" for e in evs)


def test_tcp_lost_segments_resync_on_the_next_message(data):
    """A segment missing mid-stream loses that message only; the ones after it
    are recovered (tshark finds 6 messages here, 5 of which survive the hole)."""
    evs, dec, _ = decode_file(data / "pcap/dnscap_tests/dnso1tcp-midmiss.pcap")
    ids = [e.id for e in evs]
    assert ids.count(0xE7AF) == 2 and 0x14D9 in ids and 0x59C6 in ids
    big, _, _ = decode_file(data / "pcap/dnscap_tests/dnso1tcp-bighole.pcap")
    assert len(big) >= 38  # tshark: 41


def test_tcp_resumes_after_a_hole_at_the_next_message_as_tshark_and_dnscap(data):
    """After a hole in DNS over TCP the stream resumes at the next plausible length
    prefix. dnso1tcp-bighole: the server's responses after its hole come at the
    frame that carries them (the receiver's ACK shows the capture lost the bytes
    and the data after the hole starts a message), as tshark decodes them; the
    client's queries after its hole (each prefix sent in a segment of its own,
    which tshark does not follow) are found again, all but the one whose prefix
    fell in the hole. The skipped bytes and the resync are counted."""
    import subprocess

    path = data / "pcap/dnscap_tests/dnso1tcp-bighole.pcap"
    dec = PacketDecoder()
    at: dict[int, list] = {}
    for n, (ts, lt, fr) in enumerate(PcapReader(str(path)), 1):
        for e in dec.frame(ts, lt, fr):
            at.setdefault(n, []).append((e.id, e.qr))
    assert not dec.flush()
    ref = compare(str(path))
    assert ref[0] == 41
    ts = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", "dns", "-T", "fields",
                         "-e", "frame.number", "-e", "dns.id", "-e", "dns.flags.response"],
                        capture_output=True, text=True).stdout.splitlines()
    for line in ts:  # every message tshark decodes, at the same frame
        frame, mid, qr = line.split("\t")
        assert (int(mid, 16), qr in ("1", "True")) in at.get(int(frame), []), line
    # the client's query segments (28 or 45 bytes), as tshark lists them
    client = subprocess.run(["tshark", "-n", "-r", str(path), "-Y",
                             "tcp.srcport==51388 && (tcp.len==28 || tcp.len==45)"],
                            capture_output=True, text=True).stdout.splitlines()
    queries = sum(1 for v in at.values() for _, qr in v if not qr)
    assert len(client) == 39 and queries == 38
    assert sum(len(v) for v in at.values()) == 76
    c = dec.tcp.counters()
    assert c["tcp_gaps"] == 2 and c["tcp_resyncs"] == 1
    assert c["tcp_resync_skipped_bytes"] == 28  # the query whose prefix was lost
    assert c["tcp_gap_bytes"] > 0
    mid, _, _ = decode_file(data / "pcap/dnscap_tests/dnso1tcp-midmiss.pcap")
    assert len(mid) == 6  # tshark: 6, five at the same frame (one a frame later, at the ACK)
    assert compare(str(data / "pcap/dnscap_tests/dnso1tcp-midmiss.pcap"))[:2] == (6, 5)


def test_tcp_without_syn_and_without_length_start(data):
    evs, _, _ = decode_file(data / "pcap/dnscap_tests/1qtcpnosyn.pcap")
    assert [e.id for e in evs] == [0x12CF, 0x12CF]
    evs, dec, _ = decode_file(data / "pcap/dnscap_tests/do1t-nosyn-1nolen.pcap")
    # the first query has no length prefix: skipped; the second query (its prefix sent
    # alone, in a segment of its own) is found again, which tshark does not do
    assert [(e.id, e.qr) for e in evs] == [(0xE7AF, True), (0x8B51, False), (0x8B51, True)]
    assert dec.stats["tcp_resync_skipped_bytes"] == 28 and dec.tcp.resyncs == 1


def test_tcp_reordered_and_retransmitted_segments_give_the_same_messages(data, tmp_path):
    """Shuffle the TCP segments of a real capture within a small window and
    retransmit a quarter of them: the messages must be exactly the same."""
    src = data / "pcap/dnscap_tests/dnso1tcp.pcap"
    reader = PcapReader(str(src))
    frames = [(ts, bytes(fr)) for ts, _, fr in reader]
    base, _, _ = decode_file(src)
    rnd = random.Random(7)
    shuffled = frames[:]
    for i in range(0, len(shuffled) - 3, 3):  # swap neighbours: reordering within 3 segments
        j = i + rnd.randrange(1, 3)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    dup = []
    for fr in shuffled:
        dup.append(fr)
        if rnd.random() < 0.25:
            dup.append(fr)  # retransmission
    out = tmp_path / "reordered.pcap"
    write_pcap(out, 1, dup)
    evs, dec, _ = decode_file(out)
    assert len(base) == 82
    key = lambda e: (e.id, e.qr, e.qname, e.ancount)  # noqa: E731
    assert Counter(map(key, evs)) == Counter(map(key, base))
    assert dec.tcp.retransmitted > 0


def test_ipv6_vlan_sll2_raw_and_fragments(data):
    evs, _, _ = decode_file(data / "pcap/dnscap_tests/dns6.pcap")
    assert evs and all(e.ip_version == 6 for e in evs)
    evs, _, _ = decode_file(data / "pcap/dnscap_tests/vlan11.pcap")
    assert len(evs) == 82
    evs, _, r = decode_file(data / "pcap/dnscap_tests/sll2.pcap")
    assert r.linktypes == [276] and len(evs) == 2
    evs, dec, r = decode_file(data / "pcap/dnscap_tests/frags.pcap")
    assert dec.stats["ip_reassembled"] == 82 and len(evs) == 82
    # every message was cut in many fragments: reassembled, each decodes whole
    assert all(not e.malformed for e in evs) and sum(len(e.answers) for e in evs) > 40
    evs, dec, _ = decode_file(data / "pcap/zeek_traces/ipv6-fragmented-dns.pcap")
    assert dec.stats["ip_reassembled"] >= 1 and any(e.ip_version == 6 and e.size > 1280 for e in evs)
    for name in ("LINKTYPE_RAW_ipv4.pcap", "LINKTYPE_RAW_ipv6.pcap", "LINKTYPE_IPV4.pcap",
                 "LINKTYPE_IPV6.pcap", "LINKTYPE_PKTAP.pcap"):
        evs, _, _ = decode_file(data / "pcap/tcpdump_tests" / name)
        assert len(evs) == 1, name


def test_encapsulations_are_decapsulated(data):
    z = data / "pcap/zeek_traces"
    for name, n in (("encap_or_realworld__tunnels_Teredo.pcap", 1),
                    ("encap_or_realworld__tunnels_gre-sample.pcap", 2),
                    ("encap_or_realworld__erspan.pcap", 1),
                    ("encap_or_realworld__tunnels_gre-over-udp-4754.pcap", 4)):
        evs, _, _ = decode_file(z / name)
        assert len(evs) >= n, name


def test_pcapng_with_several_interfaces(data):
    evs, _, r = decode_file(data / "pcap/zeek_traces/encap_or_realworld__pcapng-multi-interface.pcapng")
    assert r.format == "pcapng" and len(r.linktypes) >= 2
    assert evs


def test_malformed_messages_are_counted_not_fatal_and_names_are_escaped(data):
    res = run_detector("replay", "pcap", "--events", "--format", "jsonl",
                       str(data / "pcap/tcpdump_tests/dns-badlabel.pcap"),
                       str(data / "pcap/tcpdump_tests/dns_fwdptr.pcap"),
                       str(data / "pcap/tcpdump_tests/dns-zlip-1.pcap"),
                       str(data / "pcap/zeek_traces/dns__dns-invalid-names.pcap"),
                       str(data / "pcap/ndpi_tests/dns-invalid-chars.pcap"))
    assert res.returncode == 0, res.stderr
    assert "parse errors" in res.stderr and "dns_" in res.stderr
    res.stdout.encode("ascii")  # never raw control or non-UTF-8 bytes
    names = [d["qname"] for d in json_lines(res.stdout) if d.get("qname")]
    assert "www.allyourba\\004\\005\\006arebelongto.cn" in names


def test_replay_cli_events_have_correct_names_and_latency(data):
    res = run_detector("replay", "pcap", str(data / "tunnel/iodine_elastic_examples.pcap"),
                       "--events", "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    evs = [d for d in json_lines(res.stdout) if "kind" in d]
    assert len(evs) >= 434
    assert all(d["qname"].endswith(".pirate.sea") for d in evs)
    assert {d["registered_domain"] for d in evs} == {"pirate.sea"}
    answered = [d for d in evs if d["kind"] == "response" and "latency_ms" in d]
    assert len(answered) > 200
    # the latency is the time from its own query (same id, client address and port)
    asked = {(d["id"], d["src"], d["sport"]): d["ts"] for d in evs if d["kind"] == "query"}
    for d in answered:
        q = asked[(d["id"], d["dst"], d["dport"])]
        assert abs(d["latency_ms"] - (d["ts"] - q) * 1000) < 0.01, (d, q)
    assert "packets" in res.stderr and "438" in res.stderr


def test_ecs_event_fields(data):
    res = run_detector("replay", "pcap", str(data / "pcap/dnscap_tests/dns.pcap"), "--events")
    docs = json_lines(res.stdout)
    ev = next(d for d in docs if d["event"]["kind"] == "event" and d["dns"]["type"] == "answer")
    assert ev["dns"]["question"]["name"] and ev["dns"]["response_code"]
    assert ev["source"]["port"] == 53 and ev["network"]["transport"] in ("udp", "tcp")
    assert ev["@timestamp"].endswith("Z")


def test_replay_is_deterministic(data):
    f = str(data / "tunnel/dns2tcp_netrack_2018-03-23.pcap")
    a = run_detector("replay", "pcap", f, "--events", "--format", "jsonl", "-q")
    b = run_detector("replay", "pcap", f, "--events", "--format", "jsonl", "-q")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and len(a.stdout) > 1000


def test_unanswered_queries_are_reported_after_the_timeout(data, tmp_path):
    """Drop every response from a real capture: each query becomes 'unanswered'."""
    reader = PcapReader(str(data / "pcap/dnscap_tests/dns.pcap"))
    frames = [(ts, bytes(fr)) for ts, _, fr in reader]
    dec = PacketDecoder()
    queries = [fr for fr in frames if any(not e.qr for e in dec.frame(fr[0], 1, fr[1]))]
    out = tmp_path / "queries.pcap"
    write_pcap(out, 1, queries)
    res = run_detector("replay", "pcap", str(out), "--events", "--format", "jsonl",
                       "--query-timeout", "2")
    kinds = Counter(d["kind"] for d in json_lines(res.stdout) if "kind" in d)
    assert kinds["query"] == len(queries) > 10
    assert kinds["unanswered"] >= len(queries) - 3  # the last ones may still be open at the end


# --- bad input ------------------------------------------------------------------

def test_not_a_capture_is_a_one_line_error_with_exit_2(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not a capture\n")
    res = run_detector("replay", "pcap", str(bad))
    assert res.returncode == 2
    assert "not a pcap or pcapng file" in res.stderr and "Traceback" not in res.stderr
    res = run_detector("replay", "pcap", str(tmp_path / "missing.pcap"))
    assert res.returncode == 2 and "no such file" in res.stderr
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    res = run_detector("replay", "pcap", str(empty))
    assert res.returncode == 2 and "empty" in res.stderr


def test_unknown_link_type_is_exit_2(tmp_path):
    p = tmp_path / "user0.pcap"
    write_pcap(p, 147, [(1.0, b"\x00" * 60)])
    res = run_detector("replay", "pcap", str(p))
    assert res.returncode == 2 and "unknown link type 147" in res.stderr


def test_truncated_capture_processes_what_is_there_and_exits_3(data, tmp_path):
    src = (data / "tunnel/iodine_elastic_examples.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src[: len(src) // 2 + 7])
    res = run_detector("replay", "pcap", str(cut), "--events", "--format", "jsonl")
    assert res.returncode == 3
    assert "truncated" in res.stderr and "Traceback" not in res.stderr
    assert len(json_lines(res.stdout)) > 150
    with pytest.raises(CaptureError):
        PcapReader(str(tmp_path / "nope.pcap"))


def test_reader_gives_back_the_pages_it_has_read(tmp_path):
    """A capture is mapped, and read pages are given back as the reader goes, so a
    long capture does not end up resident in full; every packet is still read."""
    from detector.capture.pcap import RELEASE_BYTES, PcapReader
    from detector.capture.pcapwrite import ETH4, PcapWriter, dns_query, ip4, udp

    path = tmp_path / "big.pcap"
    q = dns_query(1, "a-fairly-long-name-to-fill-the-capture.example.com")
    frame = ETH4 + ip4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 53]), 17, udp(4000, 53, q))
    n = 3 * RELEASE_BYTES // (len(frame) + 16) + 1
    with open(path, "wb") as f:
        w = PcapWriter(f)
        for i in range(n):
            w.write(1.0 + i * 1e-4, frame)
    r = PcapReader(str(path))
    assert sum(1 for _ in r) == n
    assert r._released >= 2 * RELEASE_BYTES
    r.close()


def test_partly_decodable_messages_keep_their_question_with_the_reason(tmp_path):
    """An IP total length beyond the captured bytes (a snap length cut inside the
    answers), over IPv4, IPv6 and TCP, and a record cut short after a valid
    question: the question is kept, ``malformed`` says why, tshark shows the same
    names, and the C and Python decoders agree."""
    import struct
    from dataclasses import astuple

    from detector.capture.pcapwrite import (ETH4, ETH6, dns_response, ip4, ip6, tcp, udp)
    from detector.dns import wire

    answers = [(1, bytes([192, 0, 2, i])) for i in range(1, 9)]
    full = dns_response(7, "cut.example.com", answers=answers)
    cut = len(full) - 20  # inside the 7th answer
    v4 = ETH4 + ip4("10.0.0.53", "10.0.0.2", 17, udp(53, 5000, full))
    v6 = ETH6 + ip6("fd00::53", "fd00::2", 17, udp(53, 5001, full))
    framed = struct.pack("!H", len(full)) + full
    t4 = ETH4 + ip4("10.0.0.53", "10.0.0.2", 6, tcp(53, 5002, 100, 1, 0x18, framed))
    short = bytearray(dns_response(8, "short.example.com", answers=[(16, b"\x05hello")]))
    short[-8:-6] = struct.pack("!H", 200)  # the TXT record claims 200 bytes, 6 are there
    whole = ETH4 + ip4("10.0.0.53", "10.0.0.2", 17, udp(53, 5003, bytes(short)))
    path = tmp_path / "partial.pcap"
    write_pcap(path, 1, [(1.0, v4[:len(v4) - 20]), (1.1, v6[:len(v6) - 20]),
                         (1.2, t4[:len(t4) - 20]), (1.3, whole)])
    evs, dec, _ = decode_file(path)
    got = [(e.transport, e.qname, e.malformed, len(e.answers)) for e in evs]
    assert got == [("udp", "cut.example.com", "truncated_record", 6),
                   ("udp", "cut.example.com", "truncated_record", 6),
                   ("tcp", "cut.example.com", "truncated_record", 6),
                   ("udp", "short.example.com", "truncated_record", 0)]
    assert dec.stats["ip_bad_length"] == 3
    import subprocess
    # tshark without TCP reassembly (with it, it waits for the bytes the capture
    # cut and shows nothing for the TCP message): the same names, 6 answers each
    ts = subprocess.run(["tshark", "-o", "tcp.desegment_tcp_streams:FALSE", "-r", str(path),
                         "-T", "fields", "-e", "dns.qry.name", "-e", "dns.a"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
    ts = [line.split("\t") for line in ts]
    assert [n for n, _ in ts] == [e.qname for e in evs]
    assert [len(a.split(",")) if a else 0 for _, a in ts] == [len(e.answers) for e in evs]
    assert dec.tcp.counters()["tcp_cut_messages"] == 1
    for payload in (full[:cut], bytes(short)):
        assert astuple(wire.py_decode(payload, 1.0, "udp", 4, "a", 1, "b", 2)) == \
            astuple(wire.decode(payload, 1.0, "udp", 4, "a", 1, "b", 2))


def test_damaged_packets_give_what_the_captured_bytes_hold(data, tmp_path):
    """Every UDP DNS frame of a real capture, cut by a short snap length (the IP
    and UDP lengths then claim more than is there), and with a UDP length that lies
    (claims 200 bytes more): each still gives its message, with the id and name
    tshark shows, marked malformed (the decoder's reason, or capture_truncated)."""
    import subprocess

    src = data / "pcap/dnscap_tests/dns.pcap"
    frames = [(ts, fr) for ts, lt, fr in PcapReader(str(src))]
    dns = [(ts, fr) for ts, fr in frames if fr[23] == 17 and 53 in (
        int.from_bytes(fr[34:36], "big"), int.from_bytes(fr[36:38], "big"))]
    assert len(dns) > 50
    cut = [(ts, fr[:14 + 20 + 8 + 12 + 14]) for ts, fr in dns]  # inside or just after the question
    lying = []
    for ts, fr in dns:
        b = bytearray(fr)
        b[38:40] = (int.from_bytes(b[38:40], "big") + 200).to_bytes(2, "big")
        b[40:42] = b"\x00\x00"  # no UDP checksum
        lying.append((ts, bytes(b)))
    for name, damaged in (("cut", cut), ("lying", lying)):
        path = tmp_path / f"{name}.pcap"
        write_pcap(path, 1, damaged)
        evs, dec, _ = decode_file(path)
        assert len(evs) == len(dns), name  # none dropped
        assert all(e.malformed for e in evs), name
        ref = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", "dns", "-T", "fields",
                              "-e", "dns.id", "-e", "dns.qry.name"], capture_output=True,
                             text=True).stdout.splitlines()
        assert len(ref) == len(evs), name
        assert [(int(i, 16), q) for i, q in (r.split("\t") for r in ref)] == \
            [(e.id, e.qname) for e in evs], name
        assert dec.stats["udp_bad_length"] == len(dns), name
    # the lying length over a whole message: the decoder is content, the capture is not
    assert {e.malformed for e in decode_file(tmp_path / "lying.pcap")[0]} == {"capture_truncated"}
    # the shared captures whose headers claim more than was captured: decoded, as tshark does
    for rel, want in (("tcpdump_tests/ipv6_invalid_length_2.pcap", [(0x8505, "www.tcpdump.org")]),
                      ("tcpdump_tests/ipv4_invalid_total_length.pcap", [(0x92AA, "www.tcpdump.org")]),
                      ("tcpdump_tests/dns_udp_2.pcap", [(0x5934, "www.tcpdump.org")] * 2)):
        evs, dec, _ = decode_file(data / "pcap" / rel)
        assert [(e.id, e.qname) for e in evs] == want, rel
        assert dec.stats["ip_bad_length"] == 1, rel
