"""Random-subdomain (water-torture) floods: one alert per target, none for heavy benign traffic.

The capture is built with detector/capture/pcapwrite.py: random labels under
three target domains from 600 clients (answered NXDOMAIN, SERVFAIL, or not at
all), mixed with ordinary browsing of the Tranco list in the shared data, a
CDN with many unique answered names from many clients, and a mail server's
DNSBL lookups under spamhaus.org (unique names, mostly NXDOMAIN, allowlisted).
"""

from __future__ import annotations

import random

import pytest

from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from tests.conftest import json_lines, run_detector

RESOLVER = "10.0.0.53"
TARGETS = {"victim-bank.com": 3, "shop-target.net": 2, "isp-portal.org": None}  # rcode; None: no answer
BOT = "10.1.0.7"  # one bot sends a tenth of the flood against victim-bank.com
FLOOD_CLIENTS = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(600)]
T0 = 1_700_000_000.0
A = (1, b"\x5d\xb8\xd8\x22")


def _label(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(8, 14)))


def _lookup(frames, ts, client, name, rcode, qid, answers=(A,)) -> None:
    port = 1024 + qid % 60000
    frames.append((ts, eth_ip(client, RESOLVER, 17, udp(port, 53, dns_query(qid & 0xFFFF, name)))))
    if rcode is not None:
        resp = dns_response(qid & 0xFFFF, name, rcode=rcode, answers=list(answers) if rcode == 0 else [])
        frames.append((ts + 0.02, eth_ip(RESOLVER, client, 17, udp(53, port, resp))))


def flood_capture(path, benign: list[str], seed: int = 7) -> None:
    rng = random.Random(seed)
    frames: list = []
    qid = 0
    # the floods: 40 s, ~100 unique names per second per target
    for target, rcode in TARGETS.items():
        for i in range(4000):
            qid += 1
            client = BOT if target == "victim-bank.com" and i % 10 == 0 else rng.choice(FLOOD_CLIENTS)
            _lookup(frames, T0 + 30 + i * 0.01 + rng.random() * 0.01, client,
                    f"{_label(rng)}.{target}", rcode, qid)
        # the target's real names keep being asked (and answered) by ordinary users
        for i in range(200):
            qid += 1
            _lookup(frames, T0 + i * 0.6, f"10.2.0.{i % 50 + 1}", f"www.{target}", 0, qid)
    # ordinary browsing: 100 users over the Tranco list, a few typos answered NXDOMAIN
    for i, dom in enumerate(benign):
        qid += 1
        name = rng.choice(("www.", "", "api.", "static.", "m.", "mail.")) + dom
        typo = rng.random() < 0.03
        _lookup(frames, T0 + i * 0.03, f"10.2.0.{i % 100 + 1}", ("x" + name) if typo else name,
                3 if typo else 0, qid)
    # a CDN: thousands of unique answered names from 300 clients
    for i in range(4000):
        qid += 1
        _lookup(frames, T0 + 20 + i * 0.02, f"10.3.{i % 300 // 250}.{i % 250 + 1}",
                f"scontent-{_label(rng)}-{i % 7}.xx.fbcdn.net", 0, qid)
    # a mail server's DNSBL lookups: reversed addresses under zen.spamhaus.org, mostly NXDOMAIN
    for i in range(4000):
        qid += 1
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        _lookup(frames, T0 + 20 + i * 0.02, "10.0.0.25", f"{ip}.zen.spamhaus.org",
                0 if rng.random() < 0.05 else 3, qid, answers=[(1, b"\x7f\x00\x00\x02")])
    write_pcap(path, 1, sorted(frames, key=lambda f: f[0]))


@pytest.fixture(scope="module")
def capture(tmp_path_factory, data):
    tranco = (data / "benign" / "tranco_top50k_2026-08-01.txt").read_text().split()
    path = tmp_path_factory.mktemp("flood") / "flood.pcap"
    flood_capture(path, tranco[:4000])
    return path


def flood_alerts(pcap, *rules) -> list[dict]:
    rules = rules or ("rules/flood.yaml", "rules/allowlist.yaml")
    res = run_detector("replay", "pcap", str(pcap), "--format", "jsonl", "-q",
                       *[x for r in rules for x in ("--rules", r)])
    assert res.returncode == 0, res.stderr
    return [d for d in json_lines(res.stdout) if d.get("rule_id") == "dns-random-subdomain-flood"]


