"""Coverage-guided fuzzing of every parser of hostile input, for a bounded time
(atheris + libFuzzer; tests/fuzz/). Each target starts from the seeds kept in
tests/fuzz/seeds/<target> and the corpus the earlier runs grew in
.fuzz-corpus/<target> (kept between runs, not committed); a crash, an
unexpected exception or a C/Python decoder disagreement fails the test with
the input that caused it. Each run reports how many inputs it tried.

DETECTOR_FUZZ_SECONDS sets the time per target (default 12).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from detector.paths import REPO
from tests.conftest import REPORT

SECONDS = int(os.environ.get("DETECTOR_FUZZ_SECONDS", "12"))
MAX_LEN = {"wire": 1024, "packets": 8192, "tcp": 8192, "pcap": 16384, "rules": 4096}


@pytest.mark.parametrize("target", ["wire", "packets", "tcp", "pcap", "rules"])
def test_fuzz_target_survives(target, tmp_path):
    pytest.importorskip("atheris", reason="atheris is installed by ./setup.sh (the [test] extra)")
    corpus = REPO / ".fuzz-corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = REPO / "tests" / "fuzz" / "seeds" / target
    r = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-max_total_time={SECONDS}", f"-max_len={MAX_LEN[target]}",
         "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(corpus), str(seeds)],
        cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 120)
    log = r.stdout + r.stderr
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    runs = int(m.group(1)) if m else 0
    REPORT.append(f"fuzz {target}: {runs:,} inputs in {SECONDS} s, corpus {len(os.listdir(corpus)):,}, "
                  f"{'no crash' if r.returncode == 0 else 'CRASH'}")
    crashes = sorted(p.name for p in tmp_path.iterdir())
    assert r.returncode == 0, (f"{target}: {crashes}\n" + "\n".join(
        line for line in log.splitlines() if not line.startswith(("INFO:", "#")))[-4000:])
    assert runs > 100, log[-2000:]
