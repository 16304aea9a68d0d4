"""ECS 9.4 output, field by field, on real captures: every document `detector
replay pcap --events` writes for the captures under ../shared/data/pcap and
tunnel (events and the alerts the tunnels raise) is checked against
ecs_flat.yml by tests/schemas.py; then what the issue measured: the DO bit,
answer classes, Community ID against tshark's own, process and thread names,
container and orchestrator fields, and the two event models; and the whole
message (every question, authority and additional records, EDNS options, mDNS
bits, the Z bit, DNS UPDATE's sections), hand-built and on captures compared
with tshark, with no empty section left in a document."""

from __future__ import annotations

import copy
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import json_lines, run_detector
from detector.alerts.community_id import community_id
from detector.alerts.render import render_event
from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.detect.registry import load_rules
from detector.dns.constants import CLASSES, QTYPES
from detector.events import Answer, DnsEvent, Edns, EdnsOption, ProcessInfo, Question
from detector.pipeline.run import Pipeline
from schemas import Tally, check_ecs, check_ocsf

#: captures the reader refuses as a whole (not DNS over a link type we read)
REFUSED = {"dns-inverse-query.pcap"}  # link type 10 (FDDI)


def captures(data: Path) -> list[str]:
    return sorted(str(p) for d in ("pcap", "tunnel") for p in (data / d).rglob("*.pcap*")
                  if p.name not in REFUSED)


