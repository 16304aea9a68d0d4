"""ECS 9.4 output, field by field, on real captures: every document `detector
replay pcap --events` writes for the captures under ../shared/data/pcap and
tunnel (events and the alerts the tunnels raise) is checked against
ecs_flat.yml by tests/schemas.py; then what the issue measured: the DO bit,
answer classes, Community ID against tshark's own, process and thread names,
container and orchestrator fields, and the two event models."""

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
from detector.events import ProcessInfo
from detector.pipeline.run import Pipeline
from schemas import Tally, check_ecs

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
    """The EDNS DO bit reaches dns.header_flags; every answer names its class."""
    do = [d for d in ecs_docs if d.get("dns_detector", {}).get("edns", {}).get("do")]
    assert len(do) > 100
    for d in ecs_docs:
        if d["event"]["kind"] != "event":
            continue
        has_do = d.get("dns_detector", {}).get("edns", {}).get("do", False)
        if "dns" in d:
            assert ("DO" in d["dns"]["header_flags"]) == has_do
        for a in d.get("dns", {}).get("answers", []):
            if d["dns"].get("question", {}).get("class", "ANY") not in ("ANY", "NONE"):
                assert a["class"] == d["dns"]["question"]["class"]
    print(f"\n{len(do)} of {len(ecs_docs)} documents carry DO")


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
