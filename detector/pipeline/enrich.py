"""Enrich events with the registered domain, using tldextract's bundled suffix list.

tldextract is built with ``suffix_list_urls=()`` and no cache dir, so it never
touches the network or the disk: the Public Suffix List snapshot shipped inside
the package is the only source. Results are cached per name (bounded).
"""

from __future__ import annotations

from functools import lru_cache

import tldextract

from detector.events import DnsEvent

_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


@lru_cache(maxsize=262144)
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
    r = _EXTRACT(n)
    if r.domain and r.suffix:
        return r.subdomain, f"{r.domain}.{r.suffix}", r.suffix
    labels = n.split(".")
    if len(labels) == 1:
        return "", n, ""
    return ".".join(labels[:-2]), ".".join(labels[-2:]), r.suffix or labels[-1]


def enrich(ev: DnsEvent) -> DnsEvent:
    if ev.questions:
        ev.subdomain, ev.registered_domain, ev.suffix = split_domain(ev.questions[0].name)
    return ev
