"""Read rules/*.yaml: the rule and allowlist records and their YAML form.

One YAML file holds one rule (pySigma style), or, with ``kind: allowlist``, the
allowlist every rule shares. This module knows the fields every rule has; what
a rule's thresholds may be is its detector's business, checked next to the
detectors (:mod:`detector.detect.registry`, whose ``load_rules`` reads and
checks). Every error names the file, the line and what is wrong, e.g.::

    rules/dga.yaml:7: thresholds.score: expected a number between 0 and 1, got 'high'
"""

from __future__ import annotations

import ipaddress
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.dns.names import under
from detector.events import ConnEvent, DnsEvent

SEVERITIES = ("low", "medium", "high", "critical")
#: distinct names an allowlist remembers its domain verdict for before it starts afresh
VERDICT_CACHE = 1 << 16


class RuleError(ValueError):
    """A rule file is invalid. ``str(err)`` is ``file:line: what``."""

    def __init__(self, path: str, line: int, msg: str) -> None:
        self.path, self.line, self.msg = path, line, msg
        super().__init__(f"{path}:{line}: {msg}")


@dataclass
class Allowlist:
    domains: tuple[str, ...] = ()  # suffixes: "example.com" covers "a.example.com"
    processes: frozenset[str] = frozenset()  # process name, comm or exe basename
    resolvers: tuple[Any, ...] = ()  # ip networks
    clients: tuple[Any, ...] = ()  # ip networks
    # the domain verdict per distinct name, bounded: every detector asks about the same
    # names, message after message (the lists never change once read, as _set assumes)
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def covers_domain(self, name: str) -> bool:
        if not self.domains or not name:
            return False
        cache = self._verdicts
        v = cache.get(name)
        if v is None:
            if len(cache) >= VERDICT_CACHE:
                cache.clear()
            # the name or a parent, one set lookup each; a dot escaped in a label (as the
            # decoder writes it: evil\\.google.com is one label under com) is not a parent's
            v = cache[name] = under(name.lower().rstrip("."), self._set) is not None
        return v

    @property
    def _set(self) -> frozenset[str]:
        s = self.__dict__.get("_domain_set")
        if s is None:
            s = self.__dict__["_domain_set"] = frozenset(self.domains)
        return s

    def covers_process(self, ev: DnsEvent | ConnEvent) -> bool:
        """The event's process is listed: by process name, thread name (comm) or
        executable basename."""
        p = ev.process
        if p is None or not self.processes:
            return False
        return (p.name in self.processes or p.comm in self.processes
                or os.path.basename(p.exe) in self.processes)

    def covers_resolver(self, ip: str) -> bool:
        return _in_nets(ip, self.resolvers)

    def covers_client(self, ip: str) -> bool:
        return _in_nets(ip, self.clients)

    @property
    def empty(self) -> bool:
        return not (self.domains or self.processes or self.resolvers or self.clients)

    def covers(self, ev: DnsEvent) -> bool:
        return self.covers_domain(ev.qname) or self.covers_process(ev) or _in_nets(
            ev.client[0], self.clients
        )

    def merged(self, other: "Allowlist") -> "Allowlist":
        return Allowlist(
            self.domains + other.domains,
            self.processes | other.processes,
            self.resolvers + other.resolvers,
            self.clients + other.clients,
        )


def _in_nets(ip: str, nets: tuple[Any, ...]) -> bool:
    if not nets:
        return False
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(a.version == n.version and a in n for n in nets)


@dataclass
class Rule:
    id: str
    title: str
    detector: str
    severity: str
    technique_id: str
    technique_name: str
    thresholds: dict[str, Any] = field(default_factory=dict)
    allowlist: Allowlist = field(default_factory=Allowlist)
    params: dict[str, Any] = field(default_factory=dict)  # detector-specific data (lists...)
    description: str = ""
    enabled: bool = True
    source: str = ""
    #: YAML line of each key ("detector", "thresholds.x", "" for the rule itself), for errors
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class RuleSet:
    rules: list[Rule]
    allowlist: Allowlist
    sources: list[str]

    def by_id(self, rid: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rid), None)


# --- YAML with line numbers ---------------------------------------------------

