"""DGA features of a domain name, computed in batch with numpy.

The label scored is the registered label (``example`` in ``a.example.co.uk``);
when the registered domain is a shared/dynamic-DNS parent (PSL private suffix
such as ``duckdns.org``), the label right below it is scored instead, since
that is the part a DGA would generate there.

Labels are packed into a fixed-width uint8 matrix (one row per name, padded),
and every feature is an array expression over that matrix, so batch extraction
costs a few microseconds per name. Two learned tables travel with the model
artefact (:class:`Tables`): character 2- and 3-gram log-probabilities of benign
labels, and a word list derived from benign labels for dictionary-word
segmentation (wordlist DGAs like suppobox, matsnu, banjori).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

#: bump when a feature is added, removed or computed differently
FEATURE_VERSION = 6

# The C twin of extract_parts (``_cdga.c``), when it was built: same features,
# 10-50x faster on small batches. DETECTOR_PURE_PYTHON=1 forces numpy.
_cdga = None
if not os.environ.get("DETECTOR_PURE_PYTHON"):
    try:
        from detector.detect.dga import _cdga
    except ImportError:
        _cdga = None

MAXLEN = 63  # a DNS label is at most 63 bytes
MINWORD, MAXWORD = 3, 12

# alphabet: 0 = padding/edge, 1..26 a-z, 27..36 0-9, 37 '-', 38 other
A = 39
_MAP = np.full(256, 38, dtype=np.uint8)
for _i, _c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789-"):
    _MAP[ord(_c)] = _i + 1
_MAP[ord("_")] = 37
_VOWEL = np.zeros(A, bool)
_VOWEL[[ord(c) - 96 for c in "aeiouy"]] = True
_LETTER = np.zeros(A, bool)
_LETTER[1:27] = True
_CONS = _LETTER & ~_VOWEL
_DIGIT = np.zeros(A, bool)
_DIGIT[27:37] = True
_HEX = _DIGIT.copy()
_HEX[1:7] = True

FEATURES = (
    "length", "entropy", "uniq_ratio", "vowel_ratio", "cons_ratio", "digit_ratio",
    "hyphens", "max_cons_run", "max_vowel_run", "max_digit_run", "digit_letter_switches",
    "is_hex", "bigram_ll", "trigram_ll", "trigram_ll_min", "trigram_unseen",
    "word_cover", "word_count", "word_full", "longest_word",
    "sub_labels", "sub_length", "trigram_llr", "bigram_llr", "ngram_lr",
)
NF = len(FEATURES)

_LOG_UNIFORM = float(np.log(1.0 / 37))



@dataclass
class Tables:
    """What the features learn from benign names (stored in the model artefact)."""

    bigram: np.ndarray = field(default_factory=lambda: np.zeros(A * A, np.float32))
    trigram: np.ndarray = field(default_factory=lambda: np.zeros(A * A * A, np.float32))
    trigram_seen: np.ndarray = field(default_factory=lambda: np.zeros(A * A * A, bool))
    words: list[str] = field(default_factory=list)
    word_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    # the hashed character n-gram model (:func:`ngram_logits`): weights and bias
    ngram_w: np.ndarray | None = None
    ngram_bias: float = 0.0
    _bitmaps: tuple | None = field(default=None, repr=False)
    _c: tuple | None = field(default=None, repr=False)

    def bitmaps(self):
        if self._bitmaps is None and len(self.word_hashes):
            self._bitmaps = word_bitmaps(self.word_hashes)
        return self._bitmaps

    def c_args(self) -> tuple:
        """The tables as contiguous buffers for the C extractor (cached)."""
        if self._c is None:
            bm = self.bitmaps()
            ng = self.ngram_w
            self._c = (np.ascontiguousarray(self.bigram, np.float32),
                       np.ascontiguousarray(self.trigram, np.float32),
                       np.ascontiguousarray(self.trigram_seen, np.bool_),
                       bm[0] if bm else None, bm[1] if bm else None,
                       None if ng is None else np.ascontiguousarray(ng, np.float32),
                       float(self.ngram_bias))
        return self._c

    @classmethod
    def learn(cls, labels: list[str], words: list[str] | None = None) -> "Tables":
        """Learn n-gram log-probabilities (add-one smoothing) and a word list."""
        m, lens = encode(labels)
        n = len(labels)
        padded = np.zeros((n, MAXLEN + 2), np.int64)
        padded[:, 1:MAXLEN + 1] = m
        valid = np.arange(MAXLEN + 2)[None, :] <= (lens[:, None] + 1)
        bi = padded[:, :-1] * A + padded[:, 1:]
        bv = valid[:, 1:]
        bc = np.bincount(bi[bv], minlength=A * A).astype(np.float64)
        tri = padded[:, :-2] * A * A + padded[:, 1:-1] * A + padded[:, 2:]
        tv = valid[:, 2:]
        tc = np.bincount(tri[tv], minlength=A * A * A).astype(np.float64)
        uni = bc.reshape(A, A).sum(1)
        big = np.log((bc.reshape(A, A) + 1) / (uni[:, None] + A)).ravel()
        ctx = tc.reshape(A * A, A).sum(1)
        trig = np.log((tc.reshape(A * A, A) + 1) / (ctx[:, None] + A)).ravel()
        words = sorted(set(words if words is not None else derive_words(labels)))
        return cls(big.astype(np.float32), trig.astype(np.float32), tc > 0, words,
                   np.unique(_hash_words(words)))


def derive_words(labels: list[str], english: set[str] | None = None) -> list[str]:
    """A word list for segmentation, learned from benign labels.

    Candidates are frequent English words (:func:`english_words`, when
    ``wordsegment`` is installed at training time) plus alphabetic tokens of the benign
    labels (split on digits and hyphens); a candidate is kept when it recurs as
    a substring of several benign labels (3-letter words: many), so the list
    holds the words popular names are made of, not every obscure dictionary
    entry a random string could contain by chance.
    """
    import re

    if english is None:
        english = english_words()
    tok = Counter()
    for lab in labels:
        for p in re.split(r"[^a-z]+", lab):
            if MINWORD <= len(p) <= MAXWORD:
                tok[p] += 1
    cset = {w for w in english if MINWORD <= len(w) <= MAXWORD} | set(tok)
    sub = Counter()
    for lab in set(labels):
        seen = set()
        L = len(lab)
        for k in range(MINWORD, min(MAXWORD, L) + 1):
            for i in range(L - k + 1):
                t = lab[i:i + k]
                if t in cset:
                    seen.add(t)
        sub.update(seen)
    keep = []
    for w in cset:
        need = 20 if len(w) == 3 else 2
        if w in english:
            if sub[w] >= need:
                keep.append(w)
        elif sub[w] >= max(need, 3) and len(w) >= 4 and tok[w] >= 2:
            keep.append(w)
    return sorted(keep)


#: how many of the most frequent English words (wordsegment's unigram counts,
#: from the Google Web Trillion Word Corpus) the word list may take
ENGLISH_TOP = 60_000


def english_words(top: int = ENGLISH_TOP) -> set[str]:
    """The ``top`` most frequent English words of 3..12 letters, from the
    ``wordsegment`` package's unigram counts (a training-time dependency: the
    list learned from them is stored in the model artefact). Empty without it."""
    try:
        import wordsegment
    except ImportError:
        return set()
    path = os.path.join(os.path.dirname(wordsegment.__file__), "unigrams.txt")
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:  # sorted by count, most frequent first
            w = line.split("\t", 1)[0]
            if MINWORD <= len(w) <= MAXWORD and w.isascii() and w.isalpha():
                out.append(w)
                if len(out) >= top:
                    break
    return set(out)


def _hash_words(words: list[str]) -> np.ndarray:
    if not words:
        return np.zeros(0, np.uint64)
    m, lens = encode(words)
    return _poly_hash_rows(m, lens)


_P = np.uint64(1000003)
_GOLD = 0x9E3779B97F4A7C15
_KMIX = [np.uint64((k * _GOLD) % (1 << 64)) for k in range(MAXLEN + 1)]
_BITS = 22  # membership bitmaps of 4 Mi entries each: ~1e-5 false hits for 15k words


def word_bitmaps(word_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean tables indexed by different bits of a word hash (a 2-probe Bloom filter)."""
    mask = np.uint64((1 << _BITS) - 1)
    t1 = np.zeros(1 << _BITS, bool)
    t2 = np.zeros(1 << _BITS, bool)
    t1[(word_hashes & mask).astype(np.int64)] = True
    t2[((word_hashes >> np.uint64(40)) & mask).astype(np.int64)] = True
    return t1, t2


