"""DGA detector: names that look machine-generated, alone or as a storm.

Each query (and NXDOMAIN response) name is scored by the model in
``models/dga.joblib`` (see :mod:`detector.detect.dga.model`). Per entity (the
process when known, else the client address) a bounded sliding window keeps the
distinct suspicious names seen in the last ``window`` seconds. A finding is
raised for

* one name scoring at least ``single_score`` (a very confident single hit;
  0 = the artefact's single-name threshold, above every popular benign name
  scored out-of-fold in training), or
* ``min_distinct`` or more distinct suspicious names in the window: names
  scoring at least the model's default threshold (``score``; 0 = the
  artefact's), or NXDOMAIN answers for names scoring at least ``nx_score``
  (the NXDOMAIN storm of a bot walking its domain list; 0 = the artefact's
  storm threshold, which 1% of popular names reach).

Excluded before scoring: reverse lookups (``*.arpa``), ``.local``,
``.internal``/``.lan``/``.home``/``.localdomain``, single-label names,
service discovery and other underscore labels (``_tcp.``, ``_udp.``,
``_dmarc``), and the rule's and global allowlists.

Events are scored in small batches (``batch`` events, or at the next tick of
capture time), since one vectorised call over many names costs about as much
as a handful of single calls.
"""

from __future__ import annotations

from collections import OrderedDict

from detector.detect.base import Detector, entity_of, register
from detector.detect.dga import features as _features  # noqa: F401 - re-exported module
from detector.detect.dga.features import FEATURE_VERSION, split_label
from detector.detect.dga.model import DgaModel, default_model
from detector.events import DnsEvent, Finding

__all__ = ["Dga", "DgaModel", "FEATURE_VERSION", "excluded"]

NXDOMAIN = 3
_LOCAL_SUFFIXES = (".local", ".internal", ".lan", ".home", ".localdomain", ".home.arpa",
                   ".localhost", ".corp", ".intranet", ".private", ".test", ".invalid", ".example")


def excluded(name: str) -> str | None:
    """Why a name is not scored (None: score it). ``name`` is lower-case, no trailing dot."""
    if not name or "." not in name:
        return "single-label"
    if name.endswith(".arpa"):
        return "reverse lookup"
    if name.endswith(_LOCAL_SUFFIXES):
        return "local name"
    if name.startswith("_") or "._" in name:
        return "service discovery"
    return None


class _Window:
    __slots__ = ("names", "storm_until")

    def __init__(self) -> None:
        self.names: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()  # name -> (ts, score, nx)
        self.storm_until = 0.0


@register
class Dga(Detector):
    name = "dga"
    params = {
        "score": 0.0,  # suspicious at or above this score; 0 = the model's default threshold
        "single_score": 0.0,  # one name this confident is a finding on its own; 0 = the model's
        # single-name threshold (above every popular benign name seen out-of-fold)
        "nx_score": 0.0,  # an NXDOMAIN name at or above this counts as suspicious; 0 = the
        # model's storm threshold (FPR 1e-2 on popular names)
        "min_distinct": 8,  # distinct suspicious names in the window for a storm finding
        "window": 300.0,  # seconds of capture time
        "max_names": 256,  # per-entity window bound
        "max_entities": 20000,  # entities tracked (LRU)
        "batch": 256,  # events scored per model call
    }
    kinds = frozenset({"query", "response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.model = default_model(rule.params.get("model") or None)
        self.threshold = float(self.p["score"]) or self.model.threshold
        self.single = float(self.p["single_score"]) or self.model.single_threshold
        self.nx = float(self.p["nx_score"]) or self.model.storm_threshold
        self.windows: OrderedDict[str, _Window] = OrderedDict()
        self.pending: list[tuple[DnsEvent, str]] = []
        self.skipped: dict[str, int] = {}

    @staticmethod
    def check_rule(rule) -> str | None:
        m = rule.params.get("model")
        if m is not None and not isinstance(m, str):
            return "params.model: expected a path to a model artefact"
        return None

    def process(self, ev: DnsEvent) -> list[Finding]:
        if ev.kind == "response" and ev.rcode != NXDOMAIN:
            return []
        name = ev.qname.lower().rstrip(".")
        why = excluded(name)
        if why is None and self.allowed(ev):
            why = "allowlisted"
        if why is not None:
            self.skipped[why] = self.skipped.get(why, 0) + 1
            return []
        # Score the registered domain (what the model is trained on: www.x.com and x.com
        # are one name to it), so the score cache is keyed by registered domain.
        self.pending.append((ev, ev.registered_domain or name))
        if len(self.pending) >= self.p["batch"]:
            return self._flush()
        return []

    def tick(self, now: float) -> list[Finding]:
        return self._flush() if self.pending else []

    def close(self) -> list[Finding]:
        return self._flush() if self.pending else []

    def _flush(self) -> list[Finding]:
        batch, self.pending = self.pending, []
        scores = self.model.score_many([n for _, n in batch])
        out: list[Finding] = []
        for (ev, name), (score, top) in zip(batch, scores):
            out.extend(self._judge(ev, name, score, top))
        return out

    def _judge(self, ev: DnsEvent, name: str, score: float, top: list) -> list[Finding]:
        nx = ev.kind == "response" and ev.rcode == NXDOMAIN
        suspicious = score >= self.threshold or (nx and score >= self.nx)
        if not suspicious:
            return []
        out = []
        entity = entity_of(ev)
        reg = ev.registered_domain or name
        feats = {"dga_score": round(score, 4), "top_features": dict(top), "label": split_label(name)[0],
                 "nxdomain": nx, "threshold": round(self.threshold, 4)}
        if score >= self.single and not nx:
            out.append(self.finding(ev, score=score, entity=entity, domain=reg, features={**feats, "count": 1},
                                    reason=f"{name} looks machine-generated (DGA score {score:.3f})"))
        w = self._window(entity)
        ts = ev.ts
        horizon = ts - self.p["window"]
        names = w.names
        prev = names.pop(reg, None)
        names[reg] = (ts, max(score, prev[1]) if prev else score, nx or (prev[2] if prev else False))
        while names and (next(iter(names.values()))[0] < horizon or len(names) > self.p["max_names"]):
            names.popitem(last=False)
        n = len(names)
        if n >= self.p["min_distinct"] and ts >= w.storm_until:
            w.storm_until = ts + self.p["window"]
            sample = sorted(names.items(), key=lambda kv: -kv[1][1])[:10]
            nxn = sum(1 for v in names.values() if v[2])
            out.append(self.finding(
                ev, score=max(v[1] for v in names.values()), entity=entity, domain=reg,
                severity="high",
                features={**feats, "count": n, "nxdomain_count": nxn, "window_s": self.p["window"],
                          "sample_names": [k for k, _ in sample]},
                reason=f"{entity} asked for {n} distinct machine-generated-looking domains "
                       f"in {self.p['window']:.0f}s ({nxn} NXDOMAIN)"))
        return out

    def _window(self, entity: str) -> _Window:
        ws = self.windows
        w = ws.get(entity)
        if w is None:
            w = ws[entity] = _Window()
            if len(ws) > self.p["max_entities"]:
                ws.popitem(last=False)
        else:
            ws.move_to_end(entity)
        return w
