"""OCSF 1.8 output, attribute by attribute, on real captures: `detector replay
pcap --format ocsf --events` writes DNS Activity (4003) for events and
Detection Finding (2004) for alerts, nothing else in the stream; each record
is checked against ../shared/schemas/ocsf by tests/schemas.py (the class with
base_event and the profiles it names, required attributes, constraints,
types, enums and their name siblings, objects recursively)."""

from __future__ import annotations

import pytest

from detector.alerts.render import render_alert, render_event
from detector.events import Finding
from schemas import Tally, check_ocsf
from test_ecs import (TX_FILES, empty_containers, enriched_events, full_message_event, replay, update_event,
                      with_process)


@pytest.fixture(scope="module")
def ocsf_docs(data, tmp_path_factory) -> list[dict]:
    return replay(data, "ocsf", tmp_path_factory.mktemp("ocsf"))


def test_every_record_conforms_to_ocsf(ocsf_docs):
    t = Tally()
    for d in ocsf_docs:
        check_ocsf(d, t)
    print("\nOCSF conformance:", t.line("ocsf"))
    assert not t.failures, "\n".join(sorted(set(t.failures))[:40])
    assert t.by_kind["4003/1"] > 5000 and t.by_kind["4003/2"] > 4000 and t.by_kind["4003/99"] > 100
    assert t.by_kind["2004/1"] >= 20
    assert t.fields > 500_000


def test_one_format_per_stream(ocsf_docs):
    """--format ocsf --events: events are DNS Activity, never ECS documents."""
    classes = {d.get("class_uid") for d in ocsf_docs}
    assert classes == {4003, 2004}
    assert not any("@timestamp" in d or "ecs" in d for d in ocsf_docs)


def test_dns_activity_records(ocsf_docs):
    evs = [d for d in ocsf_docs if d["class_uid"] == 4003]
    for d in evs:
        assert d["type_uid"] == 400300 + d["activity_id"]
        assert d["connection_info"]["community_uid"].startswith("1:")
        assert isinstance(d["time"], int)
        if d["activity_id"] == 2:
            assert d["rcode"] and "rcode_id" in d and d["status_id"] in (1, 2)
            assert (d["status_id"] == 1) == (d["rcode_id"] == 0)
        if d["activity_id"] == 99:
            assert d["activity_name"] == "Unanswered" and d["status_id"] == 2
    assert sum(d["time"] > 1e12 for d in evs) > 0.9 * len(evs)  # milliseconds (a few captures start at 1970)
    answers = [a for d in evs for a in d.get("answers", [])]
    assert len(answers) > 3000 and all("rdata" in a for a in answers)


def test_detection_findings_evidences_attacks_and_revisions(ocsf_docs):
    """Endpoints and the query sit in evidences, the sub-technique apart from its
    parent; the first revision of an alert is Create, later ones (same
    finding_info.uid) Update."""
    fs = [d for d in ocsf_docs if d["class_uid"] == 2004]
    created = set()
    updates = 0
    for d in fs:
        assert "src_endpoint" not in d and "dst_endpoint" not in d
        for a in d["finding_info"]["attacks"]:
            tech = a["technique"]["uid"]
            assert "." not in tech
            if "sub_technique" in a:
                assert a["sub_technique"]["uid"].startswith(tech + ".")
        uid = d["finding_info"]["uid"]
        rev = d["unmapped"]["revision"]
        if rev == 1:
            assert d["activity_id"] == 1 and d["type_uid"] == 200401
            created.add(uid)
        else:
            assert d["activity_id"] == 2 and d["type_uid"] == 200402 and uid in created
            updates += 1
        assert d["metadata"]["uid"] == f"{uid}-{rev}"
        if "evidences" in d:
            ev = d["evidences"][0]
            assert ev["src_endpoint"]["ip"] and ev["dst_endpoint"]["port"] >= 0
            obs = {o["name"]: o["value"] for o in d["observables"]}
            assert obs["evidences[0].src_endpoint.ip"] == ev["src_endpoint"]["ip"]
            if ev.get("query", {}).get("hostname"):
                assert obs["evidences[0].query.hostname"] == ev["query"]["hostname"]
    assert any(d["finding_info"]["attacks"][0].get("sub_technique") for d in fs)
    assert updates >= 1


