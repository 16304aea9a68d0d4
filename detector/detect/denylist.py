"""Denylist: alert on any query for a listed domain (or any name under it).

The simplest detector, and the template for new ones: a rule lists domains in
``params.domains`` (and/or a file of them in ``params.files``, one per line,
``#`` comments), and every query whose name is one of them, or under one of
them, raises a finding with score 1.
"""

from __future__ import annotations

from pathlib import Path

from detector.detect.base import NAME_CACHE, Detector, entity_of, register
from detector.dns.names import under
from detector.events import DnsEvent, Finding


@register
class Denylist(Detector):
    name = "denylist"
    params = {}
    kinds = frozenset({"query"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.domains = frozenset(_names(rule))
        self._hits: dict[str, str | None] = {}  # name as sent -> listed domain it is under
        self._bit = 0  # the denylist's bit in the pipeline's DomainIndex (bind)

    def bind(self, index) -> None:
        super().bind(index)
        self._bit = index.bit(self.domains)

    @staticmethod
    def check_rule(rule) -> str | None:
        try:
            names = _names(rule)
        except (OSError, UnicodeDecodeError) as e:
            return f"params.files: cannot read: {e}"
        except TypeError as e:
            return f"params: {e}"
        if not names:
            return "params.domains: a denylist rule needs at least one domain (or params.files)"
        return None

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        hits = self._hits
        domains = self.domains
        bit = self._bit if self._index is not None else 0
        for ev in evs:
            if bit and ev.listed >= 0 and not ev.listed & bit:
                continue  # enrichment's walk: the name is under no listed domain
            q = ev.questions[0].name if ev.questions else ""
            hit = hits.get(q, 0)
            if hit == 0:  # once per distinct name: the listed domain it is under, or None
                # enrichment's walk says whether the name is under the list at all; which
                # listed domain it is under is looked up only for a hit
                hit = under(q.lower().rstrip("."), domains) if q and (
                    not bit or ev.listed < 0 or ev.listed & bit) else None
                if len(hits) >= NAME_CACHE:
                    hits.clear()
                hits[q] = hit
            if hit is None or self.allowed(ev):
                continue
            name = q.lower().rstrip(".")
            out.append(self.finding(
                ev, score=1.0, entity=entity_of(ev), domain=ev.registered_domain or hit,
                features={"listed": hit, "qtype": ev.qtype},
                reason=f"query for {name}, which is under the denylisted {hit}"))
        return out


def _names(rule) -> list[str]:
    p = rule.params
    doms = p.get("domains", []) or []
    if not isinstance(doms, list):
        raise TypeError("domains: expected a list of names")
    out = [str(d).lower().strip(".") for d in doms if str(d).strip(".")]
    files = p.get("files", []) or []
    if not isinstance(files, list):
        raise TypeError("files: expected a list of paths")
    base = Path(rule.source).parent if rule.source else Path(".")
    for f in files:
        path = Path(f) if Path(f).is_absolute() else base / f
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip().lower().strip(".")
            if line:
                out.append(line)
    return out
