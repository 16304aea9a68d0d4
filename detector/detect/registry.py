"""The detectors a rule can name, and the check of a rule against its detector.

Every module of this package that defines a detector registers it with
:func:`register` (``@register`` on the class); :func:`detector_class` finds it
by the name a rule gives (``detector: dga``). The modules are found by walking
the package, so a new detector is one new file here and nothing else.

:func:`load_rules` reads rules/*.yaml (:mod:`detector.ruleset`: the YAML and
the fields every rule has) and then checks each rule against its detector:
the detector exists, every threshold is one it declares in ``params`` with a
value of the declared kind, and the detector's own ``check_rule`` accepts the
rest. Errors name the file and the line::

    rules/dga.yaml:7: thresholds.score: expected a number, got 'high'
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
from typing import Any

from detector.ruleset import Rule, RuleError, RuleSet, read_rules

_REGISTRY: dict[str, type] = {}
_loaded = False
_SKIP = frozenset({"base", "registry"})


def register(cls: type) -> type:
    """Class decorator: make a detector available to rules under ``cls.name``."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__qualname__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import detector.detect as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name not in _SKIP and not m.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{m.name}")  # runs its @register


def detector_class(name: str) -> type | None:
    _discover()
    return _REGISTRY.get(name)


def detector_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def validate(rule: Rule) -> None:
    """Raise :class:`RuleError` when ``rule`` does not fit the detector it names."""
    path, lines = rule.source, rule.lines
    cls = detector_class(rule.detector)
    if cls is None:
        raise RuleError(path, lines.get("detector", 0),
                        f"detector: unknown detector {rule.detector!r} (known: {', '.join(detector_names())})")
    params: dict[str, Any] = cls.params
    for k, v in rule.thresholds.items():
        line = lines.get(f"thresholds.{k}", 0)
        if k not in params:
            known = ", ".join(sorted(params)) or "none"
            raise RuleError(path, lines.get(f"thresholds.{k}:key", line),
                            f"thresholds.{k}: detector {rule.detector!r} has no such threshold (known: {known})")
        default = params[k]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RuleError(path, line, f"thresholds.{k}: expected a number, got {v!r}")
            if not math.isfinite(v):  # NaN compares false with everything: the rule would never fire
                raise RuleError(path, line, f"thresholds.{k}: must be a finite number, got {v!r}")
            if v < 0:
                raise RuleError(path, line, f"thresholds.{k}: must not be negative, got {v!r}")
        elif isinstance(default, bool) and not isinstance(v, bool):
            raise RuleError(path, line, f"thresholds.{k}: expected true or false, got {v!r}")
        elif isinstance(default, (list, tuple)) and not isinstance(v, list):
            raise RuleError(path, line, f"thresholds.{k}: expected a list")
    check = getattr(cls, "check_rule", None)
    if check is not None:
        problem = check(rule)
        if problem:
            # "thresholds.window: ..." is reported at that threshold's line
            key = problem.partition(":")[0]
            raise RuleError(path, lines.get(key, lines.get("", 0)), problem)


def load_rules(paths: list[str | os.PathLike[str]] | None = None) -> RuleSet:
    """Read rule files or folders (default: the rules/ folder) and check every rule
    against its detector."""
    rs = read_rules(paths)
    for r in rs.rules:
        validate(r)
    return rs
