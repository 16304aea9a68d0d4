"""The command line itself: --version, and -v anywhere on the line."""

from __future__ import annotations

from detector import __version__
from detector.cli import split_verbose
from detector.detect.dga.features import FEATURE_VERSION
from detector.paths import bundled
from tests.conftest import run_detector


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
