"""Failures are never silent: an output that cannot be written gives one
`detector: error:` line naming it, the count of what was lost and exit code 5;
a bad path of any kind is refused before the capture is read, without a
traceback. Every test runs the real command on the bundled capture."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from detector import errors
from detector.paths import bundled
from tests.conftest import DETECTOR, REPO, run_detector

DEMO = str(bundled("demo.pcap"))
RULES = ("--rules", "rules/")


def replay(*args: str, stdout=subprocess.PIPE, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(DETECTOR + ["replay", "pcap", *args], stdout=stdout, stdin=stdin,
                          stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO)


def errors_of(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("detector: error:")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """What a run that loses nothing writes: the alerts and events of the demo capture."""
    d = tmp_path_factory.mktemp("base")
    r = replay(DEMO, "-q", "--events", "-o", str(d / "all.jsonl"), "--summary-json", str(d / "s.json"))
    assert r.returncode == 0, r.stderr
    docs = [json.loads(x) for x in (d / "all.jsonl").read_text().splitlines()]
    summary = json.loads((d / "s.json").read_text())
    alerts = summary["alerts"]
    assert alerts > 0 and len(docs) > alerts
    return {"alerts": alerts, "events": len(docs) - alerts}


def test_alerts_into_a_full_device_exit_5_and_say_how_many_were_lost(baseline):
    r = replay(DEMO, "-q", "-o", "/dev/full")
    assert r.returncode == errors.SINK == 5, r.stderr
    n = baseline["alerts"]
    assert errors_of(r.stderr) == [
        f"detector: error: -o /dev/full: {n:,} of {n:,} alerts not written: No space left on device"]


def test_stdout_on_a_full_device_is_a_loss_too(baseline):
    with open("/dev/full", "w") as full:
        r = replay(DEMO, "-q", stdout=full)
    assert r.returncode == 5, r.stderr
    n = baseline["alerts"]
    assert errors_of(r.stderr) == [f"detector: error: stdout: {n:,} of {n:,} alerts not written: "
                                   "No space left on device"]


def test_events_output_failure_is_counted_and_the_alerts_still_arrive(baseline):
    r = replay(DEMO, "-q", "--events", "--events-output", "/dev/full")
    assert r.returncode == 5, r.stderr
    n = baseline["events"]
    assert errors_of(r.stderr) == [f"detector: error: --events-output /dev/full: {n:,} of {n:,} events "
                                   "not written: No space left on device"]
    assert len(r.stdout.splitlines()) == baseline["alerts"]  # the other output lost nothing


def test_a_full_disk_midway_counts_exactly_what_did_not_make_it(tmp_path, baseline):
    """A 64 KiB file system fills up part way: the lines in the file plus the
    lines reported lost are every line written; at most one line is torn."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mnt / "all.jsonl"
        r = replay(DEMO, "-q", "--events", "-o", str(out))
        assert r.returncode == 5, r.stderr
        (line,) = errors_of(r.stderr)
        # "-o PATH: 2,501 of 2,586 events and 15 of 15 alerts not written: No space left on device"
        parts = line.split(": ", 3)[3].split(" not written")[0].replace(",", "").split(" and ")
        lost = {p.split()[3]: (int(p.split()[0]), int(p.split()[2])) for p in parts}
        assert lost["events"][1] == baseline["events"] and lost["alerts"][1] == baseline["alerts"]
        total_lost = lost["events"][0] + lost["alerts"][0]
        lines = out.read_bytes().split(b"\n")
        whole = 0
        torn = 0
        for x in lines:
            if not x:
                continue
            try:
                json.loads(x)
                whole += 1
            except ValueError:
                torn += 1
        assert 0 < whole and 0 < total_lost
        assert torn <= 1
        assert whole + total_lost == baseline["events"] + baseline["alerts"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _refused_before_reading(*args: str) -> subprocess.CompletedProcess:
    """Run a replay of stdin that never gets a byte: a command that checks its
    outputs first exits at once; one that read the capture first would hang."""
    p = subprocess.Popen(DETECTOR + ["replay", "pcap", "-", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        assert p.poll() is not None, "the command waited for the capture instead of refusing its output"
        out, err = p.stdout.read(), p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
        p.stdin.close()
        p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_summary_into_a_missing_folder_is_refused_before_the_capture_is_read(tmp_path):
    gone = tmp_path / "missing"
    r = _refused_before_reading("-q", "--summary-json", f"{gone}/x.json")
    assert r.returncode == 5, r.stderr
    assert errors_of(r.stderr) == [f"detector: error: --summary-json {gone}/x.json: cannot write: "
                                   f"folder {gone} does not exist"]


@pytest.mark.parametrize("opt", ["-o", "--events-output"])
def test_outputs_that_cannot_be_opened_are_refused_first(tmp_path, opt):
    extra = ["--events"] if opt == "--events-output" else []
    gone = tmp_path / "missing"
    r = _refused_before_reading("-q", *extra, opt, f"{gone}/out.jsonl")
    assert r.returncode == 5
    assert errors_of(r.stderr) == [f"detector: error: {opt} {gone}/out.jsonl: cannot write: "
                                   f"folder {gone} does not exist"]
    r = _refused_before_reading("-q", *extra, opt, str(tmp_path))
    assert r.returncode == 5
    assert errors_of(r.stderr) == [f"detector: error: {opt} {tmp_path}: cannot write: is a directory"]


def test_a_folder_as_input_is_refused_before_any_alert(tmp_path):
    # the folder comes second: the first file's alerts must not go out before the refusal
    r = replay(DEMO, "detector/", "-q")
    assert r.returncode == errors.USAGE == 2
    assert errors_of(r.stderr) == ["detector: error: detector/: is a directory, not a capture file"]
    assert r.stdout == ""
    r = replay(DEMO, str(tmp_path / "missing.pcap"), "-q")
    assert r.returncode == 2
    assert errors_of(r.stderr) == [f"detector: error: {tmp_path / 'missing.pcap'}: no such file"]


def test_output_file_is_truncated_unless_append(tmp_path, baseline):
    out = tmp_path / "alerts.jsonl"
    out.write_text("an old line, not JSON\n" * 3)
    r = replay(DEMO, "-q", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == baseline["alerts"]
    assert all(json.loads(x) for x in lines)
    r = replay(DEMO, "-q", "-o", str(out), "--append")
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines() == lines + lines


def test_one_file_for_alerts_and_events_keeps_every_line(tmp_path, baseline):
    out = tmp_path / "all.jsonl"
    r = replay(DEMO, "-q", "--events", "-o", str(out), "--events-output", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == baseline["alerts"] + baseline["events"]
    assert all(json.loads(x) for x in lines)


def test_score_output_failure_exits_5_without_a_traceback():
    r = run_detector("score", "-o", "/dev/full", input="example.com\nbpujwsmplvftnqcx.ru\n")
    assert r.returncode == 5
    assert errors_of(r.stderr) == ["detector: error: -o /dev/full: write failed after 0 scores: "
                                   "No space left on device; the rest are not written"]


def test_exit_codes_of_failures_lost_over_pending_over_the_run():
    """Outputs.failures and exit_code: lost documents (5) win over documents only
    kept in a spool (6, the Kafka sink), which win over the run's own code but 130."""
    from detector.commands.common import Outputs, exit_code
    from detector.sinks.base import Sink

    class Stub(Sink):
        def __init__(self, code, why):
            self.failure_code, self.why, self.name = code, why, "stub"

        def write(self, doc, key=None):
            pass

        def failure(self):
            return self.why

    def code(*sinks, run=errors.OK):
        o = Outputs()
        o.alerts.extend(sinks)
        return exit_code(o, run)

    ok = Stub(errors.SINK, None)
    pending = Stub(errors.PENDING, "3 alerts not delivered, kept in spool /x")
    lost = Stub(errors.SINK, "-o f: 1 of 2 alerts not written: No space left on device")
    assert code(ok) == 0 and code(ok, run=errors.ALERTS) == 1
    assert code(ok, pending) == 6 and code(pending, run=errors.TRUNCATED) == 6
    assert code(pending, lost) == 5 and code(lost, run=errors.ALERTS) == 5
    assert code(lost, run=errors.INTERRUPTED) == 130


def test_an_output_that_is_the_input_is_refused_and_the_capture_kept(tmp_path):
    cap = tmp_path / "x.pcap"
    cap.write_bytes(open(DEMO, "rb").read())
    before = cap.read_bytes()
    for opt in ("-o", "--summary-json"):
        r = replay(str(cap), "-q", opt, str(cap))
        assert r.returncode == 2
        assert errors_of(r.stderr) == [f"detector: error: {opt} {cap}: is the input capture {cap}; "
                                       "writing would destroy it"]
        assert cap.read_bytes() == before


def test_a_closed_stdout_is_refused_at_once():
    for cmd in (["replay", "pcap", DEMO, "-q"], ["score"]):
        r = subprocess.run(DETECTOR + cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120,
                           preexec_fn=lambda: os.close(1))
        assert r.returncode == 5, r.stderr
        assert errors_of(r.stderr) == ["detector: error: stdout is closed: nowhere to write (give -o FILE)"]


def test_a_listing_printed_to_a_full_device_is_one_line_and_exit_5():
    """A command that prints (here `rules list`) onto a full disk: one line, exit 5,
    no traceback, whether the write fails while printing or at the final flush."""
    with open("/dev/full", "w") as full:
        r = subprocess.run(DETECTOR + ["rules", "list"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120, cwd=REPO)
    assert r.returncode == errors.SINK == 5, r.stderr
    assert errors_of(r.stderr) == ["detector: error: writing output failed: No space left on device"]