def test_one_alert_per_target_naming_domain_top_clients_and_rate(capture):
    alerts = flood_alerts(capture)
    assert sorted(a["domain"] for a in alerts) == sorted(TARGETS), [a["reason"] for a in alerts]
    for a in alerts:
        f = a["features"]
        assert a["technique"] == "T1499.002" and a["entity"] == "(all clients)"
        assert a["domain"] in a["reason"] and f["target"] == a["domain"]
        # ~100 names/s: the flood's rate, from when the failures began, not the window's average
        assert 70 <= f["unique_per_second"] <= 130 and 90 <= f["peak_queries_per_second"] <= 130
        assert f["failure_share"] >= 0.6 and f["clients"] >= 100 and f["unique_subdomains"] >= 300
        assert len(f["sample_subdomains"]) == 3 and "www" not in f["sample_subdomains"]  # the flood's names
        top = f["top_clients"]
        assert len(top) == 5 and all(t["client"].startswith("10.1.") for t in top)
        assert top[0]["client"] in a["reason"] and "/s" in a["reason"]
    by = {a["domain"]: a["features"] for a in alerts}
    assert by["victim-bank.com"]["top_clients"][0]["client"] == BOT
    assert by["victim-bank.com"]["nxdomain"] > 0 and by["shop-target.net"]["servfail"] > 0
    assert by["isp-portal.org"]["timeouts"] > 0


def test_the_allowlist_is_what_keeps_dnsbl_lookups_quiet(capture):
    # Without rules/allowlist.yaml the mail server's DNSBL lookups look like a flood
    # (unique names, NXDOMAIN): the allowlist, not luck, keeps them out. The CDN and
    # the browsing are answered, so they stay quiet either way.
    alerts = flood_alerts(capture, "rules/flood.yaml")
    assert sorted(a["domain"] for a in alerts) == sorted([*TARGETS, "spamhaus.org"])


def test_state_stays_flat_under_a_flood_of_unique_names():
    """Unique names never pile up: per domain and half-window the distinct names and
    clients are a 256-byte HyperLogLog past a few dozen, and at most max_domains domains
    are kept (least recently seen evicted). The estimates stay within 20% of the truth."""
    from detector.detect import flood
    from detector.events import DnsEvent, Question
    from detector.pipeline.enrich import Enricher
    enrich = Enricher()
    from detector.detect.registry import load_rules

    rules = load_rules(["rules/flood.yaml"])
    rules.rules[0].thresholds.update(max_domains=50, window=1e9)  # one half-window: exact truth below
    d = flood.Flood(rules.rules[0], rules)
    rng = random.Random(1)
    names: dict[str, set] = {}
    clients: dict[str, set] = {}
    one_offs = 0

    def query(i: int, name: str, client: str) -> None:
        d.process(enrich(DnsEvent(T0 + i * 0.0002, "udp", 4, client, 4000, RESOLVER, 53, i & 0xFFFF, 0x0100, 0,
                                  [Question(name, 1)])))

    for i in range(60_000):
        dom, client = f"target{i % 40}.com", f"10.9.{rng.randrange(20)}.{rng.randrange(250)}"
        name = f"{_label(rng)}.{dom}"
        query(i, name, client)
        names.setdefault(dom, set()).add(name)
        clients.setdefault(dom, set()).add(client)
        if i % 8 == 0:  # a stream of domains seen once
            one_offs += 1
            query(i, f"www.once{i}.net", client)
    assert len(d.state) == 50 and d.evicted == one_offs - 10
    assert set(names) <= set(d.state)
    for dom in names:
        h = d.state[dom].cur
        assert isinstance(h.names, bytearray) and len(h.names) == 256
        assert isinstance(h.more, bytearray) and len(h.top) == flood.TOP_CAP
        est, approx = flood._distinct([h.names])
        assert approx and abs(est - len(names[dom])) < 0.2 * len(names[dom]), (dom, est, len(names[dom]))
        est, approx = flood._distinct([h.clients()])
        assert approx and abs(est - len(clients[dom])) < 0.2 * len(clients[dom]), (dom, est, len(clients[dom]))


def test_thresholds_are_validated(tmp_path):
    bad = tmp_path / "flood.yaml"
    bad.write_text(open("rules/flood.yaml").read().replace("min_fail_share: 0.6", "min_fail_share: 6"))
    res = run_detector("rules", "check", str(bad))
    assert res.returncode == 4 and "min_fail_share" in res.stderr and "Traceback" not in res.stderr