def test_transaction_model_and_processes(data):
    """The transaction model: one Traffic (6) record per query, none for a query
    alone; processes (in actor, and in the evidences of a finding) carry the
    process name, the thread id, the executable as a file with name and type_id,
    and the container with the container profile named in metadata.profiles."""
    evs = enriched_events([data / f for f in TX_FILES])
    t = Tally()
    n_query = 0
    for e in evs:
        d = render_event(e, "ocsf", "transaction")
        if e.kind == "query":
            assert d is None
            n_query += 1
            continue
        check_ocsf(d, t)
        assert d["activity_id"] == 6 and d["type_uid"] == 400306
        assert d["src_endpoint"]["ip"] == e.client[0] and d["dst_endpoint"]["ip"] == e.server[0]
        if e.latency is not None:
            assert d["duration"] == round(e.latency * 1000)
    assert n_query > 100
    for e in evs[:100]:
        d = render_event(with_process(e), "ocsf")
        check_ocsf(d, t)
        p = d["actor"]["process"]
        assert (p["name"], p["ptid"], p["file"]["name"], p["file"]["type_id"]) == ("dig", 4243, "dig", 1)
        assert p["container"]["uid"] == "3f4e5d6c7b8a" and "container" in d["metadata"]["profiles"]
        assert d["unmapped"]["thread_name"] == "isc-net-0000"
        f = Finding("dns-tunnel", "DNS tunnel", 0.8, "high", "T1071.004", "Application Layer Protocol: DNS",
                    "dig[4242]", e.registered_domain, {"x": 1}, "a reason", event=with_process(e), ts=e.ts)
        for rev in (1, 2):
            a = render_alert(f, "abc123", {"revision": rev, "status": "open"}, "ocsf")
            check_ocsf(a, t)
            ev = a["evidences"][0]
            assert ev["process"]["file"]["name"] == "dig" and ev["process"]["file"]["type_id"] == 1
            assert a["activity_id"] == rev
            att = a["finding_info"]["attacks"][0]
            assert (att["technique"]["uid"], att["technique"]["name"]) == ("T1071", "Application Layer Protocol")
            assert (att["sub_technique"]["uid"], att["sub_technique"]["name"]) == ("T1071.004", "DNS")
    print("\nOCSF models and processes:", t.line("ocsf models"))
    assert not t.failures, "\n".join(sorted(set(t.failures))[:40])


def test_top_counts_ocsf_alerts_as_it_counts_ecs_ones(tmp_path):
    """`detector top` reads dns-alerts in whichever format the detectors write."""
    import json

    from detector.commands.top import Top
    from detector.paths import bundled
    from tests.conftest import run_detector

    seen = {}
    for fmt in ("ecs", "ocsf"):
        out = tmp_path / f"{fmt}.jsonl"
        r = run_detector("replay", "pcap", str(bundled("demo.pcap")), "-q", "--format", fmt, "-o", str(out))
        assert r.returncode == 0, r.stderr
        t = Top(5)
        for line in out.read_text().splitlines():
            t.alert(json.loads(line))
        seen[fmt] = (t.alerts, dict(t.rules), t.entities.most_common(3), t.duplicates)
    assert seen["ocsf"] == seen["ecs"] and seen["ecs"][0] >= 5


def test_full_message_in_dns_activity():
    """Answers carry their own class, TTL, type, rdata and flags (the header's, and
    mDNS's cache-flush bit as 99 Other "Cache Flush", since OCSF numbers no such
    flag); what OCSF 1.8 has no attribute for (the other questions, authority,
    additional, answers' rdlength, EDNS, Z, the damage) is under unmapped with the
    names of our ECS namespace. Both event models conform."""
    ev = full_message_event()
    t = Tally()
    for model in ("message", "transaction"):
        d = render_event(ev, "ocsf", model)
        assert check_ocsf(d, t) == []
        assert d["query"]["hostname"] == "printer.local" and d["query"]["class"] == "IN"
        a0, a1 = d["answers"]
        assert (a0["rdata"], a0["type"], a0["class"], a0["ttl"]) == ('"txtvers=1"', "TXT", "CH", 120)
        assert a0["flag_ids"] == [1, 3, 99] and a0["flags"] == ["Authoritative Answer", "Recursion Desired", "Cache Flush"]
        assert a1["flag_ids"] == [1, 3] and a1["class"] == "IN"
        u = d["unmapped"]
        ecs_ns = render_event(ev, "ecs", model)["dns_detector"]
        assert u["edns"] == ecs_ns["edns"] and u["malformed"] == "truncated_record"
        m = u["dns"]
        assert m["answers"] == [{"rdlength": 10}, {"rdlength": 4}]  # the bit is in flags: one place
        for k in ("questions", "authority", "additional", "z"):
            assert m[k] == ecs_ns["dns"][k], k
        assert m["questions"][0]["unicast_response"] is True
        assert [o["name"] for o in u["edns"]["options"]] == ["COOKIE", "ECS", "NSID"]
        assert not empty_containers(d)
    assert not t.failures


def test_update_in_dns_activity():
    """Opcode UPDATE: query is the zone with opcode_id 5 Update; the prerequisites
    are not answers: they, the updates and the additional TSIG are under
    unmapped.dns by their RFC 2136 names."""
    d = render_event(update_event(), "ocsf")
    t = Tally()
    assert check_ocsf(d, t) == [] and not t.failures
    assert (d["query"]["hostname"], d["query"]["type"], d["query"]["opcode_id"], d["query"]["opcode"]) == (
        "StratoLab.org", "SOA", 5, "Update")
    assert "answers" not in d
    m = d["unmapped"]["dns"]
    assert m["zone"]["name"] == "StratoLab.org"
    assert [r["class"] for r in m["prerequisites"]] == ["NONE"]
    assert [(r["type"], r["class"]) for r in m["updates"]] == [("AAAA", "ANY"), ("A", "IN")]
    assert m["additional"][0]["type"] == "TSIG"
    plain = update_event()
    plain.flags, plain.answers, plain.authority, plain.additional = 0x0100, [], (), ()
    d = render_event(plain, "ocsf")
    assert "unmapped" not in d and "answers" not in d and check_ocsf(d, t) == []
