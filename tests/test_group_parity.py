"""Consumer-group parity: sensors publish the tunnel captures to dns-events
(4 partitions) and two `detector consume` members share them; together they
raise exactly the alerts of one plain `detector replay pcap` of the same
captures, with the same ids, revisions and statuses.

This holds because the sensor keys each event by its detection entity (the
process, else the client: what tunnel, exfiltration, DGA and per-process health
windows are kept by), DoT/DoH connection records travel with their entity's
events, and health windows are aligned to the clock rather than to the first
event a partition saw. Runs on the real embedded broker and real captures."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from detector.broker import EmbeddedBroker
from detector.capture.pcap import PcapReader
from detector.paths import REPO, bundled, shared_data
from tests.conftest import DETECTOR, json_lines, run_detector


def _captures() -> list[str]:
    t = shared_data() / "tunnel"
    caps = [t / "dns2tcp_netrack_2018-03-23.pcap", t / "iodine_elastic_examples.pcap",
            *sorted((t / "ndpi").glob("*.pcap")), bundled("demo.pcap")]
    missing = [str(c) for c in caps if not Path(c).exists()]
    if missing:
        pytest.fail(f"shared data missing: {missing}")

    def first_ts(p) -> float:  # replayed in time order, as one sensor would have seen them
        r = PcapReader(str(p))
        try:
            return next(iter(r))[0]
        finally:
            r.close()

    return [str(c) for c in sorted(caps, key=first_ts)]


def _alerts(path: Path) -> list[tuple]:
    return sorted((d["rule"]["id"], d["event"]["id"], d["dns_detector"]["revision"], d["dns_detector"]["status"],
                   d["dns_detector"]["entity"]) for d in json_lines(path.read_text()))


def _assigned(err: Path) -> list[int] | None:
    lines = [ln for ln in err.read_text().splitlines() if "assigned partitions" in ln]
    return json.loads(lines[-1].split("assigned partitions ")[1].split(" of ")[0]) if lines else None


def test_group_raises_exactly_the_alerts_of_one_replay(tmp_path):
    caps = _captures()
    rules = ["--rules", str(REPO / "rules")]
    ref = run_detector("replay", "pcap", *caps, "-q", "-o", str(tmp_path / "replay.jsonl"), *rules, timeout=300)
    assert ref.returncode == 0, ref.stderr
    want = _alerts(tmp_path / "replay.jsonl")
    rules_hit = {a[0] for a in want}
    # the captures exercise the per-entity rules, including the small exfiltration of dnscat2
    assert {"dns-tunnel", "dns-exfiltration", "dns-health", "dns-resolver-bypass", "dns-dga"} <= rules_hit, rules_hit
    assert any(a[0] == "dns-exfiltration" and a[4] == "192.168.220.56" for a in want)  # dnscat2's client

    with EmbeddedBroker(topics={"dns-alerts": 1, "dns-events": 4}) as b:
        procs = []
        for i in range(2):
            err = open(tmp_path / f"c{i}.err", "w")
            procs.append(subprocess.Popen(
                DETECTOR + ["consume", "--kafka", b.bootstrap, "--group", "g", *rules,
                            "--spool-dir", str(tmp_path / "spool"), "--max-idle", "6",
                            "-o", str(tmp_path / f"c{i}.jsonl"), "--summary-json", str(tmp_path / f"c{i}.json")],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err))
        try:
            deadline = time.monotonic() + 60
            while True:  # publish once both members hold a share, so no rebalance mid-stream
                a = [_assigned(tmp_path / f"c{i}.err") for i in range(2)]
                if all(a) and sorted(a[0] + a[1]) == [0, 1, 2, 3]:
                    break
                assert all(p.poll() is None for p in procs), "a consumer exited early"
                assert time.monotonic() < deadline, f"group never balanced: {a}"
                time.sleep(0.2)
            pub = run_detector("replay", "pcap", *caps, "--publish-events", "--kafka", b.bootstrap,
                               "--spool-dir", str(tmp_path / "spool"), "--no-stdout", "-q", *rules, timeout=300)
            assert pub.returncode == 0, pub.stderr
            for p in procs:
                assert p.wait(timeout=120) == 0, (tmp_path / "c0.err").read_text()[-2000:]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    sums = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(2)]
    assert all(s["processed"] > 0 for s in sums), sums  # both members did a share
    got = sorted(_alerts(tmp_path / "c0.jsonl") + _alerts(tmp_path / "c1.jsonl"))
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing}\nextra {extra}"
    assert got == want  # the same multiset: nothing raised twice