def _poly_hash_rows(m: np.ndarray, lens: np.ndarray) -> np.ndarray:
    h = np.zeros(len(m), np.uint64)
    for j in range(m.shape[1]):
        live = j < lens
        h = np.where(live, h * _P + m[:, j].astype(np.uint64) + np.uint64(1), h)
    return h + np.array(_KMIX, np.uint64)[lens]


def encode(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pack labels into an (n, MAXLEN) uint8 matrix of alphabet indices (0 = pad)."""
    n = len(labels)
    raw = "\0".join(s[:MAXLEN] for s in labels).encode("ascii", "replace") if n else b""
    # fast path: one join, then scatter rows using the lengths
    lens = np.fromiter((min(len(s), MAXLEN) for s in labels), dtype=np.int64, count=n)
    buf = np.frombuffer(raw, dtype=np.uint8)
    m = np.zeros((n, MAXLEN), np.uint8)
    if n:
        starts = np.zeros(n, np.int64)
        starts[1:] = np.cumsum(lens[:-1] + 1)
        col = np.arange(MAXLEN)[None, :]
        mask = col < lens[:, None]
        idx = (starts[:, None] + col)[mask]
        m[mask] = _MAP[buf[idx]]
    return m, lens


# --- the hashed character n-gram model ---------------------------------------------
#
# Every 1..NG_MAX-gram of the label framed by a boundary symbol is hashed into
# 2^NG_BITS buckets; a logistic regression over the bucket counts (trained in
# models/train.py, weights stored in the artefact) gives one logit, the
# ``ngram_lr`` feature. It learns far more character context than the 2-/3-gram
# tables, and the forest combines it with length and the other features.
NG_MAX = 5
NG_BITS = 19
_NG_BASE = np.uint64(40)
_BOUNDARY = 39
_GOLD64 = np.uint64(_GOLD)


def ngram_index(m: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, bucket) of every n-gram of the encoded labels, n-major then position:
    the order the C twin sums them in."""
    n = len(m)
    W = MAXLEN + 2
    s = np.zeros((n, W), np.uint64)
    s[:, 1:MAXLEN + 1] = m
    s[:, 0] = _BOUNDARY
    s[np.arange(n), lens + 1] = _BOUNDARY
    L = lens + 2
    rows, cols = [], []
    h = None
    with np.errstate(over="ignore"):
        for k in range(1, NG_MAX + 1):
            h = s.copy() if k == 1 else h[:, :-1] * _NG_BASE + s[:, k - 1:]
            valid = (np.arange(W - k + 1)[None, :] + k) <= L[:, None]
            r, c = np.nonzero(valid)
            hk = (h[r, c] + np.uint64(k << 40)) * _GOLD64
            rows.append(r)
            cols.append((hk >> np.uint64(64 - NG_BITS)).astype(np.int64))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    order = np.argsort(r, kind="stable")  # per row: n-major, then position
    return r[order], c[order]


def ngram_matrix(labels: list[str]):
    """Sparse (n, 2^NG_BITS) n-gram counts, for training the n-gram model."""
    import scipy.sparse as sp

    m, lens = encode(labels)
    r, c = ngram_index(m, lens)
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(labels), 1 << NG_BITS))


