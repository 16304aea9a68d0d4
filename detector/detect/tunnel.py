"""Tunneling and exfiltration over DNS: data hidden in names and answers.

Per (entity, registered domain), where the entity is the process when known
and else the client address, the detector keeps windowed counters on event
time: queries, unique subdomains, bytes carried in names, label length and
entropy, the share of names written in an encoding alphabet (hex, base32,
base64), the record-type mix (TXT, NULL, PRIVATE, KEY, ANY, CNAME, MX),
NXDOMAIN ratio and response bytes. Windows slide in two halves: the features
are computed over the previous and the current half-window.

A window is judged when it holds enough unique subdomains and name bytes
(volume gates); then each *shape* indicator that fires adds to the score, and
the finding names them. No tool fingerprint is needed: iodine, dns2tcp,
dnscat2 and a tool never seen before all have to put many unique, long,
high-entropy encoded names under one domain to move data.

Two detectors share this code:

* ``tunnel`` (T1572): interactive tunnels; volume gates on a short window.
* ``exfil`` (T1048.003): bulk data out; large name-byte volume on a longer window.

State is bounded: at most ``max_keys`` (entity, domain) pairs (least recently
seen evicted, counted in ``evicted``) and at most ``max_unique`` distinct
subdomains remembered per half-window (beyond that uniques are estimated).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict

from detector.detect.base import Detector, entity_of, register
from detector.events import DnsEvent, Finding
from detector.pipeline.enrich import known_suffix

#: record types that carry data well; CNAME/MX count half (common in normal use)
DATA_TYPES = {16: "TXT", 10: "NULL", 65399: "PRIVATE", 25: "KEY", 255: "ANY", 99: "SPF"}
HALF_TYPES = {5: "CNAME", 15: "MX", 33: "SRV"}
UNREGISTERED = "(no public suffix)"
_LOCAL = (".local", ".internal", ".lan", ".home", ".localdomain", ".arpa", ".localhost", ".corp")
_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_HEX = frozenset("0123456789abcdef")
_B32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_B64 = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+/=")


def entropy(s: str) -> float:
    """Shannon entropy in bits per character: log2(n) - sum(c log2 c) / n."""
    n = len(s)
    if n == 0:
        return 0.0
    log2 = math.log2
    return max(0.0, log2(n) - sum(c * log2(c) for c in map(s.count, set(s))) / n)


_SHAPES: dict[str, tuple[int, float, str | None]] = {}


def shape(sub: str) -> tuple[int, float, str | None]:
    """(longest label length, entropy, encoding alphabet of the longest label) of a
    subdomain; cached briefly, since the tunnel and exfil rules see the same names."""
    r = _SHAPES.get(sub)
    if r is None:
        longest = max(sub.split("."), key=len)
        r = (len(longest), entropy(sub.replace(".", "")), alphabet(longest))
        if len(_SHAPES) >= 4096:
            _SHAPES.clear()
        _SHAPES[sub] = r
    return r


def alphabet(label: str) -> str | None:
    """The encoding alphabet a long label is written in, if any."""
    if len(label) < 12:
        return None
    s = set(label)
    if s <= _HEX and any(c.isdigit() for c in label) and any(c.isalpha() for c in label):
        return "hex"
    low = label.lower()
    digits = sum(c.isdigit() for c in low)
    if set(low) <= _B32 and digits >= 2:
        return "base32"
    if s <= _B64 and (any(c.isupper() for c in label) and any(c.islower() for c in label)
                      and digits >= 1 or "+" in s or "=" in s):
        return "base64"
    return None


class _Half:
    """Counters for one half-window."""

    __slots__ = ("start", "queries", "uniq", "extra_uniq", "name_bytes", "label_sum", "label_max",
                 "ent_sum", "encoded", "enc_kinds", "data_types", "half_types", "types",
                 "responses", "nx", "resp_bytes", "samples")

    def __init__(self, start: float) -> None:
        self.start = start
        self.queries = 0
        self.uniq: set[str] = set()
        self.extra_uniq = 0
        self.name_bytes = 0
        self.label_sum = 0
        self.label_max = 0
        self.ent_sum = 0.0
        self.encoded = 0
        self.enc_kinds: dict[str, int] = {}
        self.data_types = 0
        self.half_types = 0
        self.types: dict[int, int] = {}
        self.responses = 0
        self.nx = 0
        self.resp_bytes = 0
        self.samples: list[str] = []


class _State:
    __slots__ = ("prev", "cur", "last_alert")

    def __init__(self, start: float) -> None:
        self.prev: _Half | None = None
        self.cur = _Half(start)
        self.last_alert = -1e18


class _Base(Detector):
    """Shared windowing; subclasses set their thresholds and judgement."""

    params = {
        "window": 60.0,           # seconds (two sliding halves)
        "min_unique": 30,         # unique subdomains in the window
        "min_name_bytes": 1500,   # bytes of subdomain text sent in the window
        "min_label_len": 24,      # indicator: mean longest-label length
        "min_entropy": 3.6,       # indicator: mean subdomain entropy, bits/char
        "min_encoded_share": 0.5,  # indicator: share of names in hex/base32/base64
        "min_data_type_share": 0.3,  # indicator: share of TXT/NULL/PRIVATE/KEY/ANY (CNAME/MX: half)
        "min_unique_ratio": 0.8,  # indicator: unique subdomains / queries
        "min_indicators": 2,      # shape indicators needed on top of the volume gates
        "max_keys": 50000,        # (entity, domain) pairs tracked
        "max_unique": 4096,       # distinct subdomains remembered per half-window
        "single_label_len": 40,   # one label this long in base64 with mixed case/padding ...
        "single_entropy": 4.2,    # ... and this entropy is a finding by itself (0 length: off)
    }
    kinds = frozenset({"query", "response"})

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.state: OrderedDict[tuple[str, str], _State] = OrderedDict()
        self.evicted = 0
        self.half = float(self.p["window"]) / 2
        self.max_keys = int(self.p["max_keys"])
        self.max_unique = int(self.p["max_unique"])
        self._allow_cache: dict[str, bool] = {}
        self.single = self.name == "tunnel" and self.p["single_label_len"] > 0

    # --- input ------------------------------------------------------------------
    def process(self, ev: DnsEvent) -> list[Finding]:
        if not ev.questions:
            return []
        dom = ev.registered_domain
        sub = ev.subdomain
        sfx = ev.suffix
        if not dom or (sfx and (len(sfx) > 12 or not sfx.isalpha()) and not known_suffix(sfx)):
            # No public suffix (dnscat2's "dnscat.<hex>" direct mode, made-up TLDs):
            # pool such names per entity, except local and service-discovery names.
            name = ev.questions[0].name.lower()
            if "." not in name or name.endswith(_LOCAL) or name.startswith("_") or "._" in name \
                    or not _HOSTCHARS.issuperset(name):
                return []  # not a host name (URL-like junk from lists, escapes): not pooled
            dom, sub = UNREGISTERED, name
        allowed = self._allow_cache.get(dom)
        if allowed is None:
            if len(self._allow_cache) > 100_000:
                self._allow_cache.clear()
            allowed = self._allow_cache[dom] = (self.rule.allowlist.covers_domain(dom)
                                                 or self.rules.allowlist.covers_domain(dom)
                                                 or dom.endswith(".arpa"))
        if allowed:
            return []
        key = (entity_of(ev), dom)
        st = self.state.get(key)
        ts = ev.ts
        if st is None:
            if not sub or ev.kind != "query":
                return []  # a bare registered domain carries no data; responses join known keys
            st = self.state[key] = _State(ts)
            if len(self.state) > self.max_keys:
                self.state.popitem(last=False)
                self.evicted += 1
        else:
            self.state.move_to_end(key)
        cur = st.cur
        if ts - cur.start >= self.half:
            st.prev = cur if ts - cur.start < 2 * self.half else None
            cur = st.cur = _Half(ts)
        if ev.kind == "query":
            cur.queries += 1
            if sub:
                if sub in cur.uniq:
                    pass
                elif len(cur.uniq) < self.max_unique:
                    cur.uniq.add(sub)
                    self._shape(cur, sub)
                else:
                    cur.extra_uniq += 1
                    self._shape(cur, sub)
            qt = ev.questions[0].qtype
            cur.types[qt] = cur.types.get(qt, 0) + 1
            if qt in DATA_TYPES:
                cur.data_types += 1
            elif qt in HALF_TYPES:
                cur.half_types += 1
            if cur.queries % 16 == 0 or cur.queries == 8:
                return self._judge(ev, key, st)
            if self.single and sub and len(sub) >= self.p["single_label_len"]:
                return self._single(ev, key, st, sub)
        else:
            cur.responses += 1
            cur.resp_bytes += ev.size
            if ev.rcode == 3:
                cur.nx += 1
        return []

    def _shape(self, h: _Half, sub: str) -> None:
        h.name_bytes += len(sub)
        ll, ent, kind = shape(sub)
        h.label_sum += ll
        if ll > h.label_max:
            h.label_max = ll
        h.ent_sum += ent
        if kind is not None:
            h.encoded += 1
            h.enc_kinds[kind] = h.enc_kinds.get(kind, 0) + 1
        if len(h.samples) < 3:
            h.samples.append(sub[:80])

    # --- judgement ----------------------------------------------------------------
    def features(self, st: _State) -> dict:
        hs = [h for h in (st.prev, st.cur) if h is not None]
        q = sum(h.queries for h in hs)
        uniq = sum(len(h.uniq) + h.extra_uniq for h in hs)
        shaped = max(uniq, 1)
        resp = sum(h.responses for h in hs)
        types: Counter = Counter()
        for h in hs:
            types.update(h.types)
        enc: Counter = Counter()
        for h in hs:
            enc.update(h.enc_kinds)
        return {
            "window_seconds": self.half * 2,
            "queries": q,
            "unique_subdomains": uniq,
            "unique_ratio": round(uniq / q, 3) if q else 0.0,
            "name_bytes_out": sum(h.name_bytes for h in hs),
            "mean_label_len": round(sum(h.label_sum for h in hs) / shaped, 1),
            "max_label_len": max(h.label_max for h in hs),
            "mean_entropy": round(sum(h.ent_sum for h in hs) / shaped, 3),
            "encoded_share": round(sum(h.encoded for h in hs) / shaped, 3),
            "encodings": dict(enc),
            "data_type_share": round(sum(h.data_types + 0.5 * h.half_types for h in hs) / q, 3) if q else 0.0,
            "record_types": {_tname(t): n for t, n in types.most_common(5)},
            "responses": resp,
            "nxdomain_ratio": round(sum(h.nx for h in hs) / resp, 3) if resp else 0.0,
            "response_bytes_in": sum(h.resp_bytes for h in hs),
            "sample_subdomains": [s for h in hs for s in h.samples][:3],
        }

    def indicators(self, f: dict) -> list[str]:
        p = self.p
        fired = []
        if f["mean_label_len"] >= p["min_label_len"]:
            fired.append(f"long labels (mean longest label {f['mean_label_len']} >= {p['min_label_len']})")
        if f["mean_entropy"] >= p["min_entropy"]:
            fired.append(f"high entropy ({f['mean_entropy']} >= {p['min_entropy']} bits/char)")
        if f["encoded_share"] >= p["min_encoded_share"]:
            fired.append(f"encoded names ({f['encoded_share']:.0%} {'/'.join(f['encodings'])})")
        if f["data_type_share"] >= p["min_data_type_share"]:
            fired.append(f"data record types ({f['data_type_share']:.0%} of queries: "
                         f"{', '.join(f['record_types'])})")
        if f["unique_ratio"] >= p["min_unique_ratio"]:
            fired.append(f"nearly every name unique ({f['unique_ratio']:.0%})")
        return fired

    def _single(self, ev: DnsEvent, key: tuple[str, str], st: _State, sub: str) -> list[Finding]:
        """One name carrying an encoded payload (base64 with mixed case or padding)."""
        longest = max(sub.split("."), key=len)
        if len(longest) < self.p["single_label_len"] or ev.ts - st.last_alert < self.half:
            return []
        if alphabet(longest) != "base64" and not ("=" in longest or "*" in longest):
            return []
        low = longest.lower()
        if set(low) <= _HEX or set(low) <= _B32:  # 0x20 case randomisation of hex/base32
            return []
        h = entropy(longest)
        if h < self.p["single_entropy"]:
            return []
        st.last_alert = ev.ts
        entity, dom = key
        f = {"label": longest[:80], "label_len": len(longest), "label_entropy": round(h, 3),
             "qtype": ev.qtype, "indicators": ["one name carries an encoded payload"]}
        return [self.finding(ev, score=0.6, entity=entity, domain=dom, features=f,
                             reason=f"{entity} sent a {len(longest)}-character base64-like label "
                                    f"(entropy {h:.2f} bits/char) under {dom}")]

    def _judge(self, ev: DnsEvent, key: tuple[str, str], st: _State) -> list[Finding]:
        if ev.ts - st.last_alert < self.half:
            return []  # already reported this window; suppression counts the rest
        f = self.features(st)
        if f["unique_subdomains"] < self.p["min_unique"] or f["name_bytes_out"] < self.p["min_name_bytes"]:
            return []
        fired = self.indicators(f)
        need = int(self.p["min_indicators"]) + (1 if key[1] == UNREGISTERED else 0)
        if len(fired) < need:
            return []
        st.last_alert = ev.ts
        score = min(1.0, 0.5 + 0.1 * len(fired) + min(0.2, f["name_bytes_out"] / 100_000))
        f["indicators"] = fired
        entity, dom = key
        return [self.finding(
            ev, score=score, entity=entity, domain=dom, features=f,
            reason=(f"{entity} sent {f['name_bytes_out']:,} bytes in {f['unique_subdomains']} unique "
                    f"names under {dom} in {f['window_seconds']:.0f} s: " + "; ".join(fired)))]

    def tick(self, now: float) -> list[Finding]:
        # drop keys idle for two windows (oldest first: the dict is in recency order)
        horizon = now - 4 * self.half
        st = self.state
        while st:
            k, v = next(iter(st.items()))
            if v.cur.start >= horizon:
                break
            del st[k]
        return []


@register
class Tunnel(_Base):
    """Interactive tunnels (iodine, dns2tcp, dnscat2 ...): T1572."""

    name = "tunnel"


@register
class Exfil(_Base):
    """Bulk exfiltration in names: T1048.003. Longer window, volume first."""

    name = "exfil"
    params = {**_Base.params, "window": 600.0, "min_unique": 100, "min_name_bytes": 20000,
              "min_indicators": 1}


def _tname(t: int) -> str:
    from detector.alerts.ecs import qtype_name

    return qtype_name(t)
