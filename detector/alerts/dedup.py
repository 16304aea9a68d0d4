"""Suppression: one open alert per (rule, entity, campaign), updated as it grows.

The campaign is the finding's ``key`` when a detector sets one (a DGA
generator's shape), else its domain. The first finding for a key is alerted
at once (alerts must be timely); the ones that follow within ``window``
seconds of capture time are counted into the same open alert. That alert is
re-emitted with the *same* ``event.id`` and a higher ``dns_detector.revision``

* when a finding raises its severity, or
* when the detector marks a finding ``revise`` (a DGA campaign that doubled
  its names, a C2 candidate that resolved),

and once more when the window closes (``dns_detector.status: closed``, with
the total ``count``) if findings came after the last revision or the alert is
a keyed campaign. A campaign's window slides: it closes ``window`` seconds
after its last finding, so a long campaign stays one alert. A SIEM that
indexes alerts by id therefore holds one document per campaign, always the
latest. Alert ids are stable hashes of rule, entity, campaign and window start,
so a replay yields the same ids every time and a consumer can drop duplicates
of an at-least-once delivery by (id, revision).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from detector.events import Finding

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def alert_id(rule_id: str, entity: str, domain: str, window_start: float) -> str:
    h = hashlib.sha1(f"{rule_id}|{entity}|{domain}|{window_start:.6f}".encode(), usedforsecurity=False)
    return h.hexdigest()[:24]


@dataclass(slots=True)
class _Window:
    start: float
    last: float  # when the window closes: start + window, or (campaigns) last finding + window
    alert_id: str
    best: Finding
    count: int  # findings in the window
    revision: int  # revisions emitted
    reported: int  # findings covered by the last revision
    reported_rank: int  # the severity of the last revision


class Suppressor:
    def __init__(self, window: float = 600.0, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self.open: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        self.suppressed = 0
        self.updates = 0

    def offer(self, f: Finding) -> list[tuple[Finding, str, dict]]:
        """Return the alerts to emit now: (finding, alert id, extra fields)."""
        key = (f.rule_id, f.entity, f.key or f.domain)
        out = self.tick(f.ts) if self.open else []
        w = self.open.get(key)
        if w is not None:
            w.count += 1
            if f.key:
                w.last = f.ts + self.window
                self.open.move_to_end(key)  # the dict stays in closing order
            grew = SEVERITY_RANK.get(f.severity, 1) > w.reported_rank or f.revise
            if f.score >= w.best.score or grew:
                w.best = f
            if grew:
                out.append(self._revision(w, "open"))
                self.updates += 1
            else:
                self.suppressed += 1
            return out
        aid = alert_id(f.rule_id, f.entity, key[2], f.ts)
        w = self.open[key] = _Window(f.ts, f.ts + self.window, aid, f, 1, 0, 0, 0)
        if len(self.open) > self.max_keys:
            out.extend(self._close(next(iter(self.open))))
        out.append(self._revision(w, "open"))
        return out

    def _revision(self, w: _Window, status: str) -> tuple[Finding, str, dict]:
        f = w.best
        w.revision += 1
        w.reported = w.count
        w.reported_rank = SEVERITY_RANK.get(f.severity, 1)
        f.count = w.count
        extra = {"revision": w.revision, "status": status}
        if f.key:
            extra["campaign"] = f.key
        if w.revision > 1:
            extra.update({"first_seen": w.start, "window_seconds": self.window})
        return f, w.alert_id, extra

    def tick(self, now: float) -> list[tuple[Finding, str, dict]]:
        out: list[tuple[Finding, str, dict]] = []
        while self.open:
            key, w = next(iter(self.open.items()))
            if now < w.last:
                break
            out.extend(self._close(key))
        return out

    def close(self) -> list[tuple[Finding, str, dict]]:
        out: list[tuple[Finding, str, dict]] = []
        while self.open:
            out.extend(self._close(next(iter(self.open))))
        return out

    def _close(self, key: tuple[str, str, str]) -> list[tuple[Finding, str, dict]]:
        w = self.open.pop(key)
        if w.count <= w.reported and not w.best.key:
            return []  # the last revision already says everything
        return [self._revision(w, "closed")]
