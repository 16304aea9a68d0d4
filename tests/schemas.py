"""Field-by-field checkers for our output against the published schemas:
ECS 9.4 (ecs/ecs_flat.yml) and OCSF 1.8 (ocsf/: dictionary, classes, objects,
profiles), both from ../shared/schemas. Each checker walks one document and
returns the failures as "path: what is wrong" lines, counting what it saw in
a :class:`Tally` so a test can report how much was checked.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from detector.paths import shared_data

SCHEMAS = shared_data().parent / "schemas"
#: our namespace for what ECS has no field for (detector/alerts/ecs.py NAMESPACE)
ECS_CUSTOM = "dns_detector"


@dataclass
class Tally:
    documents: int = 0
    fields: int = 0
    custom: int = 0  # fields under our own namespace (ECS) or unmapped (OCSF), not checked further
    failures: list[str] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)

    def line(self, name: str) -> str:
        return (f"{name}: {self.documents} documents, {self.fields} fields checked, "
                f"{self.custom} custom, {len(self.failures)} failures ({dict(self.by_kind)})")


# --- ECS ------------------------------------------------------------------------

#: allowed values ECS states in prose (the flat file has no allowed_values for them)
ECS_PROSE_VALUES = {
    "dns.header_flags": {"AA", "TC", "RD", "RA", "AD", "CD", "DO"},
    "dns.type": {"query", "answer"},
    # the IANA DNS opcode names (ECS: "the kind of query in the message")
    "dns.op_code": {"QUERY", "IQUERY", "STATUS", "NOTIFY", "UPDATE", "DSO"},
}
#: an opcode IANA has not assigned, named as RFC 3597 names unknown types (TYPE<n>)
_UNASSIGNED_OPCODE = re.compile(r"^OPCODE(3|[7-9]|1[0-5])$")
_STR = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}
_INT = {"long", "integer", "short", "byte", "unsigned_long"}
_NUM = {"float", "double", "scaled_float", "half_float"}
_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


@lru_cache(maxsize=1)
def ecs_fields() -> dict[str, dict]:
    import yaml

    return yaml.safe_load((SCHEMAS / "ecs" / "ecs_flat.yml").read_text())


@lru_cache(maxsize=1)
def _ecs_prefixes() -> frozenset[str]:
    out = set()
    for name in ecs_fields():
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return frozenset(out)


@lru_cache(maxsize=1)
def _ecs_required() -> tuple[str, ...]:
    return tuple(n for n, s in ecs_fields().items() if s.get("required"))


def _ecs_value(path: str, spec: dict, v: Any) -> str:
    """'' when one scalar value fits the field's ECS type, else what is wrong."""
    t = spec["type"]
    if t in _STR:
        ok = isinstance(v, str)
    elif t in _INT:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif t in _NUM:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    elif t == "boolean":
        ok = isinstance(v, bool)
    elif t == "ip":
        try:
            ipaddress.ip_address(v)
            ok = True
        except (ValueError, TypeError):
            ok = False
    elif t == "date":
        ok = isinstance(v, str) and bool(_DATE.match(v))
        if ok:
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                ok = False
    elif t in ("object", "nested"):
        ok = isinstance(v, dict)
    elif t == "flattened":
        ok = isinstance(v, dict)
    else:
        ok = True  # geo_point and the like: we emit none
    if not ok:
        return f"{path}: {v!r} is not of ECS type {t}"
    allowed = spec.get("allowed_values")
    names = {a["name"] for a in allowed} if allowed else ECS_PROSE_VALUES.get(path)
    if names is not None and v not in names and not (path == "dns.op_code" and _UNASSIGNED_OPCODE.match(v)):
        return f"{path}: {v!r} is not an allowed value ({', '.join(sorted(names))})"
    return ""


