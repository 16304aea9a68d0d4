"""deploy/siem/: the Elastic component and index templates and ingest pipeline, the
Vector Kafka-to-Elasticsearch config and the Splunk sourcetype, checked against
ECS 9.4 (ecs_flat.yml) and against what the code really writes: documents of real
captures (alerts and events) and of a live-capture event, the Kafka topic the CLI
uses, and the timestamps of detector/alerts/ecs.py."""

from __future__ import annotations

import configparser
import fnmatch
import ipaddress
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from detector.alerts import ecs
from detector.paths import REPO, shared_data
from tests.conftest import run_detector

SIEM = REPO / "deploy" / "siem"
ELASTIC = SIEM / "elastic"
ECS_FLAT = shared_data().parent / "schemas" / "ecs" / "ecs_flat.yml"
NS = ecs.NAMESPACE
CAPTURES = ["tunnel/ndpi/dnscat2_dns_exfiltration.pcap", "tunnel/iodine_elastic_examples.pcap",
            "pcap/zeek_traces/dns-edns-ecs.pcap", "pcap/dnscap_tests/dns.pcap"]


def _json(name: str) -> dict:
    return json.loads((ELASTIC / name).read_text())


@pytest.fixture(scope="module")
def ecs_flat() -> dict:
    if not ECS_FLAT.is_file():
        pytest.fail(f"no ECS schema at {ECS_FLAT}: the shared data (../shared) is missing")
    return yaml.safe_load(ECS_FLAT.read_text())


