"""Tunneling and exfiltration over DNS: data hidden in names and answers.

Per (entity, registered domain), where the entity is the process when known
and else the client address, the detector keeps windowed counters on event
time: queries, unique subdomains, bytes carried in names, *encoded payload*
bytes (labels written in hex, base32/36, base64 or raw binary, see
:func:`label_kind`), label length and entropy, the share of names carrying a
payload, the record-type mix (TXT, NULL, PRIVATE, KEY, ANY, CNAME, MX),
NXDOMAIN ratio and response bytes. Windows slide in two halves: the features
are computed over the previous and the current half-window.

A window is judged as soon as it holds enough unique subdomains, name bytes
and payload bytes (volume gates, checked on every query, cheaply); then each
*shape* indicator that fires adds to the score, and the finding names them.
No tool fingerprint is needed: iodine, dns2tcp, dnscat2, dnstt and a tool
never seen before all have to put unique, encoded names under one domain to
move data. Ordinary names carry no payload bytes: words, hyphenated host
names, reversed addresses, service labels (``_domainkey``, ``_acme-challenge``).

Two detectors share this code:

* ``tunnel`` (T1572): interactive tunnels; volume gates on a short window.
* ``exfil`` (T1048.003): data out. Two gates: a small one (100 bytes of
  encoded payload in new names within a minute: a small file, a key, a
  password) and the bulk one (a large name-byte volume on a longer window).

State is bounded: at most ``max_keys`` (entity, domain) pairs (least recently
seen evicted, counted in ``evicted``). Unique subdomains are remembered as a
hash of the name (not the name: a flood of new names keeps no strings alive),
in the current half-window only (a half that ends keeps its count), at most
``max_unique`` per half-window and, beyond the first ``UNIQ_FLOOR`` of each
half-window, at most ``max_unique_total`` over all keys. Past either limit a
new-looking name is counted as unique without being remembered (a repeat then
counts again: uniques are overestimated, which can only make a tunnel easier
to see) and the finding says so (``unique_estimated``). The floor keeps the few
names an ordinary key asks exact while a flood holds the budget.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict

from detector.detect.base import NAME_CACHE, Detector, entity_of, register
from detector.events import DnsEvent, Finding
from detector.dns.names import known_suffix

#: record types that carry data well; CNAME/MX count half (common in normal use)
DATA_TYPES = {16: "TXT", 10: "NULL", 65399: "PRIVATE", 25: "KEY", 255: "ANY", 99: "SPF"}
HALF_TYPES = {5: "CNAME", 15: "MX", 33: "SRV"}
UNREGISTERED = "(no public suffix)"
#: distinct subdomains under one (entity, domain) before it gets a window (a name
#: with an encoded payload opens one at once)
OPEN_AT = 4
#: unique subdomains every half-window remembers outside the ``max_unique_total``
#: budget (an ordinary key's few names stay exact while a flood holds the budget)
UNIQ_FLOOR = 16
_FORGOTTEN: frozenset = frozenset()  # the uniq of a half that ended (its count is kept)
_LOCAL = (".local", ".internal", ".lan", ".home", ".localdomain", ".arpa", ".localhost", ".corp")
_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_HEX = frozenset("0123456789abcdef")
_B32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_DIGITS = frozenset("0123456789")
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_B64 = _LABEL | frozenset("+/=*")  # '*' : some tools swap it for '/'
_ESCAPE = re.compile(r"\\(?:\d{3}|.)")  # the decoder's \DDD and \X escapes: one byte each


def entropy(s: str) -> float:
    """Shannon entropy in bits per character: log2(n) - sum(c log2 c) / n."""
    n = len(s)
    if n == 0:
        return 0.0
    log2 = math.log2
    return max(0.0, log2(n) - sum(c * log2(c) for c in map(s.count, set(s))) / n)


def label_kind(label: str) -> str | None:
    """The encoding a label looks written in: "hex", "base32", "base36" (base32
    or base64 folded to lower case), "base64", "binary" (raw bytes, iodine's
    base128), or None for an ordinary label.

    Measured on the shared data, labels of 12+ characters: 0.25% of the labels of
    the Tranco, OpenDNS and Alexa lists (random-looking registered names), and 97%
    of the labels of the Bubnov tunnel names and the shared tunnel captures (98% of
    their bytes) are called encoded.
    """
    n = len(label)
    if n < 10:
        return None  # sequence numbers, short host names: too short to matter
    chars = set(label)
    if not chars <= _LABEL:
        # characters no host name has: base64's + / =, raw bytes (escaped by the decoder)
        return "base64" if chars <= _B64 else "binary"
    if n < 12:
        return None
    low = label.lower()
    digits = sum(c in _DIGITS for c in low)
    if set(low) <= _HEX:
        return "hex" if 0 < digits < n else None  # all digits: numbers, not hex data
    if not digits:
        return None  # letters only: words (random base32 of 20+ characters has a digit)
    mixed = label != low and label != label.upper()
    if not mixed and ("-" in chars or "_" in chars):
        # a hyphenated host name (ip-10-0-0-1, r3---sn-ab5l6n), unless a long piece of
        # it is encoded: base64url folded to lower case has '-' and '_' anywhere
        piece = max(low.replace("_", "-").split("-"), key=len)
        return label_kind(piece) if len(piece) >= 16 else None
    letters = n - digits - low.count("-") - low.count("_")
    if low.count("e") + low.count("i") + low.count("o") + low.count("u") > 0.3 * letters:
        return None  # pronounceable (random letters: 15% of these vowels, words 30%+)
    flips = sum((a in _DIGITS) != (b in _DIGITS) for a, b in zip(low, low[1:]))
    if flips < 3:
        return None  # a word and a number: windows10, latestnews24x7 has 3, random 20 chars ~6
    if entropy(low) < 0.7 * math.log2(min(n, 32)):
        return None  # repetitive (padding, counters)
    return "base64" if mixed else "base32" if set(low) <= _B32 else "base36"


def _service_label(label: str) -> bool:
    """An RFC 8552 underscored label (_domainkey, _dmarc, _acme-challenge, _tcp, _25):
    the name is a lookup of a published record, and the label left of it (a DKIM
    selector, an ACME account) is an identifier, not data."""
    return label[:1] == "_" and len(label) <= 24 and label == label.lower()


_SHAPES: dict[str, tuple[int, float, str | None, int]] = {}


def shape(sub: str) -> tuple[int, float, str | None, int]:
    """(longest label length, entropy, encoding of the main payload label, payload
    bytes) of a subdomain; cached briefly, since the tunnel and exfil rules see the
    same names. Payload bytes are the wire bytes of the labels that look encoded."""
    r = _SHAPES.get(sub)
    if r is None:
        labels = sub.split(".")
        kind, payload, best = None, 0, 0
        if not any(map(_service_label, labels)):
            for lab in labels:
                k = label_kind(lab)
                if k is not None:
                    b = len(lab) if "\\" not in lab else len(_ESCAPE.sub("x", lab))
                    payload += b
                    if b > best:
                        kind, best = k, b
        r = (max(map(len, labels)), entropy(sub.replace(".", "")), kind, payload)
        if len(_SHAPES) >= 4096:
            _SHAPES.clear()
        _SHAPES[sub] = r
    return r


class _Half:
    """Counters for one half-window."""

    __slots__ = ("start", "queries", "uniq", "nuniq", "extra_uniq", "name_bytes", "payload", "label_sum",
                 "label_max", "ent_sum", "encoded", "enc_kinds", "data_types", "half_types", "types",
                 "responses", "nx", "resp_bytes", "samples")

    def __init__(self, start: float) -> None:
        self.start = start
        self.queries = 0
        self.uniq: set[int] | frozenset = set()  # hash() of each unique subdomain (current half only)
        self.nuniq = 0  # unique subdomains remembered (len(uniq) while current)
        self.extra_uniq = 0  # new-looking names past the limits: counted, not remembered
        self.name_bytes = 0
        self.payload = 0
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


class _Small:
    """Exfil's small gate: encoded payload bytes in new names, over two halves of
    ``small_window`` (a few counters; the names' uniqueness comes from the long window)."""

    __slots__ = ("start", "payload", "names", "queries", "prev_payload", "prev_names", "prev_queries")

    def __init__(self, start: float) -> None:
        self.start = start
        self.payload = self.names = self.queries = 0
        self.prev_payload = self.prev_names = self.prev_queries = 0


class _State:
    __slots__ = ("prev", "cur", "last_alert", "next_judge", "small")

    def __init__(self, start: float) -> None:
        self.prev: _Half | None = None
        self.cur = _Half(start)
        self.last_alert = -1e18
        self.next_judge = 0  # judge again from this query count of the current half
        self.small: _Small | None = None


class _Base(Detector):
    """Shared windowing; subclasses set their thresholds and judgement."""

    params = {
        "window": 60.0,           # seconds (two sliding halves)
        "min_unique": 10,         # volume gate: unique subdomains in the window
        "min_name_bytes": 500,    # volume gate: bytes of subdomain text sent in the window
        "min_payload_bytes": 300,  # volume gate: bytes of encoded labels in those names
        "min_label_len": 24,      # indicator: mean longest-label length
        "min_entropy": 3.6,       # indicator: mean subdomain entropy, bits/char
        "min_encoded_share": 0.5,  # indicator: share of names carrying an encoded payload
        "min_data_type_share": 0.3,  # indicator: share of TXT/NULL/PRIVATE/KEY/ANY (CNAME/MX: half)
        "min_unique_ratio": 0.8,  # indicator: unique subdomains / queries
        "min_indicators": 2,      # shape indicators needed on top of the volume gates
        # an interactive tunnel needs its data back: a window whose answers are nearly all
        # NXDOMAIN (this share, of at least 10) is a random-subdomain flood, not a tunnel
        # (the flood rule reports it; exfiltration sets 0: one-way data needs no answer)
        "max_nx_share": 0.9,
        "rejudge_after": 8,       # queries to wait after a window failed on shape alone
        "max_keys": 50000,        # (entity, domain) pairs tracked
        "max_unique": 4096,       # distinct subdomains remembered per half-window
        # distinct subdomains remembered over all keys, beyond the first UNIQ_FLOOR (16) of
        # each half-window (a hash each, ~80 bytes: 65536 ~ 5 MiB); past it uniques are estimated
        "max_unique_total": 65536,
        "single_label_len": 40,   # one label this long in base64 with mixed case/padding ...
        "single_entropy": 4.2,    # ... and this entropy is a finding by itself (0 length: off)
    }
    kinds = frozenset({"query", "response"})

    @staticmethod
    def check_rule(rule) -> str | None:
        if rule.thresholds.get("window", 1) <= 0:
            return "thresholds.window: must be more than 0 seconds"
        return _check_limits(rule.thresholds)

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        p = self.p
        self.half = float(p["window"]) / 2
        self.max_keys = int(p["max_keys"])
        self.max_unique = int(p["max_unique"])
        self.max_unique_total = int(p["max_unique_total"])
        self.uniq_held = 0  # remembered uniques beyond UNIQ_FLOOR, all keys (<= max_unique_total)
        self.min_unique = int(p["min_unique"])
        self.min_name_bytes = int(p["min_name_bytes"])
        self.min_payload = int(p["min_payload_bytes"])
        self.rejudge = max(1, int(p["rejudge_after"]))
        self.state: OrderedDict[tuple[str, str], _State] = OrderedDict()
        self.evicted = 0
        self._names: dict[str, tuple[str, str] | None] = {}  # name as sent -> (domain, sub) | None
        self.early: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self.single = self.name == "tunnel" and p["single_label_len"] > 0
        self.small_half = 0.0  # exfil's small gate (half of small_window; 0: off)

    # --- input ------------------------------------------------------------------
    def _target(self, ev: DnsEvent, q: str, dom: str, sub: str, sfx: str) -> tuple[str, str] | None:
        """(domain, subdomain) a name is counted under, or None: not a host name or
        allowlisted. Once per distinct name (cached by the caller)."""
        if not dom or (sfx and (len(sfx) > 12 or not sfx.isalpha()) and not known_suffix(sfx)):
            # No public suffix (dnscat2's "dnscat.<hex>" direct mode, made-up TLDs):
            # pool such names per entity, except local and service-discovery names.
            name = q.lower()
            if "." not in name or name.endswith(_LOCAL) or name.startswith("_") or "._" in name \
                    or not _HOSTCHARS.issuperset(name):
                return None  # not a host name (URL-like junk from lists, escapes): not pooled
            dom, sub = UNREGISTERED, name
        if dom.endswith(".arpa") or self.covers_registered(ev, dom):
            return None
        return dom, sub

    def process(self, ev: DnsEvent) -> list[Finding]:
        return self.process_batch((ev,))

    def process_batch(self, evs) -> list[Finding]:
        out: list[Finding] = []
        names = self._names
        state = self.state
        half = self.half
        single = self.single
        small_half = self.small_half
        for ev in evs:
            if not ev.questions:
                continue
            q = ev.questions[0].name
            t = names.get(q, 0)
            if t == 0:
                t = self._target(ev, q, ev.registered_domain, ev.subdomain, ev.suffix)
                if len(names) >= NAME_CACHE:
                    names.clear()
                names[q] = t
            if t is None:
                continue
            dom, sub = t
            key = (ev.entity or entity_of(ev), dom)
            st = state.get(key)
            ts = ev.ts
            if st is None:
                if not sub or ev.kind != "query":
                    continue  # a bare registered domain carries no data; responses join known keys
                early = self._early(key, sub, q)
                if early is None:
                    continue
                st = state[key] = _State(ts)
                if len(state) > self.max_keys:
                    old = state.popitem(last=False)[1]
                    if old is not st:  # (max_keys 0: this event still counts, then goes)
                        self._forget(old.cur)
                    self.evicted += 1
                for raw in early:  # the names seen before the window opened
                    cur = st.cur
                    cur.queries += 1
                    self._remember(cur, hash(raw.lower()))
                    self._shape(cur, raw)
            else:
                state.move_to_end(key)
            cur = st.cur
            if ts - cur.start >= half:
                self._forget(cur)
                st.prev = cur if ts - cur.start < 2 * half else None
                cur = st.cur = _Half(ts)
                st.next_judge = 0
            if ev.kind != "query":
                cur.responses += 1
                cur.resp_bytes += ev.size
                if ev.rcode == 3:
                    cur.nx += 1
                continue
            cur.queries += 1
            payload = -1  # payload bytes of a name new in this half (-1: no new name)
            if sub:
                sh = hash(sub)  # str caches its hash; one process only (never stored or sent)
                if sh not in cur.uniq:
                    self._remember(cur, sh)
                    # shape from the name as sent: the subdomain is folded to lower case,
                    # and case tells base64 from base32
                    raw = q[:len(sub)]
                    if raw != sub and raw.lower() != sub:
                        raw = sub
                    payload = self._shape(cur, raw)
            qt = ev.questions[0].qtype
            cur.types[qt] = cur.types.get(qt, 0) + 1
            if qt in DATA_TYPES:
                cur.data_types += 1
            elif qt in HALF_TYPES:
                cur.half_types += 1
            if small_half and (payload > 0 or st.small is not None):
                found = self._small(ev, key, st, payload)
                if found:
                    out.extend(found)
                    continue
            if ts - st.last_alert >= half and cur.queries >= st.next_judge and self._gates(st):
                found = self._judge(ev, key, st)
                if found:
                    out.extend(found)
                    continue
            if single and payload > 0 and len(raw) >= self.p["single_label_len"]:
                out.extend(self._single(ev, key, st, raw))  # a new name: repeats were judged before
        return out

    def _remember(self, h: _Half, sub_hash: int) -> None:
        """Count a subdomain not in ``h.uniq`` as unique: remembered while the limits
        allow (``max_unique`` per half, ``max_unique_total`` past the floor), else
        counted in ``extra_uniq`` (estimated)."""
        n = h.nuniq
        if n < self.max_unique and (n < UNIQ_FLOOR or self.uniq_held < self.max_unique_total):
            h.uniq.add(sub_hash)
            h.nuniq = n + 1
            if n >= UNIQ_FLOOR:
                self.uniq_held += 1
        else:
            h.extra_uniq += 1

    def _forget(self, h: _Half) -> None:
        """A half-window stops being current (it ended, or its key went): its
        remembered uniques go back to the budget; it keeps their count."""
        if h.uniq is not _FORGOTTEN:
            if h.nuniq > UNIQ_FLOOR:
                self.uniq_held -= h.nuniq - UNIQ_FLOOR
            h.uniq = _FORGOTTEN

    def _early(self, key: tuple[str, str], sub: str, q: str) -> list[str] | None:
        """Before a key gets a window: most (entity, domain) pairs only ever ask a
        few fixed names (www, mail, api) and need none. A window opens at the first
        name that carries an encoded payload or at the ``OPEN_AT``-th distinct
        subdomain; the names seen until then (as sent) are returned so the window
        counts them. None: no window yet."""
        seen = self.early.get(key)
        if seen is not None and sub in seen:
            return None
        raw = q[:len(sub)]
        if raw.lower() != sub:
            raw = sub
        if shape(raw)[3] <= 0 and (seen is None or len(seen) < OPEN_AT - 1):
            if seen is None:
                seen = self.early[key] = {}
                if len(self.early) > self.max_keys:
                    self.early.popitem(last=False)
            seen[sub] = raw
            return None
        self.early.pop(key, None)
        return list(seen.values()) if seen else []

    def _shape(self, h: _Half, sub: str) -> int:
        """Add a new name's shape to the half; return its payload bytes."""
        h.name_bytes += len(sub)
        ll, ent, kind, payload = shape(sub)
        h.label_sum += ll
        if ll > h.label_max:
            h.label_max = ll
        h.ent_sum += ent
        if kind is not None:
            h.encoded += 1
            h.enc_kinds[kind] = h.enc_kinds.get(kind, 0) + 1
        if len(h.samples) < 3 and (payload or not h.payload):
            h.samples.append(sub[:80])  # prefer names that carry a payload
        h.payload += payload
        return payload

    def _gates(self, st: _State) -> bool:
        """The volume gates, from running counters (cheap: checked on every query)."""
        cur, prev = st.cur, st.prev
        uniq, nb, pay = cur.nuniq + cur.extra_uniq, cur.name_bytes, cur.payload
        if prev is not None:
            uniq += prev.nuniq + prev.extra_uniq
            nb += prev.name_bytes
            pay += prev.payload
        return uniq >= self.min_unique and nb >= self.min_name_bytes and pay >= self.min_payload

    def _small(self, ev: DnsEvent, key: tuple[str, str], st: _State, payload: int) -> list[Finding]:
        return []

    # --- judgement ----------------------------------------------------------------
    def features(self, st: _State) -> dict:
        hs = [h for h in (st.prev, st.cur) if h is not None]
        q = sum(h.queries for h in hs)
        uniq = sum(h.nuniq + h.extra_uniq for h in hs)
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
            # past max_unique / max_unique_total names are counted, not remembered: repeats count again
            "unique_estimated": any(h.extra_uniq for h in hs),
            "unique_ratio": round(uniq / q, 3) if q else 0.0,
            "name_bytes_out": sum(h.name_bytes for h in hs),
            "payload_bytes_out": sum(h.payload for h in hs),
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
        if label_kind(longest) != "base64":
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
        f = self.features(st)
        fired = self.indicators(f)
        need = int(self.p["min_indicators"]) + (1 if key[1] == UNREGISTERED else 0)
        nx_cap = self.p["max_nx_share"]
        if len(fired) < need or (nx_cap and f["responses"] >= 10 and f["nxdomain_ratio"] >= nx_cap):
            st.next_judge = st.cur.queries + self.rejudge  # not on every query of a busy name
            return []
        st.last_alert = ev.ts
        score = min(1.0, 0.5 + 0.1 * len(fired) + min(0.2, f["name_bytes_out"] / 100_000))
        f["indicators"] = fired
        entity, dom = key
        approx = "~" if f["unique_estimated"] else ""
        return [self.finding(
            ev, score=score, entity=entity, domain=dom, features=f,
            reason=(f"{entity} sent {f['name_bytes_out']:,} bytes in {approx}{f['unique_subdomains']} unique "
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
            self._forget(v.cur)
        return []


@register
class Tunnel(_Base):
    """Interactive tunnels (iodine, dns2tcp, dnscat2, dnstt ...): T1572."""

    name = "tunnel"


@register
class Exfil(_Base):
    """Exfiltration in names: T1048.003. A small gate (encoded payload bytes in new
    names within ``small_window``) and the bulk gate (name bytes on the long window)."""

    name = "exfil"
    # the single-label finding is the tunnel rule's (exfiltration judges payload by its small gate)
    params = {**{k: v for k, v in _Base.params.items() if not k.startswith("single_")},
              "window": 600.0, "min_unique": 100, "min_name_bytes": 20000, "min_payload_bytes": 0,
              "min_indicators": 1, "max_nx_share": 0.0,
              "small_window": 60.0,             # seconds (two sliding halves)
              "small_min_payload_bytes": 100}   # encoded bytes in new names (0: gate off)

    @staticmethod
    def check_rule(rule) -> str | None:
        t = {**Exfil.params, **rule.thresholds}
        if t["window"] <= 0:
            return "thresholds.window: must be more than 0 seconds"
        if not 0 < t["small_window"] <= t["window"]:
            return (f"thresholds.small_window: must be more than 0 and at most window "
                    f"({t['window']} s), got {t['small_window']}")
        return _check_limits(rule.thresholds)

    def __init__(self, rule, rules) -> None:
        super().__init__(rule, rules)
        self.small_min = int(self.p["small_min_payload_bytes"])
        if self.small_min > 0:
            self.small_half = float(self.p["small_window"]) / 2

    def _small(self, ev: DnsEvent, key: tuple[str, str], st: _State, payload: int) -> list[Finding]:
        """A new name's payload joins the small window; a finding when it holds enough.
        A name counts once per long half-window, so repeats of a name add nothing."""
        sm = st.small
        ts = ev.ts
        if sm is None:  # the first name with a payload: counters from now on
            sm = st.small = _Small(ts)
        elif ts - sm.start >= self.small_half:
            if ts - sm.start < 2 * self.small_half:
                sm.prev_payload, sm.prev_names, sm.prev_queries = sm.payload, sm.names, sm.queries
            else:
                sm.prev_payload = sm.prev_names = sm.prev_queries = 0
            sm.start, sm.payload, sm.names, sm.queries = ts, 0, 0, 0
        sm.queries += 1
        if payload > 0:
            sm.payload += payload
            sm.names += 1
        total = sm.payload + sm.prev_payload
        if payload <= 0 or total < self.small_min or ts - st.last_alert < self.half:
            return []
        st.last_alert = ev.ts
        names = sm.names + sm.prev_names
        window = self.small_half * 2
        enc: Counter = Counter()
        samples: list[str] = []
        estimated = False
        for h in (st.prev, st.cur):
            if h is not None:
                enc.update(h.enc_kinds)
                samples += h.samples
                estimated = estimated or h.extra_uniq > 0
        f = {"window_seconds": window, "payload_bytes_out": total, "payload_names": names,
             "unique_estimated": estimated,  # new names past the unique limits: repeats count again
             "queries": sm.queries + sm.prev_queries, "encodings": dict(enc),
             "qtype": ev.qtype, "sample_subdomains": samples[:3],
             "indicators": [f"encoded payload ({total} bytes >= {self.small_min} in {window:.0f} s)"]}
        entity, dom = key
        score = min(1.0, 0.6 + 0.2 * min(1.0, total / (10 * self.small_min)))
        return [self.finding(
            ev, score=score, entity=entity, domain=dom, features=f,
            reason=(f"{entity} sent {total:,} bytes of encoded data ({'/'.join(enc) or 'encoded'}) "
                    f"in {names} unique name{'s' if names != 1 else ''} under {dom} "
                    f"within {window:.0f} s"))]


def _check_limits(t: dict) -> str | None:
    """Table sizes are whole numbers (the registry has checked they are numbers >= 0)."""
    v = t.get("max_unique_total", 0)
    if v != int(v):
        return f"thresholds.max_unique_total: expected a whole number of subdomains, got {v!r}"
    return None


def _tname(t: int) -> str:
    from detector.alerts.ecs import qtype_name

    return qtype_name(t)
