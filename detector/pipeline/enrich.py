"""Enrichment: what every detector and sink reads, computed once per event.

:class:`Enricher` sets on each :class:`~detector.events.DnsEvent`:

* ``subdomain``, ``registered_domain``, ``suffix``: the split of the first
  question's name by the public suffix list (:mod:`detector.dns.names`);
* ``entity``: who asked, the process ``comm[pid]`` when live capture knows
  it, else the client address;
* ``allowed``: the global allowlist covers the event (its name, process or
  client). A rule's own allowlist is the rule's business (``Detector.allowed``);
* ``listed``, ``reg_listed``: which domain lists of the pipeline's
  :class:`~detector.dns.names.DomainIndex` (the shared allowlist, each rule's
  allowlist, denylists) cover the name, and its registered domain.

Per-name work (the split and the list verdicts, all lists in one walk) is cached
per distinct name in a bounded table, so a busy name costs one dict lookup per event.
"""

from __future__ import annotations

from detector.detect.base import entity_of
from detector.dns.constants import FLAG_QR
from detector.dns.names import DomainIndex, split_domain
from detector.events import DnsEvent
from detector.ruleset import Allowlist

MAX_NAMES = 1 << 16  # distinct names cached (the table is cleared when full)


class Enricher:
    def __init__(self, allowlist: Allowlist | None = None, max_names: int = MAX_NAMES,
                 index: DomainIndex | None = None) -> None:
        self.allow = allowlist or Allowlist()
        self.max_names = max_names
        self.index = index if index is not None else DomainIndex()
        self._allow_bit = self.index.bit(self.allow._set) if self.allow.domains else 0
        # first question's name as sent -> (subdomain, registered domain, suffix,
        # allowlisted, lists covering the name, lists covering the registered domain)
        self._names: dict[str, tuple[str, str, str, bool, int, int]] = {}
        self._clients: dict[str, bool] = {}
        self._check_processes = bool(self.allow.processes)
        self._check_clients = bool(self.allow.clients)

    def __call__(self, ev: DnsEvent) -> DnsEvent:
        allowed = False
        if ev.questions:
            q = ev.questions[0].name
            r = self._names.get(q)
            if r is None:
                sub, reg, sfx = split_domain(q)
                m, rm = self.index.masks(q.lower().rstrip("."), reg)
                r = (sub, reg, sfx, bool(m & self._allow_bit), m, rm)
                names = self._names
                if len(names) >= self.max_names:
                    names.clear()
                names[q] = r
            ev.subdomain, ev.registered_domain, ev.suffix, allowed, ev.listed, ev.reg_listed = r
        else:
            ev.listed = ev.reg_listed = 0
        ev.entity = entity_of(ev)
        if not allowed and self._check_processes:
            allowed = self.allow.covers_process(ev)
        if not allowed and self._check_clients:
            client = ev.dst_ip if ev.flags & FLAG_QR else ev.src_ip
            a = self._clients.get(client)
            if a is None:
                if len(self._clients) >= self.max_names:
                    self._clients.clear()
                a = self._clients[client] = self.allow.covers_client(client)
            allowed = a
        ev.allowed = allowed
        return ev