@pytest.fixture(scope="module")
def lines(data, tmp_path_factory) -> list[str]:
    """The ECS lines the detector writes for real captures (alerts and events), as
    written, plus the bundled demo capture's, plus one live-capture event."""
    out = tmp_path_factory.mktemp("siem") / "ecs.jsonl"
    files = [str(data / c) for c in CAPTURES] + [str(REPO / "detector/data/demo.pcap")]
    r = run_detector("replay", "pcap", *files, "--events", "--no-progress", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out.read_text().splitlines() + [json.dumps(_live_event_doc(), separators=(",", ":"))]


def _live_event_doc() -> dict:
    """An event as live capture gives it: process, thread, container, pod, cause."""
    import dnslib

    from detector.dns.wire import decode
    from detector.events import ProcessInfo

    ev = decode(dnslib.DNSRecord.question("live.example.com").pack(), 1767225600.123456, "udp", 4,
                "10.0.0.5", 40000, "10.0.0.53", 53)
    ev.process = ProcessInfo(pid=4242, tid=4243, comm="isc-net-0000", exe="/usr/bin/dig", uid=1000, gid=1000,
                             cgroup_id=77, container_id="3f4e" * 16, name="dig", container_name="web",
                             pod_name="web-7d9f8", pod_namespace="shop",
                             pod_uid="5f1c2b3a-1111-2222-3333-444455556666")
    ev.cause = {"pid": 99, "comm": "curl", "exe": "/usr/bin/curl", "uid": 0, "container_id": ""}
    return ecs.event_doc(ev)


@pytest.fixture(scope="module")
def docs(lines) -> list[dict]:
    return [json.loads(x) for x in lines]


def _mapping_leaves(props: dict, pre: str = "") -> dict[str, dict]:
    """Dotted path -> mapping of every mapped field (objects with properties are walked)."""
    out = {}
    for name, m in props.items():
        path = pre + name
        if "properties" in m:
            out.update(_mapping_leaves(m["properties"], path + "."))
            if m.get("type") == "object":
                out[path] = {"type": "object"}
        else:
            out[path] = m
    return out


def _doc_leaves(doc: dict, pre: str = "") -> dict[str, list]:
    out: dict[str, list] = {}
    for k, v in doc.items():
        path = pre + k
        items = v if isinstance(v, list) else [v]
        for x in items:
            if isinstance(x, dict):
                for p, vals in _doc_leaves(x, path + ".").items():
                    out.setdefault(p, []).extend(vals)
            else:
                out.setdefault(path, []).append(x)
    return out


@pytest.fixture(scope="module")
def mapped() -> dict[str, dict]:
    return _mapping_leaves(_json("component-template.json")["template"]["mappings"]["properties"])


def test_every_mapped_ecs_field_has_the_type_ecs_gives_it(ecs_flat, mapped):
    checked = 0
    for path, m in mapped.items():
        if path == NS or path.startswith(NS + "."):
            continue
        assert path in ecs_flat, f"{path} is mapped but is not an ECS 9.4 field"
        spec = ecs_flat[path]
        assert m["type"] == spec["type"], f"{path}: mapped {m['type']}, ECS says {spec['type']}"
        if "ignore_above" in spec:
            assert m.get("ignore_above") == spec["ignore_above"], path
        want = {mf["name"]: mf["type"] for mf in spec.get("multi_fields", [])}
        got = {n: f["type"] for n, f in m.get("fields", {}).items()}
        assert got == want, f"{path}: multi-fields {got}, ECS has {want}"
        checked += 1
    assert checked >= 80


def test_every_field_the_detector_writes_is_mapped_with_a_fitting_type(docs, mapped):
    """dynamic: false keeps an unmapped field out of the index: each field must be mapped
    (or lie under a flattened one), and its values must fit the mapped type."""
    mappings = _json("component-template.json")["template"]["mappings"]
    assert mappings["dynamic"] is False
    flattened = [p for p, m in mapped.items() if m["type"] == "flattened"]
    seen: set[str] = set()
    for doc in docs:
        for path, vals in _doc_leaves(doc).items():
            if any(path.startswith(f + ".") for f in flattened):
                continue
            assert path in mapped, f"{path} (value {vals[0]!r}) is written but not mapped"
            seen.add(path)
            t = mapped[path]["type"]
            for v in vals:
                if v is None:
                    continue
                if t == "ip":
                    ipaddress.ip_address(v)
                elif t in ("long", "unsigned_long"):
                    assert isinstance(v, int) and not isinstance(v, bool), (path, v)
                elif t in ("float", "double", "scaled_float"):
                    assert isinstance(v, (int, float)) and not isinstance(v, bool), (path, v)
                elif t == "boolean":
                    assert isinstance(v, bool), (path, v)
                elif t == "date":
                    assert isinstance(v, str) and _ES_DATE.fullmatch(v), (path, v)
                else:
                    assert isinstance(v, str), (path, v)
    # the real documents reach the parts that matter
    for p in ("dns.question.name", "dns.answers.data", "client.ip", "threat.technique.subtechnique.id",
              "process.thread.name", "orchestrator.resource.name", "container.name", f"{NS}.revision"):
        assert p in seen, p


# strict_date_optional_time, as far as our dates go: UTC, up to nanoseconds
_ES_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def test_timestamps_parse_in_elastic_and_splunk_as_ecs_py_writes_them(lines, docs):
    props = _props()
    fmt = props["TIME_FORMAT"].replace("%6N", "%f")  # Splunk's %6N: microseconds
    prefix = re.compile(props["TIME_PREFIX"])
    look = int(props["MAX_TIMESTAMP_LOOKAHEAD"])
    assert props["TZ"] == "UTC"
    ts = 1767225613.54
    assert ecs.iso(ts) == "2026-01-01T00:00:13.540000Z"
    assert datetime.strptime(ecs.iso(ts), fmt).replace(tzinfo=timezone.utc).timestamp() == pytest.approx(ts, abs=1e-6)
    mapping = _json("component-template.json")["template"]["mappings"]["properties"]["@timestamp"]
    assert mapping == {"type": "date", "format": "strict_date_optional_time"}
    for line, doc in zip(lines, docs):
        m = prefix.search(line)
        assert m and m.start() < 5, f"TIME_PREFIX does not find @timestamp at the start of {line[:80]}"
        stamp = line[m.end():m.end() + look]
        assert stamp == doc["@timestamp"], (stamp, doc["@timestamp"])
        datetime.strptime(stamp, fmt)  # raises if Splunk's format does not fit
        assert _ES_DATE.fullmatch(stamp)


def _props() -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # Splunk keys are case-sensitive
    cp.read_string((SIEM / "splunk" / "props.conf").read_text())
    assert cp.sections() == ["dns_detector:ecs"]
    return dict(cp["dns_detector:ecs"])


def test_splunk_sourcetype_and_its_inputs_name_the_same_things():
    props = _props()
    assert props["SHOULD_LINEMERGE"] == "false" and props["KV_MODE"] == "json"
    connector = json.loads((SIEM / "splunk" / "splunk-connect-kafka.json").read_text())["config"]
    assert connector["topics"] == _alerts_topic()
    assert connector["splunk.sourcetypes"] == "dns_detector:ecs"
    assert connector["splunk.hec.raw"] == "true", "props.conf applies to HEC's raw endpoint only"
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read_string((SIEM / "splunk" / "inputs.conf").read_text())
    (stanza,) = cp.sections()
    assert cp[stanza]["sourcetype"] == "dns_detector:ecs"
    assert fnmatch.fnmatch("/var/log/dns-detector/events.jsonl", stanza.split("://", 1)[1])


def _alerts_topic() -> str:
    """The alerts topic as the CLI resolves it with no flag, environment or file."""
    from detector.cli import build_parser
    from detector.kafkaconf import kafka_config_from_args

    return kafka_config_from_args(build_parser().parse_args(["consume", "--kafka", "kafka:9092", "--group", "siem"])).alerts_topic


def test_index_templates_compose_the_mappings_and_name_the_pipeline():
    pipeline_id = "dns-detector"
    component = "dns-detector-ecs"
    alerts, events = _json("index-template-alerts.json"), _json("index-template-events.json")
    for t in (alerts, events):
        assert t["composed_of"] == [component]
        assert t["template"]["settings"]["index.default_pipeline"] == pipeline_id
        assert t["priority"] > 100  # above Elastic's built-in logs-*-* template
    assert "data_stream" in events and "data_stream" not in alerts  # alerts are updated in place
    assert _json("component-template.json")["_meta"]["ecs_version"] == ecs.ECS_VERSION
    doc = (REPO / "docs" / "deploy.md").read_text()
    assert f"_component_template/{component}" in doc and f"_ingest/pipeline/{pipeline_id}" in doc


def test_pipeline_keys_alerts_by_id_and_revision_from_fields_the_alerts_carry(docs, mapped):
    p = _json("pipeline.json")
    procs = [next(iter(x.items())) for x in p["processors"]]
    by_tag = {body.get("tag"): (kind, body) for kind, body in procs}
    assert by_tag["alert-id"][1]["field"] == "_id" and "{{{event.id}}}" in by_tag["alert-id"][1]["value"]
    script = by_tag["alert-revision"][1]["source"]
    assert "ctx.dns_detector.revision" in script and "external_gte" in script
    assert NS == "dns_detector"
    # every field the processors read or write is mapped
    for f in ("event.id", "event.kind", f"{NS}.revision", "event.ingested", "error.message", "@timestamp"):
        assert f in mapped, f
    alerts = [d for d in docs if d["event"]["kind"] == "alert"]
    assert alerts and all(d["event"]["id"] and isinstance(d[NS]["revision"], int) for d in alerts)
    # the conditions in the pipeline are the values the code writes
    assert {d["event"]["kind"] for d in docs} == {"alert", "event"}
    assert all("ctx.event?.kind == 'alert'" in body["if"] for kind, body in procs
               if body.get("tag", "").startswith("alert-"))


def test_vector_reads_the_alerts_topic_and_writes_where_the_templates_apply(docs):
    v = yaml.safe_load((SIEM / "vector" / "vector.yaml").read_text())
    src = v["sources"]["dns_alerts"]
    assert src["type"] == "kafka" and src["topics"] == [_alerts_topic()]
    assert src["decoding"]["codec"] == "json" and src["log_namespace"] is True
    patterns = {"alert": _json("index-template-alerts.json")["index_patterns"],
                "event": _json("index-template-events.json")["index_patterns"]}
    for name, kind, action in (("elastic_alerts", "alert", "index"), ("elastic_events", "event", "create")):
        sink = v["sinks"][name]
        assert sink["type"] == "elasticsearch" and sink["pipeline"] == "dns-detector"
        assert any(fnmatch.fnmatch(sink["bulk"]["index"], pat) for pat in patterns[kind]), name
        assert sink["bulk"]["action"] == action
        (inp,) = sink["inputs"]
        cond = v["transforms"][inp]["condition"]
        assert f'.event.kind == "{kind}"' in cond
    # the filters' conditions hold for every document the detector writes
    for d in docs:
        assert d["@timestamp"] and d["ecs"]["version"] == ecs.ECS_VERSION and d["event"]["kind"] in patterns
    include = v["sources"]["dns_events"]["include"]
    assert any(fnmatch.fnmatch("/var/log/dns-detector/events.jsonl", g) for g in include)
