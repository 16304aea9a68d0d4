"""The pipeline stages on real captures: correlation, enrichment, the detector
plug-in interface, suppression, ECS/OCSF rendering against the written schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from detector.capture.layers import PacketDecoder
from detector.capture.pcap import PcapReader
from detector.detect.base import Detector, entity_of, register
from detector.events import event_from_wire, event_to_wire
from detector.paths import REPO, bundled
from detector.dns.names import split_domain
from detector.pipeline.run import Pipeline
from detector.detect.registry import load_rules
from detector.ruleset import Rule, RuleSet, Allowlist

SCHEMA = json.loads((REPO / "docs" / "alert.schema.json").read_text())


class Collect:
    name = "collect"

    def __init__(self):
        self.docs = []

    def write(self, doc, key=None):
        self.docs.append(doc)

    def close(self):
        pass


@register
class EveryNxdomain(Detector):
    """A test plug-in: one finding per NXDOMAIN response."""

    name = "test_nxdomain"
    params = {"min_len": 0}
    kinds = frozenset({"response"})

    def process(self, ev):
        if ev.rcode == 3 and len(ev.qname) >= self.p["min_len"]:
            return [self.finding(ev, score=0.9, entity=entity_of(ev), domain=ev.registered_domain,
                                 features={"rcode": "NXDOMAIN"}, reason=f"{ev.qname} does not exist")]
        return []


@register
class NxdomainByTld(EveryNxdomain):
    """The same, one campaign per top-level domain: keys repeat, so suppression works."""

    name = "test_nxdomain_tld"

    def process(self, ev):
        fs = super().process(ev)
        for f in fs:
            f.domain = ev.qname.rsplit(".", 1)[-1]
        return fs


def rule(rid="TEST-1", window_detector="test_nxdomain") -> RuleSet:
    r = Rule(rid, "NXDOMAIN seen", window_detector, "medium", "T1568.002",
             "Dynamic Resolution: Domain Generation Algorithms")
    return RuleSet([r], Allowlist(), [])


def events(path: Path):
    dec = PacketDecoder()
    for ts, lt, fr in PcapReader(str(path)):
        yield from dec.frame(ts, lt, fr)


def test_responses_pair_with_queries_and_get_latency(data):
    out = Collect()
    pipe = Pipeline(rule(), [], [out], fmt="jsonl")
    for ev in events(data / "tunnel/dns2tcp_netrack_2018-03-23.pcap"):
        pipe.process(ev)
    st = pipe.close()
    resp = [d for d in out.docs if d["kind"] == "response"]
    assert st.responses == len(resp) > 4000
    paired = [d for d in resp if "latency_ms" in d]
    assert len(paired) / len(resp) > 0.99
    assert all(0 <= d["latency_ms"] < 5000 for d in paired)
    assert pipe.correlator.answered == len(paired)


def test_registered_domain_matches_tldextract(data):
    """The split agrees with tldextract itself on the same bundled list (read by
    names.psl_rules without importing tldextract)."""
    import tldextract

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
    names = [ln.strip().split(",")[-1] for ln in open(data / "benign/alexa_top100k_2015.csv")]
    names += [ln.strip() for ln in open(data / "benign/opendns-random-domains.txt")]
    names += ["a.b.city.kobe.jp", "x.y.kobe.jp", "foo.bar.ck", "www.ck", "a.xn--p1ai",
              "www.bbc.co.uk", "x.s3.amazonaws.com"]
    checked = 0
    for n in names:
        if "/" in n or not n:
            continue  # URLs, not DNS names
        r = extract(n.lower())
        if r.domain and r.suffix:
            assert split_domain(n) == (r.subdomain, f"{r.domain}.{r.suffix}", r.suffix), n
            checked += 1
    assert checked > 100000
    assert split_domain("1.2.0.192.in-addr.arpa")[1] == "in-addr.arpa"
    assert split_domain("printer.local") == ("", "printer.local", "local")


def test_one_walk_gives_every_lists_verdict_as_each_list_would(data):
    """Enrichment's DomainIndex (every list's verdict in one walk of a name) says what
    each list itself says, for the name and for its registered domain: the shipped
    allowlists and a denylist with names at every depth, over popular, random and
    awkward names (case, trailing dot, escaped dots, reverse lookups)."""
    from detector.dns.names import DomainIndex, under

    rs = load_rules([REPO / "rules"])
    lists = [rs.allowlist._set] + [r.allowlist._set for r in rs.rules if r.allowlist.domains]
    popular = [ln.strip() for ln in open(data / "benign/tranco_top50k_2026-08-01.txt")][:20000]
    deny = frozenset(n.split(",")[-1].lower() for n in popular[::97]) | {"com", "co.uk", "a.b.example.org"}
    lists.append(deny)
    from detector.detect.resolvers import load_doh_lists
    doh = load_doh_lists([])[0] | {"dns", "doh.example.org"}  # a bare entry covers itself only
    ix = DomainIndex()
    dots = [0] * len(lists) + [1, 0]
    lists += [doh, doh]
    bits = [ix.bit(lst, d) for lst, d in zip(lists, dots)]
    assert len(set(bits)) == len(bits) and ix.bit(deny) == bits[-3] and ix.bit(doh, 1) == bits[-2]
    names = [n.split(",")[-1] for n in popular]
    names += [ln.strip() for ln in open(data / "benign/opendns-random-domains.txt")][:5000]
    names += ["WWW.Example.ORG.", "x.a.b.example.org", "b.example.org", "evil\\.google.com",
              "a\\.b.example.org", "1.2.0.192.in-addr.arpa", "printer.local", "x.bbc.co.uk",
              "co.uk", "com", "a.cymru.com", "hash.cymru.com", "dns", "x.dns", "dns.google",
              "a.dns.google", "mozilla.cloudflare-dns.com", "x.doh.example.org"]
    names += sorted(doh)
    hits = reg_hits = 0
    for q in names:
        n = q.lower().rstrip(".")
        if not n:
            continue
        reg = split_domain(q)[1]
        m, r = ix.masks(n, reg)
        for b, lst, d in zip(bits, lists, dots):
            assert bool(m & b) == (under(n, lst, d) is not None), (q, b)
            assert bool(r & b) == (under(reg, lst, d) is not None), (q, reg, b)
            hits += bool(m & b)
            reg_hits += bool(r & b)
    assert hits > 100 and reg_hits > 100


def test_an_event_with_its_entity_already_set_is_still_judged_by_every_list():
    """The list verdicts come from the pipeline's own enrichment: an event that arrives
    with its entity set (not enriched here) is looked up too, so a denylist still
    fires and a rule's allowlist still holds."""
    from detector.events import DnsEvent, Question

    deny = Rule("D-1", "denylisted", "denylist", "high", "T1071.004", "x",
                params={"domains": ["evil.com"]})
    quiet = Rule("D-2", "denylisted, allowlisted", "denylist", "high", "T1071.004", "x",
                 allowlist=Allowlist(("x.evil.com",)), params={"domains": ["evil.com"]})
    out = Collect()
    pipe = Pipeline(RuleSet([deny, quiet], Allowlist(), []), [out])
    for i, name in enumerate(("x.evil.com", "y.Evil.com.", "fine.example.org")):
        pipe.process(DnsEvent(ts=1.0 + i, transport="udp", ip_version=4, src_ip="10.0.0.2",
                              src_port=40000 + i, dst_ip="10.0.0.53", dst_port=53, id=i, flags=0x0100,
                              rcode=0, questions=[Question(name, 1)], entity="curl[7]"))
    pipe.close()
    fired = sorted((d["rule"]["id"], d["dns"]["question"]["name"].lower().rstrip(".")) for d in out.docs)
    assert fired == [("D-1", "x.evil.com"), ("D-1", "y.evil.com"), ("D-2", "y.evil.com")], fired