def ngram_logits_from(m: np.ndarray, lens: np.ndarray, w: np.ndarray, bias: float) -> np.ndarray:
    r, c = ngram_index(m, lens)
    acc = np.bincount(r, weights=w[c].astype(np.float64), minlength=len(m))
    return (acc + bias).astype(np.float32)


def ngram_logits(labels: list[str], w: np.ndarray, bias: float) -> np.ndarray:
    m, lens = encode(labels)
    return ngram_logits_from(m, lens, w, bias)


def _max_run(flag: np.ndarray) -> np.ndarray:
    """Longest run of True per row."""
    n, w = flag.shape
    run = np.zeros(n, np.int16)
    best = np.zeros(n, np.int16)
    for j in range(w):
        run = np.where(flag[:, j], run + 1, 0)
        np.maximum(best, run, out=best)
    return best


def split_label(name: str) -> tuple[str, str, str]:
    """(label scored, subdomain left of it, top-level suffix) for a DNS name."""
    from detector.dns.names import split_domain

    sub, reg, suffix = split_domain(name)
    label = reg[: len(reg) - len(suffix) - 1] if suffix and reg.endswith("." + suffix) else reg.split(".")[0]
    if sub and reg in _SHARED:
        parts = sub.split(".")
        label, sub = parts[-1], ".".join(parts[:-1])
    tld = suffix.rsplit(".", 1)[-1] if suffix else ""
    return label, sub, tld


