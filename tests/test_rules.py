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
    # what the detector's own check refuses is reported at the key it names
    (("  window: 600", "  window: 600\n  min_alike: 2"), 9, "thresholds.min_alike: a share between 0 and 1"),
    (("  window: 600", "  window: 600\nparams:\n  model: 3"), 10, "params.model: expected a path"),
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


# --- hostile rule files: bounded, refused at their line, never a traceback or a hang ---
HEAD = "id: x\ntitle: t\ndetector: denylist\nseverity: high\ntechnique: {id: T1071.004}\n"
LAUGHS = HEAD + "params:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)) + "  domains: [a.com]\n"


@pytest.mark.parametrize("text, line, words", [
    (LAUGHS, 7, "values once aliases are expanded"),  # ~700 bytes that expand to 9^9 values
    (HEAD + "params:\n  domains: !!python/object/apply:os.system ['true']\n", 7,
     "YAML tag tag:yaml.org,2002:python/object/apply:os.system is not allowed"),
    (HEAD + "params:\n  when: !!timestamp 2020-13-45\n  domains: [a.com]\n", 7, "is not a valid timestamp"),
    (HEAD + "params:\n  ? [a, b]\n  : 1\n  domains: [a.com]\n", 7, "keys must be plain words"),
    (HEAD + "params: &p\n  domains: [a.com]\n  me: *p\n", 6, "refers to itself"),
    (HEAD + "params:\n  domains: [a.com]\n  n: !!int \"abc\"\n", 8, "'abc' is not a valid int"),
    (HEAD + "params:\n  domains: [a.com]\n  deep: " + "[" * 5000 + "]" * 5000 + "\n", 8, "nest"),
    (HEAD + "params:\n  domains: [a.com]\n" + "".join(
        f"  x{i}: &x{i} " + "[" * 50 + (f"*x{i - 1}" if i else "1") + "]" * 50 + "\n" for i in range(40)), 8,
     "levels deep once aliases are expanded"),  # each anchor 50 deep, holding the one before
    (GOOD.replace("  min_distinct: 12", "  min_distinct: .nan"), 7, "must be a finite number, got nan"),
    (GOOD.replace("  window: 600", "  window: .inf"), 8, "must be a finite number, got inf"),
])
def test_a_hostile_rule_file_is_refused_at_its_line(tmp_path, text, line, words):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(RuleError) as e:
        load_rules([f])
    assert str(e.value).startswith(f"{f}:{line}: "), str(e.value)
    assert words in str(e.value)
    # and the command says so in one line, exit 4 (the timeout guards a hang, not a speed)
    r = run_detector("rules", "check", str(f), timeout=60)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and words in r.stderr


def test_a_huge_yaml_file_is_refused_and_a_domain_file_is_the_way(tmp_path, monkeypatch):
    from detector import ruleset

    monkeypatch.setattr(ruleset, "MAX_FILE_BYTES", 4096)
    big = tmp_path / "allow.yaml"
    big.write_text("kind: allowlist\ndomains:\n" + "".join(f"  - n{i}.example.net\n" for i in range(400)))
    with pytest.raises(RuleError) as e:
        load_rules([big])
    assert "domain_files" in str(e.value)
    (tmp_path / "names.txt").write_text("# site names\n" + "".join(f"N{i}.Example.NET.\n" for i in range(400)))
    big.write_text("kind: allowlist\ndomain_files: [names.txt]\ndomains: [extra.org]\n")
    rs = load_rules([big])
    assert rs.allowlist.covers_domain("www.n399.example.net") and rs.allowlist.covers_domain("a.extra.org")
    assert not rs.allowlist.covers_domain("n400.example.net")
    big.write_text("kind: allowlist\ndomain_files: [/dev/zero]\n")
    with pytest.raises(RuleError) as e:
        load_rules([big])
    assert "is not a regular file" in str(e.value)
    big.write_text("kind: allowlist\ndomain_files: [missing.txt]\n")
    with pytest.raises(RuleError) as e:
        load_rules([big])
    assert str(e.value).startswith(f"{big}:2: domain_files: cannot read")


def test_a_capture_given_as_rules_is_named_for_what_it_is(tmp_path):
    f = tmp_path / "x.pcap"
    f.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(40))
    r = run_detector("rules", "check", str(f))
    assert r.returncode == 4 and "not a rule file: byte 0 is not UTF-8 text" in r.stderr, r.stderr


def test_two_rules_with_one_id_are_refused_naming_both_files(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("title: DGA, tuned", "title: another"))
    with pytest.raises(RuleError) as e:
        load_rules([tmp_path])
    assert str(e.value).startswith(f"{tmp_path / 'b.yaml'}:1: id: 'my-dga' is already used by {tmp_path / 'a.yaml'}")


def test_an_escaped_dot_is_inside_a_label_not_a_parent():
    """The decoder writes a dot inside a label as ``\\.`` (as dig does): the name
    ``evil\\.google.com`` is one label, ``evil.google``, under ``com``. It is somebody's
    registered domain, not google.com's, and an allowlist of google.com must not cover it."""
    from detector.dns.names import split_domain
    from detector.ruleset import Allowlist

    allow = Allowlist(domains=("google.com",))
    assert allow.covers_domain("www.google.com") and allow.covers_domain("google.com")
    assert not allow.covers_domain("evil\\.google.com")
    assert not allow.covers_domain("a.evil\\.google.com")
    assert allow.covers_domain("a\\.b.google.com")  # a label "a.b" under google.com
    assert split_domain("x.evil\\.google.com") == ("x", "evil\\.google.com", "com")
    assert split_domain("a\\.b.example.co.uk") == ("a\\.b", "example.co.uk", "co.uk")


def test_every_shipped_rule_shows_every_threshold_its_detector_takes():
    # rules are data: what a rule file does not show is a default a reader cannot see
    from detector.detect.registry import detector_class
    for r in load_rules(None).rules:
        missing = sorted(set(detector_class(r.detector).params) - set(r.thresholds))
        assert not missing, f"{r.source}: thresholds not shown: {', '.join(missing)}"