def test_detector_plugin_suppression_and_schema():
    """NXDOMAINs from the bundled capture: a first alert per (rule, entity,
    domain) at once, and a closing revision of the same alert id with the count
    when the window closes; every alert validates against docs/alert.schema.json."""
    out = Collect()
    pipe = Pipeline(rule(window_detector="test_nxdomain_tld"), [out], suppress_window=30.0)
    for ev in events(bundled("demo.pcap")):
        pipe.process(ev)
    st = pipe.close()
    assert st.findings > 60
    firsts = [d for d in out.docs if d["dns_detector"]["revision"] == 1]
    closing = [d for d in out.docs if d["dns_detector"]["revision"] > 1]
    keys = [(d["rule"]["id"], d["dns_detector"]["entity"], d["dns_detector"]["domain"]) for d in firsts]
    # one first alert per key per window: a key repeats only after 30 s
    assert len(firsts) + st.suppressed == st.findings
    ids = [d["event"]["id"] for d in firsts]
    assert len(ids) == len(set(ids))
    for s in closing:
        assert s["dns_detector"]["count"] > 1 and s["dns_detector"]["status"] == "closed"
        assert s["event"]["id"] in ids  # the same alert, updated
    # suppression happened, and no key alerted twice within the 30 s window
    assert st.suppressed > 0 and len(set(keys)) < len(firsts) + st.suppressed
    when: dict[tuple, list[float]] = {}
    for k, d in zip(keys, firsts):
        when.setdefault(k, []).append(d["@timestamp"])
    for k, ts in when.items():
        from datetime import datetime
        t = sorted(datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp() for x in ts)
        assert all(b - a >= 30.0 for a, b in zip(t, t[1:])), (k, t)
    assert closing, "a suppressed key closes with a revision that counts its findings"
    for d in out.docs:
        jsonschema.validate(d, SCHEMA)
        assert d["threat"]["technique"]["id"] == "T1568"
        assert d["threat"]["technique"]["subtechnique"]["id"] == "T1568.002"
        assert d["dns"]["response_code"] == "NXDOMAIN"


