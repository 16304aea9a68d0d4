"""Shared fixtures: the real-data folder, the detector command, small helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.paths import REPO, shared_data

IN_CI = os.environ.get("CI") == "true"
DETECTOR = [sys.executable, "-m", "detector"]


@pytest.fixture(scope="session")
def data() -> Path:
    d = shared_data()
    if not d.is_dir():
        if IN_CI:
            pytest.fail(f"the shared data folder {d} is missing in CI")
        pytest.skip(f"no shared data at {d} (set DETECTOR_SHARED_DATA)")
    return d


def run_detector(*args: str, input: str | None = None, timeout: float = 300,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `detector` command line; return the completed process."""
    e = {**os.environ, **(env or {})}
    return subprocess.run(DETECTOR + list(args), capture_output=True, text=True,
                          input=input, timeout=timeout, cwd=REPO, env=e)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


#: lines the run prints at its end (tests/test_fuzz.py: inputs tried per target)
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    import sys

    # tests import this module as tests.conftest, pytest loads it as conftest: both lists
    lines = [x for n in ("conftest", "tests.conftest") for x in getattr(sys.modules.get(n), "REPORT", [])]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
