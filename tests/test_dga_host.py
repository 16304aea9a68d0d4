"""Host-level DGA evidence: campaigns per host, prevalence, one updated alert,
no TLD prior, and the simulated office (bench/dga_office.py) at small scale.

Captures are built from real names in ../shared/data and replayed with the real
command line; the office test replays with a model trained without the
families it walks and without the popular list its hosts browse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import dga_office
from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from detector.detect.dga import shape_of
from detector.detect.dga.model import DgaModel
from detector.detect.dga.prevalence import Prevalence
from detector.paths import REPO
from tests.conftest import json_lines, run_detector

T0 = 1_780_000_000.0


def _names(path: Path, n: int | None = None) -> list[str]:
    out = [x.strip().lower() for x in path.read_text(errors="replace").splitlines()]
    out = [x for x in out if x and "." in x and not x.startswith("#")]
    return out[:n] if n else out


class Capture:
    """DNS exchanges (query + answer) as pcap frames."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.qid = 0

    def ask(self, t: float, client: str, name: str, rcode: int) -> None:
        self.qid = (self.qid + 1) & 0xFFFF
        sp = 20000 + self.qid % 40000
        self.frames.append((t, eth_ip(client, "10.0.0.53", 17, udp(sp, 53, dns_query(self.qid, name)))))
        ans = [(1, bytes([93, 184, 216, 34]))] if rcode == 0 else []
        self.frames.append((t + 0.01, eth_ip("10.0.0.53", client, 17,
                                             udp(53, sp, dns_response(self.qid, name, rcode=rcode, answers=ans)))))

    def write(self, path: Path) -> Path:
        self.frames.sort(key=lambda f: f[0])
        write_pcap(path, 1, self.frames)
        return path


def _dga_alerts(pcap: Path, *extra: str) -> list[dict]:
    r = run_detector("replay", "pcap", str(pcap), "-q", "--rules", "rules/dga.yaml",
                     "--rules", "rules/allowlist.yaml", *extra)
    assert r.returncode in (0, 3), r.stderr
    return [a for a in json_lines(r.stdout) if a["rule"]["id"] == "dns-dga"]


# --- no TLD prior ------------------------------------------------------------------------

def test_a_tld_never_makes_a_name_suspicious(data):
    """The same labels under .com, .xyz, .top and .app score the same: the model
    has no feature that sees the TLD (the old one learnt "new gTLD = DGA")."""
    m = DgaModel.load(REPO / "models" / "dga.joblib")
    labels = [n.split(".")[0] for n in _names(data / "benign/tranco_top50k_2026-08-01.txt", 400)
              if n.count(".") == 1][:200]
    labels += [n.split(".")[0] for n in _names(data / "dga/families/necro.txt", 50)]
    by_tld = {t: m.predict_proba([f"{lab}.{t}" for lab in labels])[:, 1] for t in ("com", "xyz", "top", "app")}
    for t in ("xyz", "top", "app"):
        assert (by_tld[t] == by_tld["com"]).all(), t


# --- prevalence ------------------------------------------------------------------------------

def test_prevalence_counts_clients_and_days_is_bounded_and_persists(tmp_path, data):
    names = _names(data / "benign/tranco_top50k_2026-08-01.txt", 300)
    p = Prevalence(max_entries=200)
    for i in range(40):
        p.observe(names[0], f"10.1.0.{i}", T0 + i)
    p.observe(names[1], "10.1.0.1", T0)
    for d in range(4):
        p.observe(names[2], "10.1.0.1", T0 + d * 86400)  # one host, every day: its C2, say
        p.observe(names[3], "10.1.0.1", T0 + d * 86400)
        p.observe(names[3], "10.1.0.2", T0 + d * 86400 + 5)
    assert p.clients(names[0]) >= 25  # 40 clients in a 64-bit sketch: most bits set
    assert p.clients(names[1]) == 1 and not p.prevalent(names[1], 5, 3)
    assert p.prevalent(names[0], 5, 3)
    # days count once two clients resolved it: one infected host's daily C2 is not prevalent
    assert not p.prevalent(names[2], 5, 3) and p.days(names[2]) == 1
    assert p.prevalent(names[3], 5, 3) and p.days(names[3]) == 4
    p.observe_nx(names[4], "10.1.0.3", T0)
    p.observe_nx(names[4], "10.1.0.4", T0)
    assert p.nx_clients(names[4]) == 2 and p.clients(names[4]) == 0
    for n in names[5:]:
        p.observe(n, "10.1.0.9", T0)
    # LRU bound: oldest out first; names that only failed (names[4]) take no place
    assert len(p) == 200 and p.evicted == len(names) - 1 - 200
    before = dict(p.table)
    for i in range(60_000):  # a random-subdomain flood cannot evict what resolves
        p.observe_nx(f"x{i}.example", "10.1.0.66", T0)
    assert p.table == before and len(p.nx) == p.max_nx
    path = tmp_path / "state" / "prevalence.json"
    p.save(path)
    q = Prevalence.load(path, max_entries=200)
    assert q.table == p.table and not path.with_name("prevalence.json.tmp").exists()