def test_alert_ids_are_stable_across_runs():
    def run():
        out = Collect()
        pipe = Pipeline(rule(), [out])
        for ev in events(bundled("demo.pcap")):
            pipe.process(ev)
        pipe.close()
        return [d["event"]["id"] for d in out.docs]

    a, b = run(), run()
    assert a == b and a


def test_ocsf_rendering():
    out = Collect()
    pipe = Pipeline(rule(), [out], fmt="ocsf")
    for ev in events(bundled("demo.pcap")):
        pipe.process(ev)
    pipe.close()
    d = out.docs[0]
    assert d["class_uid"] == 2004 and d["type_uid"] == 200401
    # the sub-technique apart from its parent (OCSF attack.sub_technique)
    assert d["finding_info"]["attacks"][0]["technique"]["uid"] == "T1568"
    assert d["finding_info"]["attacks"][0]["sub_technique"]["uid"] == "T1568.002"
    assert d["evidences"][0]["query"]["hostname"]


def test_event_wire_form_round_trips_and_refuses_other_versions(data):
    evs = list(events(data / "pcap/zeek_traces/dns-edns-ecs.pcap"))
    assert any(e.edns and e.edns.client_subnet for e in evs)
    for e in evs:
        w = json.loads(json.dumps(event_to_wire(e)))
        back = event_from_wire(w)
        assert event_to_wire(back) == event_to_wire(e)
    w = event_to_wire(evs[0])
    w["v"] = 99
    with pytest.raises(ValueError, match="version 99"):
        event_from_wire(w)


def test_a_failing_detector_is_counted_not_fatal():
    @register
    class Broken(Detector):
        name = "test_broken"

        def process(self, ev):
            raise RuntimeError("boom")

    rs = RuleSet([Rule("B-1", "broken", "test_broken", "low", "T1071.004", "x")], Allowlist(), [])
    pipe = Pipeline(rs, [])
    n = 0
    for ev in events(bundled("demo.pcap")):
        pipe.process(ev)
        n += 1
    st = pipe.close()
    assert st.detector_errors >= n


def test_shipped_rules_load():
    rs = load_rules()
    assert rs.rules, "rules/ holds no rule"
    assert len({r.id for r in rs.rules}) == len(rs.rules)


def test_one_open_alert_per_campaign_updated_with_the_same_id():
    """The suppressor: a first finding is alert revision 1; plain repeats are only
    counted; a finding the detector marks ``revise`` (a campaign that doubled) or
    one of higher severity re-emits the same id with the next revision; a keyed
    campaign's window slides with its findings and closes with a final revision."""
    from detector.alerts.dedup import Suppressor
    from detector.events import Finding

    def f(ts, count, revise=False, severity="high", key="dga-campaign:letters", domain="x.com"):
        g = Finding("dns-dga", "DGA", 0.9, severity, "T1568.002", "DGA", "10.0.0.9", domain,
                    {"count": count}, "r", ts=ts, key=key)
        g.revise = revise
        return g

    s = Suppressor(window=100.0)
    out = s.offer(f(0, 10))
    assert [(x[2]["revision"], x[2]["status"]) for x in out] == [(1, "open")]
    aid = out[0][1]
    assert s.offer(f(10, 12, domain="y.com")) == []  # a repeat: counted, the key is the campaign
    out = s.offer(f(20, 20, revise=True, domain="z.com"))
    assert [(x[1], x[2]["revision"]) for x in out] == [(aid, 2)] and out[0][0].count == 3
    out = s.offer(f(30, 21, severity="critical"))
    assert [(x[1], x[2]["revision"]) for x in out] == [(aid, 3)]
    # the window slides with the campaign: still open 100 s after its start
    assert s.tick(125.0) == []
    out = s.tick(131.0)
    assert [(x[1], x[2]["revision"], x[2]["status"]) for x in out] == [(aid, 4, "closed")]
    assert s.suppressed == 1 and s.updates == 2
    # an unkeyed finding's window is fixed, and closes silently when nothing was added
    out = s.offer(f(200, 1, key=""))
    assert len(out) == 1 and s.tick(301.0) == []