def replay(data: Path, fmt: str, tmp: Path, files: list[str] | None = None) -> list[dict]:
    out = tmp / f"{fmt}.jsonl"
    r = run_detector("replay", "pcap", *(files or captures(data)), "--events", "--no-progress",
                     "--format", fmt, "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return json_lines(out.read_text())


@pytest.fixture(scope="module")
def ecs_docs(data, tmp_path_factory) -> list[dict]:
    return replay(data, "ecs", tmp_path_factory.mktemp("ecs"))


def test_every_document_conforms_to_ecs(ecs_docs):
    """All events and alerts of every capture: names, types, arrays, allowed values,
    required fields. The counts are printed for the issue's closing note."""
    t = Tally()
    for d in ecs_docs:
        check_ecs(d, t)
    print("\nECS conformance:", t.line("ecs"))
    assert not t.failures, "\n".join(sorted(set(t.failures))[:40])
    kinds = t.by_kind
    assert kinds["alert:dns_detector.alert"] >= 20  # the tunnels raise alerts
    assert kinds["event:dns_query"] > 5000 and kinds["event:dns_response"] > 4000
    assert kinds["event:dns_unanswered"] > 100
    assert t.fields > 500_000


def test_ecs_version_client_server_related_and_outcome(ecs_docs):
    for d in ecs_docs:
        assert d["ecs"]["version"] == "9.4.0"
        if d["event"]["kind"] != "event":
            continue
        ev = d["event"]
        c, s = d["client"], d["server"]
        if d["dns"]["type"] == "query":
            assert (c["ip"], c["port"]) == (d["source"]["ip"], d["source"]["port"])
            assert ev["outcome"] == ("failure" if ev["action"] == "dns_unanswered" else "unknown")
        else:
            assert (s["ip"], s["port"]) == (d["source"]["ip"], d["source"]["port"])
            assert ev["outcome"] == ("success" if d["dns"]["response_code"] == "NOERROR" else "failure")
        assert set(d["related"]["ip"]) >= {c["ip"], s["ip"]}
        if d["dns"].get("question", {}).get("name"):
            assert d["dns"]["question"]["name"] in d["related"]["hosts"]
        for ip in d["dns"].get("resolved_ip", []):
            assert ip in d["related"]["ip"]
        assert d["network"]["community_id"].startswith("1:")


def test_do_bit_and_answer_class(ecs_docs):
    """The EDNS DO bit reaches dns.header_flags; every answer names its class, and
    the answers to the question (its name and type) have the question's class
    (not so for the meta-records TKEY and TSIG, whose class is ANY: RFC 2930, 8945)."""
    do = [d for d in ecs_docs if d.get("dns_detector", {}).get("edns", {}).get("do")]
    assert len(do) > 100
    for d in ecs_docs:
        if d["event"]["kind"] != "event":
            continue
        has_do = d.get("dns_detector", {}).get("edns", {}).get("do", False)
        if "dns" in d:
            assert ("DO" in d["dns"]["header_flags"]) == has_do
        q = d.get("dns", {}).get("question", {})
        for a in d.get("dns", {}).get("answers", []):
            assert a["class"]
            if (a["name"].lower(), a["type"]) == (q.get("name", "").lower(), q.get("type")) \
                    and q["class"] not in ("ANY", "NONE") and a["type"] not in ("TKEY", "TSIG") \
                    and d["destination"]["port"] != 5353:
                assert a["class"] == q["class"], (q, a)
    print(f"\n{len(do)} of {len(ecs_docs)} documents carry DO")


def empty_containers(doc, path: str = "") -> list[str]:
    """Paths of the empty lists and objects in a document (dns.header_flags, a flags
    word in list form, may be empty: ECS gives no other way to say "no flags")."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        p = f"{path}.{k}" if path else str(k)
        if isinstance(v, (dict, list)):
            if not v and p not in ("dns.header_flags", "flags"):
                out.append(p)
            out += empty_containers(v, p)
    return out


def test_event_documents_carry_no_empty_sections(ecs_docs):
    """Sections the message does not have leave nothing behind: no empty list or
    object in any event document of the real captures."""
    events = [d for d in ecs_docs if d["event"]["kind"] == "event"]
    assert len(events) > 10000
    bad = [(d["event"]["action"], p) for d in events for p in empty_containers(d)]
    assert not bad, bad[:20]


# --- the whole message, hand-built: every section, EDNS options, mDNS bits, UPDATE ---

def full_message_event() -> DnsEvent:
    """An mDNS response with every section: two questions (the first with the QU
    bit), a cache-flush answer of class CH (so the answer's class is the record's
    own, not the question's), an authority record, two additional records, EDNS
    with the client subnet and two more options, the Z bit set, and damage."""
    return DnsEvent(
        ts=1767225600.25, transport="udp", ip_version=4, src_ip="192.168.1.20", src_port=5353,
        dst_ip="192.168.1.30", dst_port=5353, id=4660, flags=0x8400 | 0x0100 | 0x0040, rcode=0,
        questions=[Question("printer.local", 12, 1, True), Question("_ipp._tcp.local", 33, 255, False)],
        answers=[Answer("printer.local", 16, 120, '"txtvers=1"', 10, 3, True),
                 Answer("printer.local", 1, 120, "192.168.1.20", 4, 1, False)],
        authority=[Answer("local", 6, 3600, "ns.local. host.local. 7 3600 600 86400 60", 48, 1, False)],
        additional=[Answer("printer.local", 28, 120, "fe80::1", 16, 1, True),
                    Answer("printer.local", 47, 120, "printer.local. A AAAA", 9, 1, True)],
        ancount=2, nscount=1, arcount=3, size=301,
        edns=Edns(1440, True, 0, "192.0.2.0/24", 16,
                  [EdnsOption(10, "COOKIE", "0102030405060708"), EdnsOption(8, "ECS", "192.0.2.0/24/16"),
                   EdnsOption(3, "NSID", "6e7331")], 0x8000 | 0x0001, 1),
        kind="response", latency=0.002, malformed="truncated_record")


def update_event() -> DnsEvent:
    """A DNS UPDATE (RFC 2136) as dns__dynamic-update.pcap has it: zone StratoLab.org
    SOA, a prerequisite (CNAME, class NONE: the name has no CNAME), updates deleting
    an RRset (class ANY) and adding an address, a TSIG in the additional section."""
    return DnsEvent(
        ts=1767225601.0, transport="udp", ip_version=4, src_ip="10.1.1.5", src_port=49152,
        dst_ip="10.1.1.1", dst_port=53, id=51, flags=5 << 11, rcode=0,
        questions=[Question("StratoLab.org", 6)],
        answers=[Answer("NWin2.StratoLab.org", 5, 0, "", 0, 254)],
        authority=[Answer("NWin2.StratoLab.org", 28, 0, "", 0, 255),
                   Answer("NWin2.StratoLab.org", 1, 1200, "10.1.1.99", 4, 1)],
        additional=[Answer("key.StratoLab.org", 250, 0, "hmac-sha256. 1767225601 300 32 ab 51 0 0", 61, 255)],
        ancount=1, nscount=2, arcount=1, size=180, kind="query")


def test_full_message_in_ecs():
    """Every part of the message reaches the document, each in one place: ECS's own
    dns.* fields where it has them, dns_detector.dns and dns_detector.edns for the
    rest; the document conforms to ECS 9.4 (in both event models)."""
    ev = full_message_event()
    t = Tally()
    for model in ("message", "transaction"):
        d = render_event(ev, "ecs", model)
        assert check_ecs(d, t) == []
        dns, ns = d["dns"], d["dns_detector"]
        assert dns["question"] == {"name": "printer.local", "type": "PTR", "class": "IN"}
        assert dns["answers"] == [
            {"name": "printer.local", "type": "TXT", "class": "CH", "ttl": 120, "data": '"txtvers=1"'},
            {"name": "printer.local", "type": "A", "class": "IN", "ttl": 120, "data": "192.168.1.20"}]
        assert dns["header_flags"] == ["AA", "RD", "DO"] and dns["resolved_ip"] == ["192.168.1.20"]
        m = ns["dns"]
        assert m["questions"] == [
            {"name": "printer.local", "type": "PTR", "class": "IN", "unicast_response": True},
            {"name": "_ipp._tcp.local", "type": "SRV", "class": "ANY", "unicast_response": False}]
        assert m["answers"] == [{"rdlength": 10, "cache_flush": True}, {"rdlength": 4, "cache_flush": False}]
        assert m["authority"] == [{"name": "local", "type": "SOA", "class": "IN", "ttl": 3600,
                                   "data": "ns.local. host.local. 7 3600 600 86400 60", "rdlength": 48,
                                   "cache_flush": False}]
        assert [(r["type"], r["data"], r["rdlength"], r["cache_flush"]) for r in m["additional"]] == [
            ("AAAA", "fe80::1", 16, True), ("NSEC", "printer.local. A AAAA", 9, True)]
        assert m["z"] is True
        assert "zone" not in m and "updates" not in m and "prerequisites" not in m
        assert ns["edns"] == {
            "udp_size": 1440, "do": True, "version": 0, "flags": 0x8001, "ext_rcode": 1,
            "client_subnet": "192.0.2.0/24", "client_subnet_scope": 16,
            "options": [{"code": 10, "name": "COOKIE", "data": "0102030405060708"},
                        {"code": 8, "name": "ECS", "data": "192.0.2.0/24/16"},
                        {"code": 3, "name": "NSID", "data": "6e7331"}]}
        assert ns["malformed"] == "truncated_record"
        assert not empty_containers(d)
    assert t.custom == 2 and not t.failures


def test_update_sections_under_their_names_in_ecs():
    """Opcode UPDATE: dns.question is the zone (as Zeek writes it), and the
    prerequisites and updates are not answers: dns_detector.dns.zone,
    .prerequisites and .updates, with each record's class (NONE, ANY say what the
    record does)."""
    ev = update_event()
    t = Tally()
    d = render_event(ev, "ecs")
    assert check_ecs(d, t) == [] and not t.failures
    dns, m = d["dns"], d["dns_detector"]["dns"]
    assert dns["op_code"] == "UPDATE" and dns["question"]["name"] == "StratoLab.org"
    assert "answers" not in dns and "resolved_ip" not in dns
    assert m["zone"] == {"name": "StratoLab.org", "type": "SOA", "class": "IN"}
    assert [(r["name"], r["type"], r["class"]) for r in m["prerequisites"]] == [("NWin2.StratoLab.org", "CNAME", "NONE")]
    assert [(r["type"], r["class"], r["ttl"], r["data"]) for r in m["updates"]] == [
        ("AAAA", "ANY", 0, ""), ("A", "IN", 1200, "10.1.1.99")]
    assert m["additional"][0]["type"] == "TSIG" and m["additional"][0]["class"] == "ANY"
    assert "answers" not in m and "authority" not in m and "questions" not in m and "z" not in m
    assert "NWin2.StratoLab.org" in d["related"]["hosts"]
    assert "edns" not in d["dns_detector"] and not empty_containers(d)


def test_plain_message_has_no_namespace_dns():
    """One question, no other sections: nothing under dns_detector.dns (and no
    dns_detector at all without EDNS)."""
    ev = update_event()
    ev.flags, ev.answers, ev.authority, ev.additional = 0x0100, [], (), ()
    d = render_event(ev, "ecs")
    assert "dns_detector" not in d and "answers" not in d["dns"]
    assert check_ecs(d, Tally()) == []


def test_flat_json_carries_the_same_content():
    """--format jsonl: the sections as rows [name, type, ttl, data, class, rdlength,
    cache_flush] (the first four as before), the questions when ECS lists them, EDNS
    as in ECS, the Z bit; UPDATE under its own names; nothing for absent sections."""
    ev = full_message_event()
    f = render_event(ev, "jsonl")
    assert f["questions"] == [["printer.local", "PTR", "IN", True], ["_ipp._tcp.local", "SRV", "ANY", False]]
    assert f["answers"][0] == ["printer.local", "TXT", 120, '"txtvers=1"', "CH", 10, True]
    assert f["authority"][0][:5] == ["local", "SOA", 3600, "ns.local. host.local. 7 3600 600 86400 60", "IN"]
    assert [r[1] for r in f["additional"]] == ["AAAA", "NSEC"]
    assert f["z"] is True and f["malformed"] == "truncated_record"
    assert f["edns"] == render_event(ev, "ecs")["dns_detector"]["edns"]
    u = render_event(update_event(), "jsonl")
    assert u["qname"] == "StratoLab.org" and u["qtype"] == "SOA"
    assert u["prerequisites"][0][:5] == ["NWin2.StratoLab.org", "CNAME", 0, "", "NONE"]
    assert [r[1] for r in u["updates"]] == ["AAAA", "A"] and "answers" not in u and "authority" not in u
    ev.questions, ev.answers, ev.authority, ev.additional = ev.questions[:1], [], (), ()
    ev.questions[0].unicast_response = False
    ev.edns, ev.flags, ev.malformed = None, 0x8000, ""
    f = render_event(ev, "jsonl")
    assert not {"questions", "answers", "authority", "additional", "z", "edns", "qclass"} & set(f)
    assert not empty_containers(f)


def tshark_community_ids(pcap: str) -> dict[tuple, str]:
    out = subprocess.run(
        ["tshark", "--enable-protocol", "communityid", "-r", pcap, "-T", "fields", "-E", "separator=|",
         "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst", "-e", "udp.srcport",
         "-e", "tcp.srcport", "-e", "udp.dstport", "-e", "tcp.dstport", "-e", "communityid", "-Y", "dns"],
        capture_output=True, text=True, check=True).stdout
    ids = {}
    for line in out.splitlines():
        s4, s6, d4, d6, us, ts, ud, td, cid = line.split("|")
        if not cid or "," in s4 + s6 + d4 + d6:  # tunnelled: the outer header's flow
            continue
        ids[(s4 or s6, int(us or ts), d4 or d6, int(ud or td))] = cid
    return ids


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_community_id_matches_tshark(data, tmp_path):
    """network.community_id of every event equals Wireshark's own Community ID for
    the packet (IPv4 and IPv6, UDP and TCP)."""
    files = [data / "pcap/dnscap_tests/dns6.pcap", data / "pcap/dnscap_tests/dnso1tcp.pcap",
             data / "pcap/zeek_traces/dns-edns-ecs.pcap", data / "tunnel/ndpi/dnscat2_dns_exfiltration.pcap"]
    checked, n = set(), 0
    want = {}
    for f in files:
        ids = tshark_community_ids(str(f))
        assert ids, f
        want.update(ids)  # one flow, one id, whichever file it is in
    for d in replay(data, "ecs", tmp_path, [str(f) for f in files]):
        if d["event"]["kind"] != "event" or d["event"]["action"] == "dns_unanswered":
            continue
        s, t = d["source"], d["destination"]
        key = (s["ip"], s["port"], t["ip"], t["port"])
        norm = (str(ipaddress.ip_address(s["ip"])), s["port"], str(ipaddress.ip_address(t["ip"])), t["port"])
        cid = want.get(key) or want.get(norm)
        assert cid is not None, key
        assert d["network"]["community_id"] == cid, key
        checked.add((d["network"]["transport"], d["network"]["type"]))
        n += 1
    print(f"\n{n} community ids equal tshark's")
    assert checked >= {("udp", "ipv4"), ("udp", "ipv6"), ("tcp", "ipv4")}
    # the spec's own example flows (community-id-spec baseline, seed 0)
    assert community_id("128.232.110.120", 34855, "66.35.250.204", 80, "tcp") == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("66.35.250.204", 80, "128.232.110.120", 34855, "tcp") == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("not-an-ip", 1, "1.2.3.4", 2, "udp") == ""


def enriched_events(paths: list[Path]) -> list:
    """Every event of the captures as the pipeline hands it to sinks (correlated and
    enriched, unanswered records included)."""
    class Raw:
        name = "raw"
        wants_events = True

        def __init__(self):
            self.evs = []

        def write_event(self, ev):
            self.evs.append(copy.copy(ev))

        def close(self):
            pass

    raw = Raw()
    pipe = Pipeline(load_rules(), [], [raw])
    dec = PacketDecoder()
    for p in paths:
        for ts, lt, fr in PcapReader(str(p)):
            pipe.process_many(dec.frame(ts, lt, fr))
    pipe.close()
    return raw.evs


TX_FILES = ("tunnel/ndpi/dnscat2_dns_exfiltration.pcap", "pcap/zeek_traces/dns-edns-ecs.pcap",
            "pcap/dnscap_tests/dns.pcap", "tunnel/iodine_elastic_examples.pcap")


def test_transaction_model_one_document_per_query(data):
    """--event-model transaction: no document for a query alone; the response (or
    the unanswered timeout) carries the question, answers, client and server and
    event.duration; an unanswered query gives one document, not two. The message
    model gives two for it, each saying what it is (event.action, event.type)."""
    evs = enriched_events([data / f for f in TX_FILES])
    t = Tally()
    tx = [render_event(e, "ecs", "transaction") for e in evs]
    msg = [render_event(e, "ecs", "message") for e in evs]
    assert all(d is not None for d in msg)
    queries = sum(e.kind == "query" for e in evs)
    unanswered = sum(e.kind == "unanswered" for e in evs)
    assert unanswered > 10
    docs = [d for d in tx if d is not None]
    assert len(docs) == len(evs) - queries
    for e, d in zip(evs, tx):
        if d is None:
            assert e.kind == "query"
            continue
        check_ecs(d, t)
        assert d["event"]["type"] == ["protocol"]
        assert d["source"]["ip"] == d["client"]["ip"] == e.client[0]
        assert d["destination"]["ip"] == d["server"]["ip"] == e.server[0]
        if e.questions:
            assert d["dns"]["question"]["name"] == e.qname
        if e.kind == "unanswered":
            assert d["event"]["action"] == "dns_unanswered" and d["event"]["outcome"] == "failure"
            assert d["dns"]["type"] == "query" and d["event"]["duration"] == int(e.latency * 1e9)
        elif e.latency is not None:
            assert d["event"]["duration"] == int(e.latency * 1e9)
            assert d["@timestamp"] == d["event"]["start"] < d["event"]["end"] or e.latency == 0
            assert len(d["dns"].get("answers", [])) == len(e.answers)
    for d in msg:
        check_ecs(d, t)
    by_query = {}
    for e, d in zip(evs, msg):
        if e.kind in ("query", "unanswered"):
            by_query.setdefault((e.src_ip, e.src_port, e.id, e.qname), []).append(d["event"])
    two = [v for v in by_query.values() if any(x["action"] == "dns_unanswered" for x in v)]
    assert len(two) >= unanswered * 0.8
    for v in two:  # the query's document, then its timeout's (a retransmission may add a query)
        q, u = v[0], v[-1]
        assert (q["action"], q["type"], q["outcome"]) == ("dns_query", ["protocol", "start"], "unknown")
        assert (u["action"], u["type"], u["outcome"]) == ("dns_unanswered", ["protocol", "end"], "failure")
    print("\nECS transaction/message models:", t.line("ecs models"))
    assert not t.failures, t.failures[:20]


def with_process(ev, **kw):
    e = copy.copy(ev)
    e.process = ProcessInfo(**{"pid": 4242, "tid": 4243, "comm": "isc-net-0000", "name": "dig",
                               "exe": "/usr/bin/dig", "uid": 1000, "gid": 1000, "cgroup_id": 77,
                               "container_id": "3f4e5d6c7b8a", "container_name": "web",
                               "pod_name": "web-7d9f8", "pod_namespace": "shop",
                               "pod_uid": "5f1c2b3a-1111-2222-3333-444455556666", **kw})
    return e


def test_process_thread_container_and_orchestrator(data):
    """process.name is the process (ProcessInfo.name), the thread's comm is
    process.thread.name: `dig` is not `isc-net-0000`. Without a name, the comm
    stands for the process only when the thread is the main one."""
    evs = enriched_events([data / "pcap/dnscap_tests/dns.pcap"])[:50]
    t = Tally()
    for ev in evs:
        d = render_event(with_process(ev), "ecs")
        check_ecs(d, t)
        assert d["process"]["name"] == "dig"
        assert d["process"]["thread"] == {"id": 4243, "name": "isc-net-0000"}
        assert d["process"]["executable"] == "/usr/bin/dig"
        assert d["container"] == {"id": "3f4e5d6c7b8a", "name": "web"}
        assert d["orchestrator"] == {"type": "kubernetes", "namespace": "shop",
                                     "resource": {"type": "pod", "name": "web-7d9f8",
                                                  "id": "5f1c2b3a-1111-2222-3333-444455556666"}}
        main = render_event(with_process(ev, name="", tid=4242, comm="dig"), "ecs")
        assert main["process"]["name"] == "dig" and main["process"]["thread"]["name"] == "dig"
        worker = render_event(with_process(ev, name="", container_id="", container_name="", pod_name="",
                                           pod_namespace="", pod_uid=""), "ecs")
        assert "name" not in worker["process"] and worker["process"]["thread"]["name"] == "isc-net-0000"
        assert "container" not in worker and "orchestrator" not in worker
        check_ecs(main, t)
        check_ecs(worker, t)
    print("\nECS process fields:", t.line("ecs process"))
    assert not t.failures, t.failures[:20]


def test_alert_schema_file_matches_alerts(ecs_docs):
    """docs/alert.schema.json describes what is emitted: every alert validates."""
    import jsonschema

    from detector.paths import REPO

    schema = json.loads((REPO / "docs" / "alert.schema.json").read_text())
    alerts = [d for d in ecs_docs if d["event"]["kind"] == "alert"]
    assert alerts
    v = jsonschema.Draft202012Validator(schema)
    for d in alerts:
        v.validate(d)


# --- the whole message, on real captures (the decoders fill every section) ---

REAL_SECTIONS = ("pcap/zeek_traces/dns__dynamic-update.pcap", "pcap/zeek_traces/dns__mdns.pcap",
                 "pcap/tcpdump_tests/edns-opts.pcap")


def tshark_rows(pcap: Path, *fields: str) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "dns or mdns", "-T", "fields", "-E", "separator=|",
                          *[x for f in fields for x in ("-e", f)]], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def test_real_update_mdns_and_edns_sections(data):
    """Decoded captures: a DNS UPDATE's prerequisites and updates (classes NONE and
    ANY), mDNS's cache-flush bits over every section, and EDNS options reach the
    documents as tshark reads the packets; ECS and OCSF documents still conform."""
    t = Tally()
    docs: dict[str, list[dict]] = {}
    for f in REAL_SECTIONS:
        for e in enriched_events([data / f]):
            if e.kind == "unanswered":  # the query again
                continue
            d = render_event(e, "ecs")
            docs.setdefault(f, []).append(d)
            check_ecs(d, t)
            check_ocsf(render_event(e, "ocsf"), t)
            assert not empty_containers(d)
    assert not t.failures, sorted(set(t.failures))[:20]
    # UPDATE: tshark's record types and classes of the prerequisite and update sections
    want = [(r[1], r[2]) for r in tshark_rows(data / REAL_SECTIONS[0], "dns.flags.opcode", "dns.resp.type",
                                               "dns.resp.class")]
    got = []
    for d in docs[REAL_SECTIONS[0]]:
        m = d["dns_detector"]
        assert d["dns"]["op_code"] == "UPDATE"
        assert "answers" not in d["dns"] and d["dns"]["question"]["name"] == m["dns"]["zone"]["name"]
        recs = m["dns"].get("prerequisites", []) + m["dns"].get("updates", []) + m["dns"].get("additional", [])
        got.append(recs)
    assert len(got) == len(want) == 4
    for recs, (types, classes) in zip(got, want):
        assert [r["type"] for r in recs] == [QTYPES[int(x)] for x in types.split(",")]
        assert [r["class"] for r in recs] == [CLASSES[int(x, 16)] for x in classes.split(",")]
    assert [r["class"] for r in got[0][:2]] == ["NONE", "ANY"]
    # mDNS: cache-flush bits, every section
    flushes = sum(x == "1" for r in tshark_rows(data / REAL_SECTIONS[1], "dns.resp.cache_flush")
                  for x in r[0].split(",") if x)
    seen = sum(r["cache_flush"] for d in docs[REAL_SECTIONS[1]] for k in ("answers", "authority", "additional")
               for r in d.get("dns_detector", {}).get("dns", {}).get(k, []))
    assert flushes == 30 and seen == flushes
    # EDNS options, code by code, message by message
    want_opts = sorted(r[0] for r in tshark_rows(data / REAL_SECTIONS[2], "dns.opt.code") if r[0])
    got_opts = sorted(",".join(str(o["code"]) for o in d["dns_detector"]["edns"]["options"])
                      for d in docs[REAL_SECTIONS[2]] if d.get("dns_detector", {}).get("edns", {}).get("options"))
    assert got_opts == want_opts
    print("\nreal sections:", t.line("ecs+ocsf"))


def test_doh_read_from_tls_without_addresses_conforms():
    """`live --tls` reads DoH from applications that do their own I/O (curl): the event
    has no addresses. The document leaves the address fields out (an empty string is
    no ECS ip) and names the application protocol."""
    ev = DnsEvent(1.0, "tcp", 4, "", 0, "", 0, 7, 0x0100, 0, [Question("example.com", 1)],
                  process=ProcessInfo(4242, 4242, "curl", "/usr/bin/curl", 0, 0, 1, "", "curl"))
    ev.protocol = "doh"
    resp = copy.deepcopy(ev)
    resp.flags, resp.kind, resp.latency = 0x8180, "response", 0.01
    resp.answers = [Answer("example.com", 1, 60, "192.0.2.1", 4)]
    t = Tally()
    for e, model in ((ev, "message"), (resp, "message"), (resp, "transaction")):
        d = render_event(e, "ecs", model)
        assert check_ecs(d, t) == [], d
        assert d["network"]["application"] == "doh" and d["network"]["protocol"] == "dns"
        assert not any(k in d for k in ("source", "destination", "client", "server")), d
        assert "" not in d.get("related", {}).get("ip", []) and "community_id" not in d["network"]
        o = render_event(e, "ocsf", model)
        assert check_ocsf(o, t) == [], o
    ev2 = DnsEvent(1.0, "tcp", 4, "10.0.0.9", 40000, "10.0.0.1", 443, 7, 0x0100, 0,
                   [Question("example.com", 1)], protocol="doh")
    d = render_event(ev2, "ecs", "message")
    assert check_ecs(d, t) == [] and d["destination"] == {"ip": "10.0.0.1", "port": 443}
    assert not t.failures