#: bounds on what one rule file may ask of the loader: bytes read, nesting,
#: aliases, and values built once aliases are expanded (a few hundred bytes of
#: nested anchors can otherwise expand to billions of values)
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1000
MAX_VALUES = 1_000_000
MAX_SECONDS = 10.0
MAX_DOMAIN_FILE_BYTES = 512 * 1024 * 1024
#: the YAML tags a rule file may use (plain data); anything else, such as
#: ``!!python/object``, is refused rather than ignored
SAFE_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
}

try:  # LibYAML: several times faster on large allowlists
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


def _check_events(path: str, text: str) -> None:
    """Nesting depth, alias count and explicit tags, from the event stream (no
    recursion, nothing built), before the file is composed."""
    depth = aliases = 0
    try:
        for ev in yaml.parse(text, Loader=_Loader):
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise RuleError(path, ev.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            tag = getattr(ev, "tag", None)
            if tag not in (None, "!") and tag not in SAFE_TAGS:
                raise RuleError(path, ev.start_mark.line + 1,
                                f"YAML tag {tag} is not allowed in rule files (plain data only)")
            if isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise RuleError(path, ev.start_mark.line + 1, f"more than {MAX_ALIASES} aliases (*name)")
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None


def _yaml_error(path: str, e: yaml.YAMLError) -> RuleError:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark else 0
    return RuleError(path, line, f"not valid YAML: {getattr(e, 'problem', None) or e}")


class _Budget:
    """Values built so far (aliases expanded), against MAX_VALUES, and the time
    spent, against MAX_SECONDS (checked every 4096 values)."""

    __slots__ = ("left", "path", "deadline")

    def __init__(self, path: str) -> None:
        self.left = MAX_VALUES
        self.path = path
        self.deadline = time.monotonic() + MAX_SECONDS


def _construct(node: yaml.Node, budget: _Budget | None = None, _stack: tuple = ()) -> Any:
    """Plain data from a node: only SAFE_TAGS, keys that are scalars, no anchor that
    contains itself, at most MAX_VALUES values once aliases are expanded. A value
    the tag cannot hold (``!!int "abc"``) is an error at its line."""
    path = budget.path if budget is not None else "<rules>"
    if budget is None:
        budget = _Budget(path)
    line = node.start_mark.line + 1
    budget.left -= 1
    if budget.left < 0:
        raise RuleError(path, line, f"more than {MAX_VALUES:,} values once aliases are expanded")
    if not budget.left & 0xFFF and time.monotonic() > budget.deadline:
        raise RuleError(path, line, f"took more than {MAX_SECONDS:.0f} s to read")
    if node.tag not in SAFE_TAGS:
        raise RuleError(path, line, f"YAML tag {node.tag} is not allowed in rule files (plain data only)")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if any(n is node for n in _stack):
            raise RuleError(path, line, "an anchor (&name) refers to itself")
        if len(_stack) >= MAX_DEPTH:  # aliases of nested anchors nest further than the text shows
            raise RuleError(path, line, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded")
        stack = _stack + (node,)
        if isinstance(node, yaml.SequenceNode):
            return [_construct(v, budget, stack) for v in node.value]
        out = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise RuleError(path, k.start_mark.line + 1, "keys must be plain words, not lists or mappings")
            out[_construct(k, budget, stack)] = _construct(v, budget, stack)
        return out
    try:
        return _SCALARS.construct_object(node, deep=True)
    except (ValueError, TypeError, OverflowError, yaml.YAMLError) as e:
        raise RuleError(path, line, f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}: {e}") from None
    finally:
        _SCALARS.constructed_objects.clear()  # the loader would keep every node it built


_SCALARS = yaml.SafeLoader("")


def _mapping(path: str, node: yaml.Node, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(path, node.start_mark.line + 1, f"{where}expected a mapping (key: value)")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise RuleError(path, k.start_mark.line + 1, f"{where}keys must be plain words")
        if k.value in out:
            raise RuleError(path, k.start_mark.line + 1, f"{where}{k.value}: key given twice")
        out[k.value] = (k, v)
    return out


RULE_KEYS = {
    "id", "title", "detector", "severity", "technique", "thresholds", "allowlist",
    "params", "description", "enabled", "kind",
}
ALLOW_KEYS = {"domains", "domain_files", "processes", "resolvers", "clients"}


def _str(path: str, key: str, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null",)) or node.value == "":
        raise RuleError(path, node.start_mark.line + 1, f"{key}: expected text")
    return str(node.value)


def _str_list(path: str, key: str, node: yaml.Node) -> list[str]:
    if not isinstance(node, yaml.SequenceNode):
        raise RuleError(path, node.start_mark.line + 1, f"{key}: expected a list")
    out = []
    for item in node.value:
        out.append(_str(path, key + "[]", item))
    return out


def _nets(path: str, key: str, node: yaml.Node) -> tuple[Any, ...]:
    out = []
    for item in node.value if isinstance(node, yaml.SequenceNode) else [node]:
        s = _str(path, key, item)
        try:
            out.append(ipaddress.ip_network(s, strict=False))
        except ValueError:
            raise RuleError(
                path, item.start_mark.line + 1, f"{key}: {s!r} is not an IP address or network"
            ) from None
    return tuple(out)


def _allowlist(path: str, node: yaml.Node, where: str) -> Allowlist:
    m = _mapping(path, node, where)
    for k, (kn, _) in m.items():
        if k not in ALLOW_KEYS:
            raise RuleError(
                path, kn.start_mark.line + 1,
                f"{where}{k}: unknown key (allowed: {', '.join(sorted(ALLOW_KEYS))})",
            )
    doms = [d.lower().strip(".") for d in (_str_list(path, where + "domains", m["domains"][1])
                                           if "domains" in m else [])]
    if "domain_files" in m:
        node = m["domain_files"][1]
        for name in _str_list(path, where + "domain_files", node):
            doms.extend(_domain_file(path, node.start_mark.line + 1, name))
    doms = tuple(d for d in doms if d)
    procs = frozenset(_str_list(path, where + "processes", m["processes"][1])
                      if "processes" in m else [])
    res = _nets(path, where + "resolvers", m["resolvers"][1]) if "resolvers" in m else ()
    cli = _nets(path, where + "clients", m["clients"][1]) if "clients" in m else ()
    return Allowlist(doms, procs, res, cli)


def _domain_file(path: str, line: int, name: str) -> list[str]:
    """Domains from a text file named by an allowlist (relative to the rule file),
    one per line, ``#`` comments: the fast way to allow a million names."""
    f = Path(name) if Path(name).is_absolute() else Path(path).parent / name
    try:
        st = f.stat()
        if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: never ends
            raise RuleError(path, line, f"domain_files: {f} is not a regular file")
        if st.st_size > MAX_DOMAIN_FILE_BYTES:
            raise RuleError(path, line, f"domain_files: {f} is {st.st_size:,} bytes, over "
                                        f"{MAX_DOMAIN_FILE_BYTES // 2**20} MiB")
        with open(f, encoding="utf-8", errors="replace") as fh:
            out = []
            for ln in fh:
                if "#" in ln:
                    ln = ln.split("#", 1)[0]
                d = ln.strip().lower().strip(".")
                if d:
                    out.append(d)
            return out
    except OSError as e:
        raise RuleError(path, line, f"domain_files: cannot read {f}: {e.strerror}") from None


def _rule(path: str, node: yaml.Node) -> Rule:
    m = _mapping(path, node, "")
    for k, (kn, _) in m.items():
        if k not in RULE_KEYS:
            raise RuleError(path, kn.start_mark.line + 1,
                            f"{k}: unknown key (allowed: {', '.join(sorted(RULE_KEYS - {'kind'}))})")
    for req in ("id", "title", "detector", "severity", "technique"):
        if req not in m:
            raise RuleError(path, node.start_mark.line + 1, f"missing required key {req!r}")
    lines = {"": node.start_mark.line + 1, "detector": m["detector"][1].start_mark.line + 1}
    rid = _str(path, "id", m["id"][1])
    det = _str(path, "detector", m["detector"][1])
    sev = _str(path, "severity", m["severity"][1])
    if sev not in SEVERITIES:
        raise RuleError(path, m["severity"][1].start_mark.line + 1,
                        f"severity: {sev!r} is not one of {', '.join(SEVERITIES)}")
    tn = m["technique"][1]
    tm = _mapping(path, tn, "technique.")
    if "id" not in tm:
        raise RuleError(path, tn.start_mark.line + 1, "technique: needs an id such as T1071.004")
    tid = _str(path, "technique.id", tm["id"][1])
    if not (tid.startswith("T") and tid[1:5].isdigit()):
        raise RuleError(path, tm["id"][1].start_mark.line + 1,
                        f"technique.id: {tid!r} is not a MITRE ATT&CK id like T1071.004")
    tname = _str(path, "technique.name", tm["name"][1]) if "name" in tm else ""
    thresholds: dict[str, Any] = {}
    budget = _Budget(path)
    if "thresholds" in m:
        for k, (kn, vn) in _mapping(path, m["thresholds"][1], "thresholds.").items():
            thresholds[k] = _construct(vn, budget)
            lines[f"thresholds.{k}"] = vn.start_mark.line + 1
            lines[f"thresholds.{k}:key"] = kn.start_mark.line + 1
    allow = _allowlist(path, m["allowlist"][1], "allowlist.") if "allowlist" in m else Allowlist()
    params = _construct(m["params"][1], budget) if "params" in m else {}
    if not isinstance(params, dict):
        raise RuleError(path, m["params"][1].start_mark.line + 1, "params: expected a mapping")
    if params:
        for kn, vn in m["params"][1].value:
            lines[f"params.{kn.value}"] = vn.start_mark.line + 1
    enabled = True
    if "enabled" in m:
        enabled = _construct(m["enabled"][1], budget)
        if not isinstance(enabled, bool):
            raise RuleError(path, m["enabled"][1].start_mark.line + 1, "enabled: expected true or false")
    desc = _str(path, "description", m["description"][1]) if "description" in m else ""
    return Rule(rid, _str(path, "title", m["title"][1]), det, sev, tid, tname, thresholds,
                allow, params, desc, enabled, path, lines)


def read_rules(paths: list[str | os.PathLike[str]] | None = None) -> RuleSet:
    """Read rule files or folders (default: the rules/ folder of this checkout).
    The rules are not yet checked against their detectors: use
    :func:`detector.detect.registry.load_rules`."""
    files: list[Path] = []
    for p in [Path(x) for x in (paths or [default_rules_dir()])]:
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        elif p.exists():
            files.append(p)
        else:
            raise RuleError(str(p), 0, "no such rule file or folder")
    rules: list[Rule] = []
    allow = Allowlist()
    seen: dict[str, str] = {}
    for f in files:
        path = str(f)
        try:
            size = f.stat().st_size
            if size > MAX_FILE_BYTES:
                raise RuleError(path, 0, f"{size:,} bytes is over the {MAX_FILE_BYTES // 2**20} MiB a rule "
                                         "file may hold (long domain lists go in a text file, one per line: domain_files in an allowlist, params.files in a denylist)")
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RuleError(path, 0, f"not a rule file: byte {e.start} is not UTF-8 text (a capture given "
                                     "to --rules?)") from None
        except OSError as e:
            raise RuleError(path, 0, f"cannot read: {e.strerror or e}") from None
        _check_events(path, text)
        try:
            node = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError as e:
            raise _yaml_error(path, e) from None
        except RecursionError:  # bounded by MAX_DEPTH already; a last guard
            raise RuleError(path, 0, "nested too deeply") from None
        if node is None:
            raise RuleError(path, 1, "empty rule file")
        m = _mapping(path, node, "")
        kind = m.get("kind")
        if kind is not None and kind[1].value == "allowlist":
            for k, (kn, _) in m.items():
                if k not in ALLOW_KEYS | {"kind", "description"}:
                    raise RuleError(path, kn.start_mark.line + 1,
                                    f"{k}: unknown key in an allowlist file")
            sub = yaml.MappingNode("tag:yaml.org,2002:map",
                                   [(k, v) for k, v in node.value if k.value in ALLOW_KEYS],
                                   node.start_mark, node.end_mark)
            allow = allow.merged(_allowlist(path, sub, ""))
            continue
        if kind is not None and kind[1].value != "rule":
            raise RuleError(path, kind[1].start_mark.line + 1,
                            f"kind: {kind[1].value!r} is not 'rule' or 'allowlist'")
        rule = _rule(path, node)
        if rule.id in seen:
            raise RuleError(path, m["id"][1].start_mark.line + 1,
                            f"id: {rule.id!r} is already used by {seen[rule.id]}")
        seen[rule.id] = path
        rules.append(rule)
    return RuleSet(rules, allow, [str(f) for f in files])


def default_rules_dir() -> Path:
    env = os.environ.get("DETECTOR_RULES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "rules"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent / "data" / "rules"
