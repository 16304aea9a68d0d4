"""DNS names: the public suffix and the registered domain, from tldextract's bundled list.

The Public Suffix List snapshot shipped inside the tldextract package is the
only source: its file is read here directly (:func:`psl_rules`, the way
tldextract parses it), so nothing touches the network, and the package itself,
which loads an HTTP client, is never imported. The ICANN rules are loaded once
into sets and matched here label by label (the PSL algorithm: longest rule,
wildcards, exceptions), which is several times faster than calling tldextract
per name; tests check both agree. Results are cached per name (bounded).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

#: how tldextract reads a rule off a line of the list, and where its private part starts
_RULE = re.compile(r"^(?P<suffix>[.*!]*\w[\S]*)", re.UNICODE | re.MULTILINE)
_PRIVATE = "// ===BEGIN PRIVATE DOMAINS==="


def psl_rules() -> tuple[list[str], list[str]]:
    """(ICANN rules, private rules) of tldextract's bundled PSL snapshot, as written
    there (``*.`` wildcards, ``!`` exceptions)."""
    spec = importlib.util.find_spec("tldextract")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tldextract is not installed: it carries the Public Suffix List")
    text = (Path(next(iter(spec.submodule_search_locations))) / ".tld_set_snapshot").read_text(
        encoding="utf-8")
    public, _, private = text.partition(_PRIVATE)
    return _RULE.findall(public), _RULE.findall(private)


def _ascii_label(label: str) -> str:
    if label.isascii():
        return label
    try:
        return "xn--" + label.encode("punycode").decode("ascii")
    except UnicodeError:
        return label


def _load_psl() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    rules, wild, exc = set(), set(), set()
    for rule in psl_rules()[0]:
        rule = rule.lower()
        forms = {rule, ".".join(_ascii_label(x) for x in rule.split("."))}
        for r in forms:
            if r.startswith("!"):
                exc.add(r[1:])
            elif r.startswith("*."):
                wild.add(r[2:])
            else:
                rules.add(r)
    nodes = set()
    for r in rules | wild | exc:
        labels = r.split(".")
        for i in range(len(labels)):
            nodes.add(".".join(labels[i:]))
    return frozenset(rules), frozenset(wild), frozenset(exc), frozenset(nodes)


_RULES, _WILD, _EXC, _NODES = _load_psl()


def suffix_depth(labels: list[str]) -> int:
    """How many labels at the right of ``labels`` form the public suffix (0: none)."""
    n = len(labels)
    best = 0
    s = ""
    for i in range(n - 1, -1, -1):
        parent = s
        s = labels[i] + "." + s if s else labels[i]
        if s in _EXC:
            return n - i - 1
        if s in _RULES or (parent and parent in _WILD):
            best = n - i
        if s not in _NODES:
            break
    return best


def suffix_is_tld(last_two: str, tld: str) -> bool:
    """True when, for a name ending in ``last_two`` (``label.tld``), the public suffix
    is exactly ``tld``: no longer rule (``co.uk``, ``*.ck``) can apply, so the
    registered domain is ``last_two`` without walking the labels."""
    return tld in _RULES and last_two not in _NODES and tld not in _WILD


def known_suffix(suffix: str) -> bool:
    """True when ``suffix`` is a public suffix of the bundled list (ICANN section)."""
    return suffix in _RULES or suffix.partition(".")[2] in _WILD


def labels_of(name: str) -> list[str]:
    """The labels of a name in presentation form: split at dots, but not at an
    escaped one (``a\\.b.example.com`` is the labels ``a\\.b``, ``example``, ``com``)."""
    if "\\" not in name:
        return name.split(".")
    out, cur, i, n = [], [], 0, len(name)
    while i < n:
        c = name[i]
        if c == "\\" and i + 1 < n:
            cur.append(name[i:i + 2])
            i += 2
            continue
        if c == ".":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _dots(name: str) -> list[int]:
    """Offsets of the dots that separate labels (an escaped dot is inside a label)."""
    if "\\" not in name:
        out, i = [], name.find(".")
        while i >= 0:
            out.append(i)
            i = name.find(".", i + 1)
        return out
    out, i, n = [], 0, len(name)
    while i < n:
        c = name[i]
        if c == "\\":
            i += 2
            continue
        if c == ".":
            out.append(i)
        i += 1
    return out


@lru_cache(maxsize=65536)
def split_domain(name: str) -> tuple[str, str, str]:
    """Return (subdomain, registered_domain, suffix) for a DNS name.

    >>> split_domain("a.b.example.co.uk")
    ('a.b', 'example.co.uk', 'co.uk')

    Names with no public suffix (``printer.local``, ``localhost``) keep the last
    label as the registered domain so per-domain state still groups them.
    """
    n = name.lower().rstrip(".")
    if not n:
        return "", "", ""
    if n.endswith(".in-addr.arpa") or n.endswith(".ip6.arpa"):
        return n, "in-addr.arpa" if n.endswith("in-addr.arpa") else "ip6.arpa", "arpa"
    labels = labels_of(n)
    k = len(labels)
    d = suffix_depth(labels)
    if 0 < d < k:
        return ".".join(labels[:k - d - 1]), ".".join(labels[k - d - 1:]), ".".join(labels[k - d:])
    if k == 1:
        return "", n, ""
    if d >= k:  # the name is itself a public suffix
        return "", n, n
    return ".".join(labels[:-2]), ".".join(labels[-2:]), labels[-1]


def under(name: str, names: frozenset[str] | set[str], min_dots: int = 0) -> str | None:
    """``name`` itself or its nearest parent that is in ``names`` (None: neither).
    A parent counts only with at least ``min_dots`` dots (1: never a bare TLD).

    >>> under("a.b.example.com", {"example.com"})
    'example.com'
    """
    if name in names:
        return name
    if "\\" in name:  # an escaped dot is inside a label: a\\.example.com is not under example.com
        dots = _dots(name)
        for j, i in enumerate(dots):
            tail = name[i + 1:]
            if tail in names and len(dots) - j - 1 >= min_dots:
                return tail
        return None
    i = name.find(".")
    while i >= 0:
        tail = name[i + 1:]
        if tail in names and tail.count(".") >= min_dots:
            return tail
        i = name.find(".", i + 1)
    return None


class DomainIndex:
    """Which of several domain lists cover a name, and which cover its registered
    domain, found in one walk of the name's parents: enrichment looks a distinct
    name up once for every list (the shared and each rule's allowlist, denylists)
    instead of once per list and detector.

    >>> ix = DomainIndex()
    >>> allow = ix.bit(frozenset({"cdn.example.com"}))
    >>> deny = ix.bit(frozenset({"example.com"}))
    >>> name, reg = ix.masks("a.cdn.example.com", "example.com")
    >>> bool(name & allow), bool(reg & allow), bool(reg & deny)
    (True, False, True)

    The verdicts are those of :func:`under` (an escaped dot is inside a label), with
    the list's ``min_dots``.
    """

    def __init__(self) -> None:
        self._bits: dict[str, int] = {}  # listed name -> the bits of the lists holding it
        self._exact: dict[str, int] = {}  # the same for entries that cover the name alone
        self._lists: dict[tuple[int, int], int] = {}  # (id(list), min_dots) -> bit
        self._kept: list[frozenset[str]] = []  # the lists themselves: their ids stay their own

    def bit(self, domains: frozenset[str], min_dots: int = 0) -> int:
        """The bit standing for ``domains`` (lower-case, no trailing dots), given
        once per list object; 0 for an empty list. With ``min_dots`` 1 an entry with
        no dot (a bare TLD) covers that name only, never its children, as with
        :func:`under`. Every list is given before the first :meth:`masks`: a
        verdict is not computed again when a list joins."""
        if not domains:
            return 0
        if min_dots not in (0, 1):
            raise ValueError(f"min_dots: 0 or 1, got {min_dots!r}")
        got = self._lists.get((id(domains), min_dots))
        if got is not None:
            return got
        bit = self._lists[(id(domains), min_dots)] = 1 << len(self._lists)
        self._kept.append(domains)
        bits, exact = self._bits, self._exact
        for d in domains:
            t = exact if min_dots and "." not in d else bits
            t[d] = t.get(d, 0) | bit
        return bit

    def masks(self, name: str, reg: str) -> tuple[int, int]:
        """(the lists covering ``name``: it or a parent is listed, the lists covering
        ``reg``: the name's registered domain or a parent of it is listed).
        ``name`` is lower-case with no trailing dot; ``reg`` is a suffix of it."""
        bits = self._bits
        if not (bits or self._exact) or not name:
            return 0, 0
        get = bits.get
        m = get(name, 0) | self._exact.get(name, 0)
        short = len(reg)
        r = m if len(name) <= short else 0
        if "\\" in name:  # an escaped dot is inside a label: walk the separating dots only
            for i in _dots(name):
                b = get(name[i + 1:])
                if b:
                    m |= b
                    if len(name) - i - 1 <= short:
                        r |= b
            return m, r
        i = name.find(".")
        while i >= 0:
            b = get(name[i + 1:])
            if b:
                m |= b
                if len(name) - i - 1 <= short:
                    r |= b
            i = name.find(".", i + 1)
        return m, r