def check_ecs(doc: dict[str, Any], tally: Tally) -> list[str]:
    """Every field of one document against ecs_flat.yml: the name exists (or is under
    our namespace), the type fits, arrays only where ECS normalizes to an array,
    allowed values, event.type expected by one of the event.category values, and
    every field ECS marks required is present."""
    fields = ecs_fields()
    prefixes = _ecs_prefixes()
    fails: list[str] = []
    tally.documents += 1
    seen: set[str] = set()

    def walk(path: str, v: Any) -> None:
        if path == ECS_CUSTOM or path.startswith(ECS_CUSTOM + "."):
            tally.custom += 1
            return
        spec = fields.get(path)
        if spec is None:
            if path in prefixes:
                if not isinstance(v, dict):
                    fails.append(f"{path}: a field set, got {type(v).__name__}")
                    return
                for k, x in v.items():
                    walk(f"{path}.{k}", x)
                return
            fails.append(f"{path}: not an ECS field")
            return
        tally.fields += 1
        seen.add(path)
        values = v if isinstance(v, list) else [v]
        if isinstance(v, list) and "array" not in spec.get("normalize", []):
            fails.append(f"{path}: an array, but ECS does not normalize it to one")
        t = spec["type"]
        for x in values:
            err = _ecs_value(path, spec, x)
            if err:
                fails.append(err)
            elif t in ("object", "nested") and isinstance(x, dict):
                for k, y in x.items():
                    walk(f"{path}.{k}", y)

    for k, v in doc.items():
        walk(k, v)
    for name in _ecs_required():
        if name not in seen:
            fails.append(f"{name}: required by ECS, missing")
    ev = doc.get("event", {})
    cats = ev.get("category", [])
    expected = set()
    for a in fields["event.category"]["allowed_values"]:
        if a["name"] in cats:
            expected |= set(a.get("expected_event_types", []))
    for t in ev.get("type", []):
        if t not in expected:
            fails.append(f"event.type: {t!r} is not expected for event.category {cats}")
    tally.failures += fails
    tally.by_kind[ev.get("kind", "?") + ":" + str(ev.get("action", ev.get("dataset")))] += 1
    return fails


# --- OCSF -----------------------------------------------------------------------

OCSF = SCHEMAS / "ocsf"


def _load(p: Path) -> dict:
    return json.loads(p.read_text())


@lru_cache(maxsize=1)
def _dictionary() -> dict:
    return _load(OCSF / "dictionary.json")


@lru_cache(maxsize=1)
def _classes() -> dict[str, dict]:
    return {(_load(p)["name"]): _load(p) for p in (OCSF / "events").rglob("*.json")}


@lru_cache(maxsize=1)
def _categories() -> dict[str, dict]:
    return _load(OCSF / "categories.json")["attributes"]


