"""Rule files: a bad one is refused with one line naming the file, the line and
what is wrong (exit 4), whether the fault is in the fields every rule has
(detector/ruleset.py) or in what the named detector accepts (detect/registry.py)."""

from __future__ import annotations

import pytest

from detector.detect.registry import detector_names, load_rules
from detector.ruleset import RuleError
from tests.conftest import run_detector

GOOD = """\
id: my-dga
title: DGA, tuned
detector: dga
severity: high
technique: {id: T1568.002, name: Domain Generation Algorithms}
thresholds:
  min_distinct: 12
  window: 600
"""


@pytest.mark.parametrize("change, line, words", [
    (("  window: 600", "  window: soon"), 8, "thresholds.window: expected a number, got 'soon'"),
    (("  window: 600", "  windw: 600"), 8, "thresholds.windw: detector 'dga' has no such threshold"),
    (("detector: dga", "detector: dgaa"), 3, "detector: unknown detector 'dgaa'"),
    (("severity: high", "severity: urgent"), 4, "severity: 'urgent' is not one of"),
    (("  min_distinct: 12", "  min_distinct: -1"), 7, "thresholds.min_distinct: must not be negative"),
    (("id: T1568.002", "id: 1568"), 5, "technique.id: '1568' is not a MITRE ATT&CK id"),
    (("  window: 600", "  window: [600"), 9, "not valid YAML"),
])
def test_a_bad_rule_names_file_line_and_fault(tmp_path, change, line, words):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD.replace(*change))
    with pytest.raises(RuleError) as e:
        load_rules([f])
    assert str(e.value).startswith(f"{f}:{line}: "), str(e.value)
    assert words in str(e.value)
    r = run_detector("rules", "check", str(f))
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"detector: error: {f}:{line}: ") and "Traceback" not in r.stderr
    assert all(ln.startswith("detector: hint:") for ln in lines[1:])


def test_the_good_rule_loads_and_every_detector_is_found_without_a_list(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(GOOD)
    rs = load_rules([f])
    assert rs.rules[0].thresholds == {"min_distinct": 12, "window": 600}
    # the registry walks detect/: every shipped detector, none named by hand
    assert set(detector_names()) >= {"denylist", "dga", "exfil", "flood", "health",
                                     "resolver_bypass", "resolvers", "tunnel"}