def label_and_tld(name: str) -> tuple[str, str]:
    """:func:`split_label`'s label and TLD, with :func:`split_many`'s fast path
    (the detector asks this once per distinct name it judges)."""
    parts = name.rsplit(".", 2)
    if len(parts) >= 2:
        tld = parts[-1]
        key = parts[-2] + "." + tld
        if suffix_is_tld(key, tld) and key not in _SHARED and tld != "arpa":
            return parts[-2], tld
    label, _, tld = split_label(name)
    return label, tld


def extract(names: list[str], tables: Tables) -> np.ndarray:
    """Feature matrix (n, NF) float32 for DNS names (lower-case, no trailing dot).

    The top-level domain is not a feature: a whole TLD (.xyz, .top) must never
    make a name suspicious, since new gTLDs host as many ordinary sites as
    DGA rendezvous points."""
    labels, subs, _ = split_many(names)
    return extract_parts(labels, subs, tables)


def extract_parts(labels: list[str], subs: list[str], tables: Tables) -> np.ndarray:
    n = len(labels)
    X = np.zeros((n, NF), np.float32)
    if n == 0:
        return X
    if _cdga is not None:
        _cdga.features(labels, subs, *tables.c_args(), X)
        return X
    return extract_parts_numpy(labels, subs, tables, X)


def extract_parts_numpy(labels: list[str], subs: list[str], tables: Tables,
                        X: np.ndarray | None = None) -> np.ndarray:
    """The reference implementation (numpy); the C twin must agree with it."""
    n = len(labels)
    if X is None:
        X = np.zeros((n, NF), np.float32)
    if n == 0:
        return X
    m, lens = encode(labels)
    lo = -1
    for hi in (12, 20, 32, MAXLEN):  # narrow matrices for the (many) short labels
        sel = np.nonzero((lens > lo) & (lens <= hi))[0]
        lo = hi
        if len(sel):
            X[sel] = _char_features(m[sel, :hi], lens[sel], tables, X[sel])
    # dictionary words: best non-overlapping cover (DP over end positions)
    X[:, 16:20] = _word_cover(m, lens, tables.bitmaps())
    # subdomain context
    X[:, 20] = [s.count(".") + 1 if s else 0 for s in subs]
    X[:, 21] = [len(s) for s in subs]
    if tables.ngram_w is not None:
        X[:, 24] = ngram_logits_from(m, lens, tables.ngram_w, tables.ngram_bias)
    return X


