"""DGA detector: a host walking a generated domain list, with host-level evidence.

A bot with a domain-generation algorithm asks for many names its generator
made, almost all answered NXDOMAIN, until one resolves (the live C2). One
odd-looking name proves little (popular CDN, tracker and telemetry names look
random too), so the evidence is gathered per host, the way production DNS
security catches DGAs. Per entity (the process when known, else the client
address), over a sliding ``window`` of capture time, the detector keeps:

* the distinct registered domains answered NXDOMAIN that are not prevalent,
  with their model score (``models/dga.joblib``, :mod:`.model`);
* how alike they are: the share in one generator *shape* (alphabet class and a
  length band; the TLDs are reported), since one generator makes one shape;
* the entity's NXDOMAIN ratio;
* prevalence (:mod:`.prevalence`): a name many distinct clients resolve
  NOERROR, or that has resolved on many days, is never evidence and never
  alerted on alone.

A campaign is raised for an entity when either

* ``min_distinct`` of its non-prevalent NXDOMAIN names score at least
  ``nx_score`` (0 = the model's storm threshold, reached by 1% of popular
  names), or
* ``min_nx_names`` non-prevalent NXDOMAIN names, ``min_alike`` of them in one
  shape, make up at least ``min_nx_ratio`` of its answers (wordlist DGAs,
  whose names score like ordinary ones one by one), or
* ``min_nx_volume`` such names of any shapes do (a generator with a wide
  length range).

Names that many clients got NXDOMAIN for (blocked or broken names) never
count toward the last two.

One alert per entity and campaign (shape): it carries sample names, counts,
the NXDOMAIN ratio, the generator's shape and the names of that shape, length
range and TLDs that did resolve (C2 candidates), and it is re-reported, with the same alert id, as the
campaign doubles (alerts/dedup.py). A single name is an alert by itself only
at ``single_score`` (0 = the model's single-name threshold, above every popular
benign name scored out-of-fold) and never when prevalent.

Excluded before scoring: reverse lookups (``*.arpa``), ``.local``,
``.internal``/``.lan``/``.home``/``.localdomain``, single-label names,
service discovery and other underscore labels (``_tcp.``, ``_udp.``,
``_dmarc``), and the rule's and global allowlists.

Names are scored in small batches (``batch`` events, or at the next tick of
capture time), since one vectorised call over many names costs about as much
as a handful of single calls.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict

from detector.detect.base import NAME_CACHE, Detector, entity_of, register
from detector.detect.dga import features as _features  # noqa: F401 - re-exported module
from detector.detect.dga.features import FEATURE_VERSION, label_and_tld, scored_domain, split_label
from detector.detect.dga.model import DgaModel, default_model
from detector.detect.dga.prevalence import Prevalence, shared
from detector.errors import DetectorError
from detector.events import DnsEvent, Finding

log = logging.getLogger(__name__)

__all__ = ["Dga", "DgaModel", "FEATURE_VERSION", "Prevalence", "excluded", "shape_of"]

NXDOMAIN = 3
NOERROR = 0
MAX_RESOLVED = 64  # C2 candidates an entity remembers (the latest)
_LOCAL_SUFFIXES = (".local", ".internal", ".lan", ".home", ".localdomain", ".home.arpa",
                   ".localhost", ".corp", ".intranet", ".private", ".test", ".invalid", ".example")
_HEX = frozenset("0123456789abcdef")
#: why a name is not scored, as the name cache holds it: one tuple per reason
_WHY = {why: (why,) for why in ("single-label", "reverse lookup", "local name", "service discovery",
                                "allowlisted")}


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


def shape_of(label: str) -> str:
    """The alphabet class of a generated label: what one generator keeps fixed."""
    has_digit = any(map(str.isdigit, label))
    if "-" in label:
        return "hyphenated"
    if not has_digit:
        return "letters"
    if _HEX.issuperset(label):
        return "hex"
    return "letters+digits"


class _Entity:
    """One client's or process's window: NXDOMAIN names, answer counts, resolved names."""

    __slots__ = ("nx_names", "resolved", "halves", "active", "suspicious")

    def __init__(self, ts: float) -> None:
        # registered domain -> (ts, score, label length, shape, tld)
        self.nx_names: OrderedDict[str, tuple[float, float, int, str, str]] = OrderedDict()
        # non-prevalent names that resolved: C2 candidates, with the name's
        # (score, label length, shape, tld), one tuple per name shared by every entity;
        # None until a campaign needs it (a name that resolved with no campaign open)
        self.resolved: OrderedDict[str, tuple[float, int, str, str]] = OrderedDict()
        # [start, answers, nxdomain answers] for the previous and current half-window
        self.halves = [[ts, 0, 0], [ts, 0, 0]]
        # the open campaign: (key, distinct names, capture time) at its last report;
        # re-reported when it doubles or a C2 candidate resolves, afresh once a window
        # has passed without a report. One per entity, so a generator whose dominant
        # shape drifts as names accumulate stays one campaign.
        # (key, names, ts, TLDs, lowest score, min length, max length)
        self.active: tuple | None = None
        self.suspicious = 0  # nx_names scored at or above the storm threshold


@register
class Dga(Detector):
    name = "dga"
    params = {
        "single_score": 0.0,  # one name this confident is a finding on its own; 0 = the model's
        # single-name threshold (above every popular benign name seen out-of-fold)
        "nx_score": 0.0,  # an NXDOMAIN name at or above this counts as suspicious; 0 = the
        # model's storm threshold (FPR 1e-2 on popular names)
        "min_distinct": 8,  # suspicious non-prevalent NXDOMAIN names for a campaign
        "min_nx_names": 10,  # or: this many non-prevalent NXDOMAIN names ...
        "min_alike": 0.6,  # ... this share of them in one generator shape ...
        "min_nx_ratio": 0.15,  # ... making up this share of the entity's answers
        "min_nx_volume": 20,  # or this many, of any shapes (and that NXDOMAIN share)
        "length_band": 3,  # a shape's labels lie within this many characters of its median
        "window": 300.0,  # seconds of capture time
        "prevalent_clients": 5,  # a name resolved NOERROR by this many clients is prevalent
        "prevalent_days": 3,  # ... or on this many distinct days (by two clients at least)
        "shared_nx_clients": 5,  # a name this many clients got NXDOMAIN for is blocked or broken,
        # not one host's generator: it never counts toward a shape match
        "max_prevalence": 200000,  # registered domains in the prevalence table (LRU)
        "max_names": 256,  # per-entity window bound
        "max_entities": 20000,  # entities tracked (LRU)
        "batch": 256,  # events scored per model call
    }
    kinds = frozenset({"query", "response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.model = default_model(rule.params.get("model") or None)
        self.single = float(self.p["single_score"]) or self.model.single_threshold
        self.nx = float(self.p["nx_score"]) or self.model.storm_threshold
        self.prevalence_path = rule.params.get("prevalence_file") or None
        self.prevalence = (shared(self.prevalence_path, int(self.p["max_prevalence"]))
                           if self.prevalence_path else Prevalence(int(self.p["max_prevalence"])))
        self.windows: OrderedDict[str, _Entity] = OrderedDict()
        self.pending: list[tuple[DnsEvent, str]] = []  # (event, key) to judge, in event order
        self.queued = 0  # events in the batch: the pending ones and those already skipped
        self.skipped: dict[str, int] = {}
        self.half = float(self.p["window"]) / 2
        self.save_errors = 0
        # name as sent -> the key it is scored by, or (why it is not scored,)
        self._names: dict[str, str | tuple[str]] = {}
        self.scores: dict[str, float] = {}  # scored name -> model score (bounded)
        self._info: dict[str, tuple[float, int, str, str]] = {}  # key -> (score, label length, shape, TLD)
        self._min_clients = self.p["prevalent_clients"]
        self._min_days = self.p["prevalent_days"]
        self._batch = self.p["batch"]

    @staticmethod
    def check_rule(rule) -> str | None:
        m = rule.params.get("model")
        if m is not None and not isinstance(m, str):
            return "params.model: expected a path to a model artefact"
        pf = rule.params.get("prevalence_file")
        if pf is not None and not isinstance(pf, str):
            return "params.prevalence_file: expected a path"
        if not 0 <= float(rule.thresholds.get("min_alike", 0.6)) <= 1:
            return "thresholds.min_alike: a share between 0 and 1"
        if not 0 <= float(rule.thresholds.get("min_nx_ratio", 0.3)) <= 1:
            return "thresholds.min_nx_ratio: a share between 0 and 1"
        return None

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        # The common case is a popular name asked again: it goes on after a dict
        # lookup or two (its cached score for a query, its prevalence for an
        # answer), never reaching the batch. Only what the batch's judgement could
        # turn into state or a finding is queued, in event order.
        out: list[Finding] = []
        names = self._names
        scores = self.scores
        skipped = self.skipped
        single = self.single
        prevalence = self.prevalence
        observe, observe_nx = prevalence.observe, prevalence.observe_nx
        min_clients, min_days = self._min_clients, self._min_days
        batch = self._batch
        window = self.p["window"]
        pending = self.pending
        # the rule's own domain allowlist is in the name's verdict; its processes and
        # clients (and an event not enriched) need the full check
        own = self._own_allow
        who = own is not None and bool(own.processes or own.clients)
        count_answer = self._count_answer
        for ev in evs:
            ent = None
            if ev.kind == "response":
                ent = count_answer(ev)
                rcode = ev.rcode
                if rcode != NXDOMAIN and not (rcode == NOERROR and ev.ancount and ev.registered_domain):
                    continue
            # per distinct name, once: why it is not scored, else the name the model scores
            # (the registered domain: www.x.com and x.com are one name to it; under a
            # dynamic-DNS parent, the label below it); the score cache and the
            # prevalence table are keyed by it
            q = ev.questions[0].name if ev.questions else ""
            key = names.get(q)
            if key is None:
                key = self._name_verdict(q, ev)
            if key.__class__ is not str or ev.allowed or ((who or not ev.entity) and self.allowed(ev)):
                why = "allowlisted" if key.__class__ is str else key[0]
                skipped[why] = skipped.get(why, 0) + 1
                continue
            if ent is None:  # a query: a finding alone only at the single-name threshold
                s = scores.get(key)
                if s is not None and s < single:
                    continue
            elif ev.rcode == NXDOMAIN:
                observe_nx(key, ev.dst_ip, ev.ts)  # a response goes to its client
            else:
                prevalent = observe(key, ev.dst_ip, ev.ts, min_clients, min_days)
                if len(ent.nx_names) < 3:
                    continue  # a resolved name matters only as a C2 candidate of a walk
                if prevalent:
                    # a name's entry only grows while it is in the table, and this one was
                    # just used (last in line for eviction): the batch would skip it too.
                    # It still counts toward the batch: when a batch is judged decides
                    # what the prevalence table says about the rest of it.
                    skipped["prevalent"] = skipped.get("prevalent", 0) + 1
                    self.queued += 1
                    if self.queued >= batch:
                        out.extend(self._flush())
                        pending = self.pending
                    continue
                a = ent.active
                if a is None or ev.ts - a[2] > window:
                    # no open campaign to be this name's C2: it is only remembered as a
                    # candidate, its score and shape worked out if a campaign opens
                    # (it still counts toward the batch, like every answer judged)
                    resolved = ent.resolved
                    if key in resolved:
                        resolved.move_to_end(key)
                    else:
                        resolved[key] = None
                        if len(resolved) > MAX_RESOLVED:
                            resolved.popitem(last=False)
                    self.queued += 1
                    if self.queued >= batch:
                        out.extend(self._flush())
                        pending = self.pending
                    continue
            pending.append((ev, key))
            self.queued += 1
            if self.queued >= batch:
                out.extend(self._flush())
                pending = self.pending
        return out

    def _count_answer(self, ev: DnsEvent) -> _Entity:
        """The answering entity's window, with this answer counted in its half-window."""
        ts = ev.ts
        ent = self._entity(ev.entity or entity_of(ev), ts)
        h = ent.halves[1]
        if ts - h[0] >= self.half:
            h = self._half(ent, ts)
        h[1] += 1
        if ev.rcode == NXDOMAIN:
            h[2] += 1
        return ent

    def _name_verdict(self, q: str, ev: DnsEvent) -> str | tuple[str]:
        """The key ``q`` is scored by, or (why it is not scored,)."""
        name = q.lower().rstrip(".")
        if name == q:
            name = q  # one string for both
        why = excluded(name)
        if why is None and self.own_covers_name(ev, name):
            why = "allowlisted"
        if why is None:
            r = scored_domain(name, ev.registered_domain, ev.subdomain)
        else:
            r = _WHY.setdefault(why, (why,))
        if len(self._names) >= NAME_CACHE:
            self._names.clear()
        self._names[q] = r
        return r

    def tick(self, now: float) -> list[Finding]:
        return self._flush() if self.queued else []

    def close(self) -> list[Finding]:
        out = self._flush() if self.queued else []
        if self.prevalence_path:
            try:
                self.prevalence.save(self.prevalence_path)
            except DetectorError as e:  # the alerts still go out; say once what was not kept
                log.error("%s", e)
                self.save_errors += 1
        return out

    def _flush(self) -> list[Finding]:
        batch, self.pending = self.pending, []
        self.queued = 0
        known = self._score_keys(batch)
        out: list[Finding] = []
        single = self.single
        skipped = 0
        # the table does not change while a batch is judged: one pass asks it for all
        keys = [key for _, key in batch]
        for (ev, key), prevalent in zip(batch, self.prevalence.prevalent_each(
                keys, self._min_clients, self._min_days)):
            if prevalent:
                skipped += 1
            elif ev.kind == "query":
                if known[key] >= single:
                    out.extend(self._judge_query(ev, key, known[key]))
            else:
                f = self._judge_answer(ev, key, known[key])
                if f:
                    out.extend(f)
        if skipped:
            self.skipped["prevalent"] = self.skipped.get("prevalent", 0) + skipped
        return out

    def _score_keys(self, batch: list) -> dict[str, float]:
        """The score cache, holding every key of ``batch``: each distinct key not
        cached yet is scored once, in one model call (scores do not depend on the
        batch a name is scored in)."""
        known = self.scores
        if len(known) >= 2 * NAME_CACHE:
            known.clear()
        todo = [k for k in dict.fromkeys([k for _, k in batch]) if k not in known]
        if todo:
            known.update(zip(todo, self.model.score_names(todo)))
        return known

    # --- judgement ----------------------------------------------------------------
    def _judge_query(self, ev: DnsEvent, reg: str, score: float) -> list[Finding]:
        """A query for a non-prevalent name scoring at the single-name threshold."""
        entity = ev.entity or entity_of(ev)
        top = self.model.score(reg)[1]
        feats = {"dga_score": round(score, 4), "top_features": dict(top), "label": split_label(reg)[0],
                 "nxdomain": False, "threshold": round(self.single, 4), "count": 1,
                 "prevalence": {"clients": self.prevalence.clients(reg), "days": self.prevalence.days(reg)}}
        return [self.finding(ev, score=score, entity=entity, domain=reg, features=feats,
                             reason=f"{reg} looks machine-generated (DGA score {score:.3f}, "
                                    f"above every popular name) and is not prevalent")]

    def _score_of(self, key: str) -> float:
        """A key's model score, from the cache or scored now (a C2 candidate that
        resolved before its query's batch was judged)."""
        s = self.scores.get(key)
        if s is None:
            s = self.scores[key] = self.model.score_names([key])[0]
        return s

    def _name_info(self, reg: str, score: float) -> tuple[float, int, str, str]:
        """Per distinct name, once: its score, the label's length and shape, the TLD."""
        info = self._info.get(reg)
        if info is None:
            label, tld = label_and_tld(reg)
            if len(self._info) >= NAME_CACHE:
                self._info.clear()
            info = self._info[reg] = (score, len(label), shape_of(label), sys.intern(tld))
        return info

    def _judge_answer(self, ev: DnsEvent, reg: str, score: float) -> list[Finding]:
        """An answer for a non-prevalent name: an NXDOMAIN joins the entity's walk,
        a resolved name may be its C2."""
        entity = ev.entity or entity_of(ev)
        info = self._name_info(reg, score)
        ent = self._entity(entity, ev.ts)
        if ev.rcode != NXDOMAIN:
            # a non-prevalent name that resolved while the entity walks NXDOMAIN names:
            # a C2 candidate, whatever its score (a wordlist family's C2 scores like an
            # ordinary name); whether it is one is judged against the campaign's shape
            if len(ent.nx_names) < 3:
                return []
            resolved = ent.resolved
            new = reg not in resolved
            resolved.pop(reg, None)
            resolved[reg] = info
            if new and len(resolved) > MAX_RESOLVED:
                resolved.popitem(last=False)
            a = ent.active
            if new and a is not None and ev.ts - a[2] <= self.p["window"] and self._c2_like(info, a):
                return self._campaign(ev, entity, ent, c2=reg)  # the open campaign's C2 resolved
            return []
        horizon = ev.ts - self.p["window"]
        names = ent.nx_names
        nx = self.nx
        rec = (ev.ts, *info)
        old = names.pop(reg, None)
        if old is not None and old[1] >= nx:
            ent.suspicious -= 1
        names[reg] = rec
        if score >= nx:
            ent.suspicious += 1
        max_names = self.p["max_names"]
        while names and (next(iter(names.values()))[0] < horizon or len(names) > max_names):
            if names.popitem(last=False)[1][1] >= nx:
                ent.suspicious -= 1
        return self._campaign(ev, entity, ent)

    def _campaign(self, ev: DnsEvent, entity: str, ent: _Entity, c2: str = "") -> list[Finding]:
        names = ent.nx_names
        n = len(names)
        p = self.p
        if n < min(p["min_distinct"], p["min_nx_names"]):
            return []
        a = ent.active
        if a is not None and ev.ts - a[2] > p["window"]:
            a = None
        if not (a is None or n >= 2 * a[1] or c2):
            return []  # reported; the alert is updated when the campaign doubles or its C2 resolves
        answers = sum(h[1] for h in ent.halves)
        nx = sum(h[2] for h in ent.halves)
        ratio = nx / answers if answers else 0.0
        by_score = ent.suspicious >= p["min_distinct"]
        if not by_score and (n < p["min_nx_names"] or ratio < p["min_nx_ratio"]):
            return []  # cheap counters first: no path to a campaign
        suspicious = [k for k, v in names.items() if v[1] >= self.nx]
        own = {} if by_score else {
            k: v for k, v in names.items() if self.prevalence.nx_clients(k) < p["shared_nx_clients"]}
        if by_score:  # the generator is what the suspicious names have in common
            shape, alike = self._dominant_shape({k: names[k] for k in suspicious})
            matched = "score"
        elif len(own) >= self.p["min_nx_names"] and ratio >= self.p["min_nx_ratio"]:
            shape, alike = self._dominant_shape(own)
            matched = "generator shape"
            if len(alike) / n < self.p["min_alike"]:
                # many unrelated-looking names: a campaign by volume alone (wordlist
                # generators with wide length ranges), past a higher bar
                if len(own) < self.p["min_nx_volume"]:
                    return []
                alike, matched = list(own), "volume"
        else:
            return []
        fresh = a is None
        key = ("volume" if matched == "volume" else shape["alphabet"]) if fresh else a[0]
        members = [names[k] for k in alike]
        lens = sorted(v[2] for v in members)
        tlds: dict[str, int] = {}
        for v in members:
            tlds[v[4]] = tlds.get(v[4], 0) + 1
        # the campaign's lowest score: over all its NXDOMAIN names of its shape (not just
        # the suspicious ones), so its C2 is judged like its siblings
        low = min((v[1] for v in names.values() if key == "volume" or v[3] == key), default=0.0)
        ent.active = (key, n, ev.ts, frozenset(tlds), low, lens[0], lens[-1])
        cands = ent.resolved
        for k, v in list(cands.items()):
            if v is None:  # remembered without a campaign: its score and shape now
                cands[k] = self._name_info(k, self._score_of(k))
        resolved = [k for k, v in cands.items() if k == c2 or self._c2_like(v, ent.active)]
        sample = sorted(alike, key=lambda k: -names[k][1])[:10]
        best = max(v[1] for v in members)
        feats = {
            "count": n,
            "suspicious_count": len(suspicious),
            "nxdomain_count": n,
            "nxdomain_ratio": round(ratio, 3),
            "answers": answers,
            "window_s": self.p["window"],
            "campaign": {
                "alphabet": key,
                "length_min": lens[0], "length_max": lens[-1], "median_length": shape["median_length"],
                "alike_share": round(len(alike) / n, 3),
                "tlds": dict(sorted(tlds.items(), key=lambda kv: -kv[1])[:5]),
            },
            "matched_by": matched,
            "sample_names": sample,
            "resolved_names": resolved[-5:],
            "dga_score": round(best, 4),
            # why the most generated-looking sample scores as it does (from the score cache)
            "top_features": dict(self.model.score(sample[0])[1]) if sample else {},
            "threshold": round(self.nx, 4),
        }
        reason = (f"{entity} asked for {n} distinct non-prevalent domains answered NXDOMAIN in "
                  f"{self.p['window']:.0f}s ({ratio:.0%} of its answers; {len(alike)} of one shape: "
                  f"{key}, {lens[0]}-{lens[-1]} characters; {len(suspicious)} scored as machine-generated)")
        if resolved:
            reason += f"; resolved (C2 candidates): {', '.join(resolved[-3:])}"
        f = self.finding(ev, score=max(best, 0.5), entity=entity, domain=c2 or (sample[0] if sample else ""),
                         severity="high", features=feats, reason=reason)
        f.key = f"dga-campaign:{key}"
        f.revise = not fresh
        return [f]

    @staticmethod
    def _c2_like(rec: tuple, active: tuple | None) -> bool:
        """A resolved name (score, length, shape, tld) looks like the open
        campaign's own: its alphabet, a length within the campaign's range, a TLD the
        campaign used, and a score no lower than the campaign's lowest (ordinary
        browsing seldom passes all four)."""
        if active is None:
            return False
        score, length, shape, tld = rec
        key, _, _, tlds, low, lo, hi = active
        return (shape == key or key == "volume") and lo <= length <= hi and tld in tlds and score >= low

    def _dominant_shape(self, names) -> tuple[dict, list[str]]:
        """The most common alphabet class, its median length, and the names of that
        class within ``length_band`` of the median."""
        by: dict[str, list[str]] = {}
        for k, v in names.items():
            by.setdefault(v[3], []).append(k)
        cls, members = max(by.items(), key=lambda kv: len(kv[1]))
        lens = sorted(names[k][2] for k in members)
        med = lens[len(lens) // 2]
        band = self.p["length_band"]
        alike = [k for k in members if abs(names[k][2] - med) <= band]
        return {"alphabet": cls, "median_length": med}, alike

    # --- state ----------------------------------------------------------------------
    def _half(self, ent: _Entity, ts: float) -> list:
        cur = ent.halves[1]
        if ts - cur[0] >= self.half:
            ent.halves = [cur if ts - cur[0] < 2 * self.half else [ts, 0, 0], [ts, 0, 0]]
            cur = ent.halves[1]
        return cur

    def _entity(self, entity: str, ts: float) -> _Entity:
        ws = self.windows
        w = ws.get(entity)
        if w is None:
            w = ws[entity] = _Entity(ts)
            if len(ws) > self.p["max_entities"]:
                ws.popitem(last=False)
        else:
            ws.move_to_end(entity)
        return w