def ocsf_version() -> str:
    return _load(OCSF / "version.json")["version"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k == "enum" and isinstance(v, dict):
            out["enum"] = {**base.get("enum", {}), **v}
        else:
            out[k] = v
    return out


def _attributes(defn: dict, chain_of, profiles: frozenset[str]) -> dict[str, dict]:
    """The attributes of a class or object with everything it extends, its included
    profiles (only the ones in use) and the dictionary's definitions under them."""
    chain = []
    d = defn
    while d is not None:
        chain.append(d)
        d = chain_of(d.get("extends")) if d.get("extends") else None
    attrs: dict[str, dict] = {}
    for d in reversed(chain):  # the most general first
        own = d.get("attributes", {})
        for inc in own.get("$include", []):
            prof = _load(OCSF / inc)
            if prof["name"] not in profiles:
                continue
            for k, v in prof.get("attributes", {}).items():
                attrs[k] = _merge(attrs.get(k, {}), {**v, "_profile": prof["name"]})
        for k, v in own.items():
            if k == "$include":
                continue
            if v.get("profile", "x") is not None and "profile" in v and v["profile"] not in profiles:
                continue
            attrs[k] = _merge(attrs.get(k, {}), v)
    dic = _dictionary()["attributes"]
    full = {}
    for k, v in attrs.items():
        base = dic.get(k, {})
        full[k] = _merge(base, {x: y for x, y in v.items() if x != "enum"})
        if "enum" in base or "enum" in v:
            full[k]["enum"] = {**base.get("enum", {}), **v.get("enum", {})}
    return full


def _constraints(defn: dict, chain_of) -> dict:
    d = defn
    while d is not None:
        if d.get("constraints"):
            return d["constraints"]
        d = chain_of(d.get("extends")) if d.get("extends") else None
    return {}


@lru_cache(maxsize=None)
def _object(name: str) -> dict | None:
    p = OCSF / "objects" / f"{name}.json"
    return _load(p) if p.exists() else None


@lru_cache(maxsize=None)
def ocsf_class(class_uid: int, profiles: frozenset[str]) -> tuple[dict, dict[str, dict], dict]:
    """(class definition with its uid and category, attributes, constraints) for a class_uid."""
    cats = _categories()
    for c in _classes().values():
        cat = c.get("category")
        d = c
        while cat is None and d.get("extends"):
            d = _classes()[d["extends"]]
            cat = d.get("category")
        if cat in cats and "uid" in c and cats[cat]["uid"] * 1000 + c["uid"] == class_uid:
            info = {**c, "class_uid": class_uid, "category_uid": cats[cat]["uid"],
                    "category_caption": cats[cat]["caption"]}
            return info, _attributes(c, _classes().get, profiles), _constraints(c, _classes().get)
    raise KeyError(f"no OCSF class {class_uid}")


@lru_cache(maxsize=None)
def ocsf_object(name: str, profiles: frozenset[str]) -> tuple[dict[str, dict], dict]:
    o = _object(name)
    attrs = _attributes(o, _object, profiles)
    if name == "observable":  # its type_id values are the types' and attributes' observable numbers
        dic = _dictionary()
        enum = dict(attrs["type_id"].get("enum", {}))
        for group in (dic["types"]["attributes"], dic["attributes"]):
            for v in group.values():
                if "observable" in v:
                    enum[str(v["observable"])] = {"caption": v["caption"]}
        attrs = {**attrs, "type_id": {**attrs["type_id"], "enum": enum}}
    return attrs, _constraints(o, _object)


def _type_chain(t: str) -> tuple[str, list[dict]]:
    """(base type, [the type and its bases' definitions]) for a dictionary type."""
    types = _dictionary()["types"]["attributes"]
    chain = []
    while t in types:
        chain.append(types[t])
        nxt = types[t].get("type")
        if not nxt:
            break
        t = nxt
    return t, chain


def _ocsf_scalar(path: str, t: str, v: Any) -> str:
    base, chain = _type_chain(t)
    if base == "string_t":
        ok = isinstance(v, str)
    elif base in ("integer_t", "long_t"):
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif base == "float_t":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    elif base == "boolean_t":
        ok = isinstance(v, bool)
    elif base == "json_t":
        ok = True
    else:
        return f"{path}: unknown OCSF type {t}"
    if not ok:
        return f"{path}: {v!r} is not {t}"
    for d in chain:
        if "regex" in d and not re.search(d["regex"], v):
            return f"{path}: {v!r} does not match {t}"
        if "max_len" in d and len(v) > d["max_len"]:
            return f"{path}: {v!r} is longer than {t} allows"
        if "range" in d and not d["range"][0] <= v <= d["range"][1]:
            return f"{path}: {v!r} is out of {t}'s range {d['range']}"
        if "values" in d and v not in d["values"]:
            return f"{path}: {v!r} is not one of {t}'s values"
    if t == "ip_t":
        try:
            ipaddress.ip_address(v)
        except ValueError:
            return f"{path}: {v!r} is not an IP address"
    return ""


def _check_attrs(path: str, doc: dict, attrs: dict[str, dict], constraints: dict,
                 profiles: frozenset[str], tally: Tally, fails: list[str]) -> None:
    for name, a in attrs.items():
        if a.get("requirement") == "required" and name not in doc:
            fails.append(f"{path}{name}: required, missing")
    group = constraints.get("at_least_one")
    if group and not any(g in doc for g in group):
        fails.append(f"{path.rstrip('.') or 'event'}: needs at least one of {group}")
    if "just_one" in constraints and sum(g in doc for g in constraints["just_one"]) != 1:
        fails.append(f"{path.rstrip('.') or 'event'}: needs just one of {constraints['just_one']}")
    for name, v in doc.items():
        p = f"{path}{name}"
        a = attrs.get(name)
        if a is None:
            fails.append(f"{p}: not an attribute here")
            continue
        tally.fields += 1
        if name == "unmapped":
            tally.custom += 1
            if not isinstance(v, dict):
                fails.append(f"{p}: an object, got {type(v).__name__}")
            continue
        if "@deprecated" in a:
            fails.append(f"{p}: deprecated since {a['@deprecated'].get('since')}")
        if a.get("is_array"):
            if not isinstance(v, list):
                fails.append(f"{p}: an array, got {type(v).__name__}")
                continue
            values = v
        else:
            if isinstance(v, list):
                fails.append(f"{p}: not an array")
                continue
            values = [v]
        t = a.get("type", "")
        obj = _object(t) if t and not t.endswith("_t") and t != "object" else None
        for i, x in enumerate(values):
            q = f"{p}[{i}]" if a.get("is_array") else p
            if obj is not None:
                if not isinstance(x, dict):
                    fails.append(f"{q}: an object {t}, got {type(x).__name__}")
                    continue
                oattrs, ocons = ocsf_object(t, profiles)
                _check_attrs(q + ".", x, oattrs, ocons, profiles, tally, fails)
                continue
            if t == "object":
                if not isinstance(x, dict):
                    fails.append(f"{q}: an object, got {type(x).__name__}")
                continue
            err = _ocsf_scalar(q, t, x)
            if err:
                fails.append(err)
                continue
            enum = a.get("enum")
            if enum and str(x) not in enum:
                fails.append(f"{q}: {x!r} is not in the enumeration ({', '.join(enum)})")
        enum = a.get("enum")
        sib = a.get("sibling")
        if enum and sib and sib in doc and all(str(x) in enum for x in values):
            caps = [enum[str(x)]["caption"] for x in values]
            got = doc[sib] if a.get("is_array") else [doc[sib]]
            for x, c, g in zip(values, caps, got):
                if x != 99 and c != g:
                    fails.append(f"{p}: {x} is {c!r} but {path}{sib} says {g!r}")


def check_ocsf(doc: dict[str, Any], tally: Tally) -> list[str]:
    """One event against its OCSF class: the class (base_event, what it extends and
    the profiles metadata.profiles names), required attributes, constraints, every
    attribute known to its class or object, types per dictionary.json, enums and
    their *_id/name siblings, objects recursively; and the class's own numbers
    (category_uid, type_uid = class_uid * 100 + activity_id, names, version)."""
    fails: list[str] = []
    tally.documents += 1
    profiles = frozenset(doc.get("metadata", {}).get("profiles", []))
    try:
        info, attrs, cons = ocsf_class(doc.get("class_uid"), profiles)
    except KeyError as e:
        fails.append(str(e))
        tally.failures += fails
        return fails
    # the class's own classification values (the compiled schema's enums)
    attrs = dict(attrs)
    attrs["class_uid"] = {**attrs["class_uid"], "enum": {str(info["class_uid"]): {"caption": info["caption"]}}}
    attrs["category_uid"] = {**attrs["category_uid"],
                             "enum": {str(info["category_uid"]): {"caption": info["category_caption"]}}}
    act = doc.get("activity_id")
    acts = attrs["activity_id"].get("enum", {})
    if doc.get("type_uid") != info["class_uid"] * 100 + (act if isinstance(act, int) else -1):
        fails.append(f"type_uid: {doc.get('type_uid')} is not class_uid * 100 + activity_id")
    elif str(act) in acts and act != 99 and doc.get("type_name") != f"{info['caption']}: {acts[str(act)]['caption']}":
        fails.append(f"type_name: {doc.get('type_name')!r} does not name class and activity")
    if doc.get("class_name", info["caption"]) != info["caption"]:
        fails.append(f"class_name: {doc['class_name']!r} is not {info['caption']!r}")
    if doc.get("category_name", info["category_caption"]) != info["category_caption"]:
        fails.append(f"category_name: {doc['category_name']!r} is not {info['category_caption']!r}")
    if doc.get("metadata", {}).get("version") != ocsf_version():
        fails.append(f"metadata.version: {doc.get('metadata', {}).get('version')!r} is not {ocsf_version()}")
    for p in profiles:
        if not (OCSF / "profiles" / f"{p}.json").exists():
            fails.append(f"metadata.profiles: no profile {p!r}")
    _check_attrs("", doc, attrs, cons, profiles, tally, fails)
    tally.failures += fails
    tally.by_kind[f"{doc.get('class_uid')}/{act}"] += 1
    return fails
