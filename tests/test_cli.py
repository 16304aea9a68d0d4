"""The command line itself: --version, -v anywhere on the line, captures from
stdin, progress over several files, live metrics, help examples and exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from detector import __version__
from detector.cli import split_verbose
from detector.detect.dga.features import FEATURE_VERSION
from detector.paths import bundled
from tests.conftest import DETECTOR, REPO, run_detector


def test_version_names_the_release_and_the_formats_it_speaks():
    r = run_detector("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"detector {__version__} ")
    assert f"DGA feature version {FEATURE_VERSION}" in r.stdout and "wire version" in r.stdout


def test_verbose_is_global_wherever_it_stands():
    assert split_verbose(["replay", "pcap", "x.pcap", "-vv"]) == (["replay", "pcap", "x.pcap"], 2)
    assert split_verbose(["-v", "score", "--verbose", "--", "-v"]) == (["score", "--", "-v"], 2)
    assert split_verbose(["replay", "pcap", "-q", "-o", "-"]) == (["replay", "pcap", "-q", "-o", "-"], 0)
    # after the subcommand it used to be "unrecognized arguments"
    r = run_detector("replay", "pcap", str(bundled("demo.pcap")), "-q", "--rules", "rules/denylist.yaml", "-vv")
    assert r.returncode == 0, r.stderr
    assert '"rule"' in r.stdout


# --- captures from stdin ---------------------------------------------------------

DEMO = str(bundled("demo.pcap"))
EVENTS = ("-q", "--events", "--format", "jsonl")


def _replay(*args: str, stdin=None, input: bytes | None = None, timeout: float = 300):
    return subprocess.run(DETECTOR + ["replay", "pcap", *args], input=input, stdin=stdin,
                          capture_output=True, timeout=timeout, cwd=REPO)


@pytest.mark.skipif(not shutil.which("tcpdump") or not shutil.which("editcap"), reason="needs tcpdump, editcap")
def test_stdin_gives_what_the_file_gives_pcap_and_pcapng(tmp_path):
    """`tcpdump -w - | detector replay pcap -`: every event and alert of the file
    replay, in order, for classic pcap (from tcpdump itself) and pcapng."""
    want = _replay(DEMO, *EVENTS)
    assert want.returncode == 0 and want.stdout.count(b"\n") > 2000
    dump = subprocess.Popen(["tcpdump", "-r", DEMO, "-w", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    got = _replay("-", *EVENTS, stdin=dump.stdout)
    dump.wait()
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    ng = tmp_path / "demo.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", DEMO, str(ng)], check=True)
    got = _replay("-", *EVENTS, input=ng.read_bytes())
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout


def test_stdin_that_is_not_a_capture_is_one_line():
    for data, msg in ((b"", "stdin: empty input, not a capture"),
                      (b"hello, not a capture\n", "stdin: not a pcap or pcapng file (starts with 68656c6c)")):
        r = _replay("-", "-q", input=data)
        assert r.returncode == 2
        err = r.stderr.decode()
        assert "Traceback" not in err and f"detector: error: {msg}" in err.splitlines()
    r = _replay("-", "-", "-q", input=b"")
    assert r.returncode == 2 and b"stdin can be read only once" in r.stderr


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_are_live_and_a_paused_stdin_hands_its_alerts_on():
    """The demo capture goes in on stdin, which stays open: while the command
    still runs, the endpoint counts the repeats suppressed so far (it used to
    say 0 until exit) and the events lost to /dev/full so far, and the alerts
    of what was read are on stdout already."""
    port = _free_port()
    p = subprocess.Popen(DETECTOR + ["replay", "pcap", "-", "-q", "--rules", "rules/",
                                     "--metrics-port", str(port), "--events", "--events-output", "/dev/full"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        p.stdin.write(open(DEMO, "rb").read())
        p.stdin.flush()
        suppressed = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            suppressed = _metric(text, "dns_detector_suppressed_total")
            lost = _metric(text, 'dns_detector_output_lost_total{kind="event",output="--events-output /dev/full"}')
            if suppressed and lost:
                break
            time.sleep(0.2)
        assert p.poll() is None, "the command ended with stdin still open"
        assert suppressed and suppressed > 0, suppressed
        assert lost and lost > 0, lost  # the events lost so far, counted as they are lost
        # alerts of the part read are out before the end of the input
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready, "no alert on stdout while stdin is paused"
        first = p.stdout.readline()
        assert json.loads(first)["event"]["kind"] == "alert"
    finally:
        out, err = p.communicate(timeout=120)
    assert p.returncode == 5, err.decode()[-2000:]
    assert b"detector: error: --events-output /dev/full: " in err


# --- progress ----------------------------------------------------------------------

_LINE = re.compile(r"(\S+)\s+\[#*\s*\]\s+([\d.]+)%\s+([\d,]+) pkts\s+[\d.,]+[kM]? pkts/s\s+"
                   r"(?:(ETA \d+:\d\d|done in \d+:\d\d)\s+)?([\d,]+) alerts")


def test_forced_progress_covers_every_file_with_rate_and_eta(data, tmp_path):
    """--progress with stderr not a terminal: one line a second and a last one;
    the share is of the bytes of both files (classic pcap used to stay at 0.0%)."""
    big = data / "tunnel" / "dns2tcp_netrack_2018-03-23.pcap"
    sj = tmp_path / "summary.json"
    r = _replay(str(big), DEMO, "--progress", "--summary-json", str(sj), "-o", "/dev/null")
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    shown = [x for x in err.splitlines() if " pkts/s " in x and " alerts" in x]
    lines = [_LINE.search(x) for x in shown]
    assert len(lines) >= 2 and all(lines), err
    pcts = [float(m.group(2)) for m in lines]
    assert pcts == sorted(pcts) and 0 < pcts[0] < 100, pcts
    assert "ETA" in (lines[0].group(4) or "")
    last = lines[-1]
    summary = json.loads(sj.read_text())
    assert last.group(1).endswith("demo.pcap") and last.group(2) == "100.0"
    assert last.group(4).startswith("done in")
    assert int(last.group(3).replace(",", "")) == summary["packets"]


def test_progress_of_stdin_counts_bytes_without_a_share():
    r = _replay("-", "--progress", "-o", "/dev/null", input=open(DEMO, "rb").read())
    assert r.returncode == 0
    last = [x for x in r.stderr.decode().splitlines() if " pkts/s " in x][-1]
    assert re.search(r"stdin\s+336\.\d kB\s+2,583 pkts", last), last
    assert "%" not in last and "ETA" not in last


def test_progress_on_a_terminal_redraws_in_place_and_is_erased(data):
    """stderr on a pseudo-terminal: the line is redrawn with \\r (no option needed),
    its share grows, and it is erased before the summary."""
    big = data / "tunnel" / "dns2tcp_netrack_2018-03-23.pcap"
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def pump():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    p = subprocess.run(DETECTOR + ["replay", "pcap", str(big), "-o", "/dev/null"],
                       stderr=slave, stdout=subprocess.PIPE, cwd=REPO, timeout=300)
    os.close(slave)
    t.join(10)
    os.close(master)
    assert p.returncode == 0
    out = b"".join(chunks).decode(errors="replace")
    draws = [m for m in (_LINE.search(x) for x in out.split("\r")) if m]
    assert draws, out
    pcts = [float(m.group(2)) for m in draws]
    assert pcts == sorted(pcts) and any(0 < x < 100 for x in pcts), pcts
    assert re.search(r"\r +\r", out), "the progress line is not erased"
    assert "replay summary" in out


# --- help ----------------------------------------------------------------------------

def test_score_help_example_is_what_the_shipped_model_says():
    r = run_detector("score", "--help")
    assert r.returncode == 0
    shown = re.findall(r"\$ echo (\S+) \| detector score\n\s+(\{.*\})", r.stdout)
    assert len(shown) == 3, r.stdout
    names = [n for n, _ in shown]
    got = run_detector("score", input="\n".join(names) + "\n")
    assert got.returncode == 0
    assert got.stdout.splitlines() == [line for _, line in shown]
    assert any(json.loads(line)["dga_alert"] for _, line in shown)  # the example shows an alert


@pytest.mark.parametrize("cmd", ["demo", "replay", "replay pcap", "live", "score", "eval", "consume",
                                 "top", "rules", "rules check", "broker"])
def test_every_command_help_has_examples_and_exit_codes(cmd):
    r = run_detector(*cmd.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout and "detector " in r.stdout.split("examples:")[1]
    assert "exit codes" in r.stdout


def test_top_level_help_lists_every_exit_code():
    from detector import errors

    r = run_detector("--help")
    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, int)}
    listed = r.stdout.split("exit codes:")[1]
    for c in codes:
        assert re.search(rf"(^|\s){c} ", listed), c