def _char_features(m: np.ndarray, lens: np.ndarray, tables: Tables, X: np.ndarray) -> np.ndarray:
    """Character and n-gram features of labels packed ``m`` (n, width)."""
    n, width = m.shape
    if n == 0:
        return X
    L = np.maximum(lens, 1).astype(np.float32)
    X[:, 0] = lens
    # character distribution
    flat = (np.arange(n)[:, None] * A + m).ravel()
    counts = np.bincount(flat, minlength=n * A).reshape(n, A)
    counts[:, 0] = 0
    p = counts / L[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0).sum(1)
    X[:, 1] = ent
    X[:, 2] = (counts > 0).sum(1) / L
    vow, cons, dig = _VOWEL[m], _CONS[m], _DIGIT[m]
    X[:, 3] = vow.sum(1) / L
    X[:, 4] = cons.sum(1) / L
    X[:, 5] = dig.sum(1) / L
    X[:, 6] = (m == 37).sum(1)
    X[:, 7] = _max_run(cons)
    X[:, 8] = _max_run(vow)
    X[:, 9] = _max_run(dig)
    let = _LETTER[m]
    X[:, 10] = ((let[:, 1:] & dig[:, :-1]) | (dig[:, 1:] & let[:, :-1])).sum(1)
    X[:, 11] = (_HEX[m].sum(1) == lens) & (lens >= 8) & (dig.sum(1) > 0)
    # n-gram log-likelihood against benign labels (edges padded with 0)
    pad = np.zeros((n, width + 2), np.int64)
    pad[:, 1:width + 1] = m
    col = np.arange(width + 2)[None, :]
    valid = col <= (lens[:, None] + 1)
    bv = valid[:, 1:]
    bll = np.where(bv, tables.bigram[pad[:, :-1] * A + pad[:, 1:]], 0).sum(1)
    X[:, 12] = bll / (lens + 1)
    tidx = pad[:, :-2] * (A * A) + pad[:, 1:-1] * A + pad[:, 2:]
    tv = valid[:, 2:]
    tll = np.where(tv, tables.trigram[tidx], 0)
    X[:, 13] = tll.sum(1) / np.maximum(lens, 1)
    X[:, 14] = np.where(tv, tll, 0.0).min(1)
    X[:, 15] = (tv & ~tables.trigram_seen[tidx]).sum(1) / np.maximum(lens, 1)
    # log-likelihood ratio, benign n-grams vs uniform random characters, summed:
    # grows with length, so a long random label is told apart with confidence
    X[:, 22] = tll.sum(1) - (lens + 1) * _LOG_UNIFORM
    X[:, 23] = bll - (lens + 1) * _LOG_UNIFORM
    return X


def _word_cover(m: np.ndarray, lens: np.ndarray, bitmaps) -> np.ndarray:
    """Per row: share of letters covered by dictionary words, words used,
    whether the label splits fully into words (hyphens and digits ignored),
    longest word. Rows are processed in length buckets to keep matrices narrow."""
    n = len(m)
    out = np.zeros((n, 4), np.float32)
    if bitmaps is None or n == 0:
        return out
    lo = 0
    for hi in (8, 12, 16, 24, MAXLEN):
        sel = np.nonzero((lens > lo) & (lens <= hi))[0]
        lo = hi
        if len(sel):
            out[sel] = _word_cover_bucket(m[sel, :hi], lens[sel], bitmaps)
    return out