def test_prevalent_random_looking_names_never_alert_and_the_table_warms_a_later_run(tmp_path, data):
    """Hex and random-looking names that are really popular (they are in the 2026 top
    list) resolved NOERROR by many hosts raise nothing; the table saved by one
    replay (--prevalence) keeps a later replay from alerting on them, even when
    one host alone gets NXDOMAIN for them."""
    m = DgaModel.load(REPO / "models" / "dga.joblib")
    top = _names(data / "benign/tranco_top50k_2026-08-01.txt")
    odd = [n for n, s in zip(top, m.predict_proba(top)[:, 1]) if s >= m.storm_threshold][:30]
    assert len(odd) >= 20  # the popular list really holds names that look generated
    day1 = Capture()
    for i, name in enumerate(odd):
        for h in range(8):
            day1.ask(T0 + i * 3 + h * 0.1, f"10.2.0.{h + 2}", name, 0)
    state = tmp_path / "prevalence.json"
    assert _dga_alerts(day1.write(tmp_path / "day1.pcap"), "--prevalence", str(state)) == []
    assert len(json.loads(state.read_text())["entries"]) >= len(odd)
    # day 2: one host gets NXDOMAIN for all of them (a flaky resolver): known names
    day2 = Capture()
    for i, name in enumerate(odd):
        day2.ask(T0 + 86400 + i, "10.2.0.99", name, 3)
    pcap2 = day2.write(tmp_path / "day2.pcap")
    assert _dga_alerts(pcap2, "--prevalence", str(state)) == []
    # without the table the same names are a campaign: the prevalence is what stopped it
    assert _dga_alerts(pcap2)


def test_a_bad_prevalence_file_is_one_line_error(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    cap = Capture()
    cap.ask(T0, "10.3.0.2", "example.com", 0)
    r = run_detector("replay", "pcap", str(cap.write(tmp_path / "x.pcap")), "-q", "--prevalence", str(bad))
    assert r.returncode == 2 and "prevalence" in r.stderr and "Traceback" not in r.stderr


# --- one alert per host and campaign -------------------------------------------------------------

def test_a_campaign_is_one_alert_updated_as_it_grows(tmp_path, data):
    """A host walking 120 names of a wordlist family (names that score like
    ordinary ones one by one) is caught by the generator's shape within 30
    queries; the alert is one event.id, re-reported as the campaign doubles, and
    names the resolved C2 candidate; a benign neighbour is not alerted."""
    dga = _names(data / "dga/families/matsnu.txt", 120)
    browse = _names(data / "benign/tranco_top50k_2026-08-01.txt", 400)
    cap = Capture()
    for i, name in enumerate(dga):
        cap.ask(T0 + i * 2, "10.4.0.66", name, 0 if i == 15 else 3)
    for i, name in enumerate(browse):
        cap.ask(T0 + i * 0.6, "10.4.0.7", name, 0)
        cap.ask(T0 + i * 0.6 + 0.2, "10.4.0.66", name, 0)
    alerts = _dga_alerts(cap.write(tmp_path / "campaign.pcap"))
    assert {a["dns_detector"]["entity"] for a in alerts} == {"10.4.0.66"}
    assert len({a["event"]["id"] for a in alerts}) == 1
    revs = [a["dns_detector"]["revision"] for a in alerts]
    assert revs == list(range(1, len(revs) + 1)) and len(revs) >= 3
    first, last = alerts[0], alerts[-1]
    f = first["dns_detector"]["features"]
    assert f["count"] <= 30 and f["campaign"]["alphabet"] == shape_of(dga[0].split(".")[0])
    assert f["matched_by"] in ("generator shape", "score") and f["nxdomain_ratio"] >= 0.15
    assert set(f["sample_names"]) <= set(dga)
    lf = last["dns_detector"]["features"]
    assert lf["count"] >= 2 * f["count"] and last["dns_detector"]["count"] > 1
    assert dga[15] in {n for a in alerts for n in a["dns_detector"]["features"]["resolved_names"]}


# --- the office, small ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def holdout(tmp_path_factory, data) -> Path:
    return dga_office.holdout_model(tmp_path_factory.mktemp("m") / "holdout.joblib", limit=300,
                                    log=lambda *a: None)


def test_office_small_every_infected_host_caught_and_no_benign_host(tmp_path, holdout):
    """bench/dga_office.py at small scale: 40 benign hosts browse names of a popular
    list the model never saw (with typo NXDOMAINs), 6 hosts walk 6 unseen families;
    every rule is on. Each infected host is alerted within 30 DGA queries, no benign
    host by any rule."""
    fams = ("suppobox", "matsnu", "pushdo", "conficker", "kraken", "virut")
    pcap = tmp_path / "office.pcap"
    truth = dga_office.build_capture(pcap, benign_hosts=40, infected=6, minutes=10, families=fams)
    alerts, _, _ = dga_office.replay(pcap, dga_office.rules_with_model(tmp_path, holdout))
    res = dga_office.judge(alerts, truth)
    for h, v in res["infected"].items():
        assert v["queries_to_alert"] is not None and v["queries_to_alert"] <= 30, (h, v)
    assert res["benign_alerted"] == {}, res["benign_alerted"]
