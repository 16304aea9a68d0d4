"""The dns-events wire form (derived from DnsEvent's field metadata), and the
source driver on real captures."""

from __future__ import annotations

import json
from dataclasses import fields

import orjson
import pytest

from detector.capture.layers import DEFAULT_PORTS
from detector.events import (READ_VERSIONS, WIRE_VERSION, DnsEvent, ProcessInfo, WireVersionError,
                             event_from_wire, event_to_wire, events_from_record, events_to_record,
                             to_wire_fields, wire_type_error)
from detector.pipeline.run import Pipeline
from detector.detect.registry import load_rules
from detector.sources.base import Batch
from detector.sources.driver import Lanes, drive, feed
from detector.sources.pcap import PcapSource

CAPTURES = ["pcap/zeek_traces/dns-edns-ecs.pcap", "pcap/zeek_traces/dns53.pcap", "pcap/zeek_traces/dns-caa.pcap"]


def decoded(data) -> list[DnsEvent]:
    src = PcapSource([str(data / c) for c in CAPTURES if (data / c).exists()], DEFAULT_PORTS)
    return [e for b in src.batches() for e in b.events if isinstance(e, DnsEvent)]


def on_wire(name: str) -> bool:
    return "wire" in next(f for f in fields(DnsEvent) if f.name == name).metadata


def test_every_wire_field_round_trips_and_others_stay_home(data):
    evs = decoded(data)
    assert len(evs) > 20 and any(e.edns and e.edns.client_subnet for e in evs)
    # give the live-only and pipeline fields values too
    evs[0].process = ProcessInfo(4242, 4243, "curl", "/usr/bin/curl", 1000, 1000, 77, "abc123")
    evs[0].cause = {"pid": 1, "comm": "app"}
    evs[1].latency, evs[1].kind = 0.0125, "response"
    for e in evs:
        e.registered_domain, e.entity, e.allowed = "example.com", "x", True
    back = events_from_record(orjson.loads(orjson.dumps(events_to_record(evs))))
    for a, b in zip(evs, back, strict=True):
        for f in fields(DnsEvent):
            if on_wire(f.name):
                assert getattr(a, f.name) == getattr(b, f.name), f.name
            else:  # enrichment is derived again by each consumer
                assert getattr(b, f.name) == f.default, f.name
    # version 1 (one event a record) is still read, and equals the version 2 event
    one = json.loads(json.dumps(event_to_wire(evs[0])))
    # the keys version-1 consumers know: compatibility is kept
    full = next(e for e in evs if e.answers and e.edns and e.authority and e.additional)
    full.process, full.latency, full.cause = evs[0].process, 0.5, {"pid": 1}
    full.malformed = "bad_rdata"
    # the keys version-1 consumers know, and the new ones (older readers ignore them)
    assert set(event_to_wire(full)) == {"v", "ts", "t", "ipv", "s", "d", "id", "f", "rc", "q", "c", "sz",
                                        "k", "a", "e", "p", "lat", "cause", "ns", "ar", "m"}
    # empty sections and no damage add no keys
    plain = next(e for e in evs if not (e.authority or e.additional or e.malformed))
    assert not {"ns", "ar", "m"} & set(event_to_wire(plain))
    assert one["v"] == 1 and event_from_wire(one) == back[0] == events_from_record(one)[0]


def test_record_versions():
    assert WIRE_VERSION == 2 and READ_VERSIONS == (1, 2)
    for bad in ({"v": 99, "evs": []}, {"evs": []}, {"v": "2"}):
        with pytest.raises(WireVersionError, match="reads versions 1, 2"):
            events_from_record(bad)
    with pytest.raises(TypeError):
        events_from_record([1, 2])
    with pytest.raises(KeyError):
        events_from_record({"v": 2, "evs": [{"ts": 1.0}]})


def test_type_check_names_the_field(data):
    ev = decoded(data)[0]
    assert wire_type_error(ev) == ""
    d = to_wire_fields(ev)
    d["q"][0][0] = 5
    assert wire_type_error(events_from_record({"v": 2, "evs": [d]})[0]) == "questions.name is int"
    d = to_wire_fields(ev)
    d["s"][0] = None
    assert wire_type_error(events_from_record({"v": 2, "evs": [d]})[0]) == "src_ip is NoneType"


def test_feed_goes_on_after_an_event_that_breaks_the_pipeline(data):
    evs = decoded(data)[:30]
    bad = evs[7]
    seen = []

    def observer(e):
        if e is bad:
            raise RuntimeError("poison")
        seen.append(e)

    pipe = Pipeline(load_rules(None), [], [], observers=[observer])
    errors = []
    feed(pipe, Batch(list(evs)), errors.append)
    assert [str(e) for e in errors] == ["poison"]
    assert seen == [e for e in evs if e is not bad]  # before and after it, in order
    with pytest.raises(RuntimeError):  # without on_error it stops the run
        feed(Pipeline(load_rules(None), [], [], observers=[observer]), Batch(list(evs)))


def test_pcap_source_through_the_driver_matches_event_by_event(data):
    paths = [str(data / c) for c in CAPTURES]
    one = PcapSource(paths, DEFAULT_PORTS)
    ref = Pipeline(load_rules(None), [], [])
    for b in one.batches():
        for e in b.events:
            ref.process(e)
    ref_stats = ref.close()
    src = PcapSource(paths, DEFAULT_PORTS)
    lanes = Lanes.single(Pipeline(load_rules(None), [], []))
    res = drive(src, lanes)
    st = lanes.stats()
    assert res.batches >= 2 and not res.interrupted
    assert st.events == ref_stats.events > 20
    assert (st.queries, st.responses, st.unanswered) == (ref_stats.queries, ref_stats.responses,
                                                          ref_stats.unanswered)
    assert src.stats()["packets"] == one.stats()["packets"] > 0