def _word_cover_bucket(m: np.ndarray, lens: np.ndarray, bitmaps) -> np.ndarray:
    t1, t2 = bitmaps
    mask = np.uint64((1 << _BITS) - 1)
    n = len(m)
    out = np.zeros((n, 4), np.float32)
    maxl = int(lens.max()) if n else 0
    # hit[k][:, i]: the substring of length k starting at i is a word
    mu = m.astype(np.uint64) + np.uint64(1)
    hits = {}
    h = np.zeros((n, max(maxl, 1)), np.uint64)
    for k in range(1, MAXWORD + 1):
        if k > maxl:
            break
        # h[:, i] = hash of m[i:i+k]
        h = h[:, : maxl - k + 1] * _P + mu[:, k - 1: maxl]
        if k >= MINWORD:
            hk = h + _KMIX[k]
            hit = t1[(hk & mask).astype(np.int64)]
            hit &= t2[((hk >> np.uint64(40)) & mask).astype(np.int64)]
            hit &= (np.arange(maxl - k + 1)[None, :] + k) <= lens[:, None]
            hits[k] = hit
    # DP over end positions j=1..maxl: best cover, words, and reachability
    best = np.zeros((n, maxl + 1), np.int16)
    nw = np.zeros((n, maxl + 1), np.int16)
    full = np.zeros((n, maxl + 1), bool)
    full[:, 0] = True
    longest = np.zeros(n, np.int16)
    sep = ~_LETTER[m[:, :maxl]]  # hyphens and digits break words and count as free
    for j in range(1, maxl + 1):
        b = best[:, j - 1].copy()
        c = nw[:, j - 1].copy()
        f = full[:, j - 1] & sep[:, j - 1]
        for k, hit in hits.items():
            if k > j:
                continue
            i = j - k
            hk = hit[:, i]
            cand = best[:, i] + k
            better = hk & (cand > b)
            b = np.where(better, cand, b)
            c = np.where(better, nw[:, i] + 1, c)
            f |= hk & full[:, i]
            longest = np.where(hk, np.maximum(longest, k), longest)
        best[:, j], nw[:, j], full[:, j] = b, c, f
    idx = np.arange(n)
    letters = np.maximum((~sep & (np.arange(maxl)[None, :] < lens[:, None])).sum(1), 1)
    out[:, 0] = best[idx, lens] / letters
    out[:, 1] = nw[idx, lens]
    out[:, 2] = full[idx, lens] & (lens > 0)
    out[:, 3] = longest
    return out


def _shared_parents() -> frozenset[str]:
    """Registered domains that are PSL *private* suffixes (dynamic DNS, hosting),
    and the dynamic-DNS provider zones bundled in detector/data/dynamic-dns.txt."""
    from detector.paths import bundled

    out = set()
    try:
        for line in bundled("dynamic-dns.txt").read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                out.add(line.strip())
    except OSError:
        pass
    try:
        from detector.dns.names import psl_rules, split_domain

        public, private = psl_rules()
        for r in public + private:
            r = r.lower().lstrip("*.!")
            if "." in r:
                _, reg, _ = split_domain(r)
                if reg == r:
                    out.add(r)
    except (ImportError, OSError):  # no bundled list: the dynamic-DNS zones only
        pass
    return frozenset(out)


_SHARED = _shared_parents()

from detector.dns.names import suffix_is_tld  # noqa: E402 - loaded by _shared_parents already


def scored_domain(name: str, registered: str = "", sub: str = "") -> str:
    """The name the model scores for a query name: its registered domain, or under a
    shared/dynamic-DNS parent (``duckdns.org``) the label below it with the parent
    (``abc123.duckdns.org``), since that label is what a DGA would generate there.
    ``registered`` and ``sub`` are the enrich stage's split, when already known."""
    if not registered:
        from detector.dns.names import split_domain

        sub, registered, _ = split_domain(name)
    if sub and registered in _SHARED:
        return sub.rsplit(".", 1)[-1] + "." + registered
    return registered or name


def split_many(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """:func:`split_label` for many names, with a fast path for the common case.

    When the top-level label is a public suffix and the last two labels are not
    the start of any longer rule (``example.com``, not ``example.co.uk`` or
    ``x.duckdns.org``), the registered label is the second-to-last label and
    no per-name suffix walk is needed; every other name takes the full path.
    """
    from detector.dns.names import suffix_is_tld

    labels, subs, tlds = [], [], []
    la, sa, ta = labels.append, subs.append, tlds.append
    shared = _SHARED
    for nm in names:
        parts = nm.rsplit(".", 2)
        if len(parts) >= 2:
            tld = parts[-1]
            key = parts[-2] + "." + tld
            if suffix_is_tld(key, tld) and key not in shared and tld != "arpa":
                la(parts[-2])
                sa(parts[0] if len(parts) == 3 else "")
                ta(tld)
                continue
        lab, sub, tld = split_label(nm)
        la(lab)
        sa(sub)
        ta(tld)
    return labels, subs, tlds
