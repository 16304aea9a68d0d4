"""Suppression: one alert per (rule, entity, domain) per window.

The first finding for a key is alerted at once (alerts must be timely); the
ones that follow within ``window`` seconds of capture time are counted. When
the window closes with more than one finding, a summary alert carries the
count (``dns_detector.count``) and points to the first alert
(``dns_detector.summary_of``). Alert ids are stable hashes of rule, entity,
domain and window start, so a replay yields the same ids every time and a
consumer can drop duplicates of an at-least-once delivery by id.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from detector.events import Finding


def alert_id(rule_id: str, entity: str, domain: str, window_start: float) -> str:
    h = hashlib.sha1(f"{rule_id}|{entity}|{domain}|{window_start:.6f}".encode(), usedforsecurity=False)
    return h.hexdigest()[:24]


@dataclass(slots=True)
class _Window:
    start: float
    alert_id: str
    first: Finding
    best: Finding
    count: int


class Suppressor:
    def __init__(self, window: float = 600.0, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self.open: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        self.suppressed = 0

    def offer(self, f: Finding) -> list[tuple[Finding, str, dict]]:
        """Return the alerts to emit now: (finding, alert id, extra fields)."""
        key = (f.rule_id, f.entity, f.domain)
        out = self.tick(f.ts) if self.open else []
        w = self.open.get(key)
        if w is not None:
            w.count += 1
            if f.score > w.best.score:
                w.best = f
            self.suppressed += 1
            return out
        aid = alert_id(f.rule_id, f.entity, f.domain, f.ts)
        self.open[key] = _Window(f.ts, aid, f, f, 1)
        if len(self.open) > self.max_keys:
            out.extend(self._close(next(iter(self.open))))
        f.count = 1
        out.append((f, aid, {}))
        return out

    def tick(self, now: float) -> list[tuple[Finding, str, dict]]:
        out: list[tuple[Finding, str, dict]] = []
        while self.open:
            key, w = next(iter(self.open.items()))
            if now - w.start < self.window:
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
        if w.count <= 1:
            return []
        f = w.best
        f.count = w.count
        extra = {"summary_of": w.alert_id, "window_start": w.start, "window_seconds": self.window}
        return [(f, w.alert_id + "-s", extra)]
