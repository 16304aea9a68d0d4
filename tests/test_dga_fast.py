"""The fast paths of `detector score` give the reference's bytes exactly.

- ``_cdga.forest_qs`` (leaf bitvectors) against ``_cdga.forest`` (the node
  walk) and scikit-learn's decision_function, on real features and on hostile
  rows: values exactly at, just above and just below every threshold, NaN
  (missing_go_to_left), infinities;
- ``_cdga.lines`` against the orjson formatting (``Scorer._score_py``);
- reading the input in blocks against reading it line by line.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from detector.commands import score as S
from detector.detect.dga import features as F
from detector.detect.dga.model import DgaModel
from detector.paths import REPO

ARTEFACT = REPO / "models" / "dga.joblib"

pytestmark = pytest.mark.skipif(F._cdga is None, reason="the C extension was not built")


@pytest.fixture(scope="module")
def model() -> DgaModel:
    return DgaModel.load(ARTEFACT)


def _hostile_rows(model: DgaModel, n: int = 20000) -> np.ndarray:
    """Rows whose values sit on, beside and around the forest's thresholds."""
    nodes = model._forest()[0]
    inner = nodes[nodes["left"] != np.arange(len(nodes))]
    rng = np.random.default_rng(11)
    X = np.zeros((n, F.NF), np.float32)
    for f in range(F.NF):
        thr = inner["thr"][inner["feat"] == f]
        if not len(thr):
            X[:, f] = rng.normal(size=n).astype(np.float32)
            continue
        pick = rng.choice(thr, n)
        step = rng.integers(-2, 3, n)  # on the threshold, or 1-2 floats away
        v = pick.copy()
        for s in (1, 2):
            v = np.where(step >= s, np.nextafter(v, np.float32(np.inf)), v)
            v = np.where(step <= -s, np.nextafter(v, np.float32(-np.inf)), v)
        X[:, f] = v
    X[rng.random((n, F.NF)) < 0.01] = np.nan
    X[rng.random((n, F.NF)) < 0.002] = np.inf
    X[rng.random((n, F.NF)) < 0.002] = -np.inf
    return X


def test_bitvector_forest_is_the_walk_and_scikit_learn(tmp_path, model):
    shutil.copy(ARTEFACT, tmp_path / "dga.joblib")  # the joblib alone: scikit-learn's forest too
    sk = DgaModel.load(tmp_path / "dga.joblib")
    flat = model._forest()
    packed = model._packed(flat)
    assert packed is not None
    X = np.concatenate([_hostile_rows(model), model.features(["kngaqqsiczh.net", "google.com", "a.b"])])
    qs = np.empty(len(X))
    F._cdga.forest_qs(X, packed, *flat[:4], flat[4], qs)
    walk = np.empty(len(X))
    F._cdga.forest(X, *flat, walk)
    np.testing.assert_array_equal(qs, walk)
    np.testing.assert_array_equal(qs, sk.clf.decision_function(X))
    np.testing.assert_array_equal(model.decision_function(X), qs)  # the model takes this path
    for n in (0, 1, 7, 33):  # partial blocks
        part = np.empty(n)
        F._cdga.forest_qs(X[:n], packed, *flat[:4], flat[4], part)
        np.testing.assert_array_equal(part, walk[:n])


def test_a_forest_the_bitvectors_cannot_hold_is_walked(model):
    nodes, roots, depths, values, _ = model._forest()
    # one tree as a chain of 40 leaves: more than 32, so no packing
    n = 79
    chain = np.zeros(n, nodes.dtype)
    for i in range(0, n - 1, 2):
        chain[i] = (float(i), i + 1, i + 2, 0, 1, 0)
        chain[i + 1] = (0.0, i + 1, i + 1, 0, 0, 0)
    chain[n - 1] = (0.0, n - 1, n - 1, 0, 0, 0)
    assert F._cdga.forest_pack(chain, np.array([0], np.int32), np.array([40], np.int32),
                               np.zeros(n)) is None
    with pytest.raises(ValueError):
        F._cdga.forest_qs(np.zeros((1, F.NF), np.float32), b"junk", nodes, roots, depths, values, 0.0,
                          np.empty(1))


def _tricky_names(data_names: list[str]) -> list[str]:
    rnd = random.Random(5)
    alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_."\\/ \t\x00\x01\x1f\x7f\u00e9\u4e2d\ufffd\u2028'
    out = list(data_names)
    out += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 70))) + ".com" for _ in range(5000)]
    out += ["a" * 200 + ".net", "x.y.z.duckdns.org", "kngaqqsiczh.net", "-.com", "0.com"]
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("top", [0, 3, 25, 40])
def test_c_lines_are_the_orjson_lines(model, top, data):
    names = [x.split(",", 1)[-1].strip() for x in
             (data / "benign/alexa_top100k_2015.csv").read_text().splitlines()[:20000]]
    names = _tricky_names(names)
    sc = S.Scorer(model, None, top)
    X = model.features(names)
    p = model.proba_from_features(X)
    # hostile scores: exact ties at 4 decimals, the ends, values beside them
    p[:8] = [0.0, 1.0, 0.03125, 0.00005, 0.99995, 0.5, np.nextafter(0.03125, 1), np.nextafter(0.03125, 0)]
    X[8:12, 0] = [-0.0, -0.0004, 0.0005, 1e13]  # negative zero, a value too large for the short form
    fast = F._cdga.lines(names, p, X, model.center, model.scale, sc.threshold, sc.top, F.FEATURES)
    sc._score_py(names, X, p.tolist(), np)
    assert sum(x is None for x in fast[:20000]) <= 5  # the C path does the plain names
    assert any(x is None for x in fast)  # and leaves names to escape to orjson
    for n, line in zip(names, fast):
        if line is not None:
            assert line == sc.cache[n], n


def test_blocks_of_input_give_the_names_of_lines(tmp_path, monkeypatch):
    raw = ("1,Example.COM.\n  # comment\n\n\xe9t\u00e9.fr\r\nfoo.bar,baz\n" * 50).encode()
    raw += b"\xff\xfebad\x00name.com\n\xe2\x82\nlast.org."
    f = tmp_path / "names.txt"
    f.write_bytes(raw)

    def by_line() -> list[str]:
        out = []
        for b in raw.split(b"\n"):
            n = b.decode("utf-8", "replace").strip().rstrip(".").lower()
            if not n or n.startswith("#"):
                continue
            if "," in n and n.split(",", 1)[0].isdigit():
                n = n.split(",", 1)[1].strip()
            out.append(n)
        return out

    want = by_line()
    for block in (1, 5, 64, 1 << 20):
        monkeypatch.setattr(S, "_BLOCK", block)
        assert sum(S._chunks([str(f)]), []) == want, block


def test_c_split_is_split_many(model, data):
    from detector.dns import names as N

    names = [x.split(",", 1)[-1].strip() for x in
             (data / "benign/alexa_top100k_2015.csv").read_text().splitlines()[:30000]]
    names = _tricky_names(names)
    names += ["a.b.example.co.uk", "example.com", "x.y.z.duckdns.org", "foo.blogspot.com", "localhost",
              "1.0.0.10.in-addr.arpa", "abc.ck", "b.abc.ck", ".com", "com.", "..", ".", "", "a..com",
              "xn--bcher-kva.example", "\u00e9t\u00e9.fr", "w.x.\u4e2d\u56fd", "kq3v.duckdns.org", "x.arpa"]
    labels, subs, slow = F._cdga.split_fast(names, N._RULES, N._NODES, N._WILD, F._SHARED)
    want_l, want_s, _ = F.split_many(names)
    for i in slow:
        assert labels[i] is None and subs[i] is None
        labels[i], subs[i], _ = F.split_label(names[i])
    assert labels == want_l and subs == want_s
    assert 0 < len(slow) < len(names) // 4
    np.testing.assert_array_equal(model.features(names), F.extract(names, model.tables))


def test_a_full_cache_is_emptied_without_losing_the_batch(model, monkeypatch):
    """Repeated names across batches, a cache far smaller than the names: every
    line is still the name's own (the batch's names survive the clearing)."""
    rnd = random.Random(4)
    pool = [f"{''.join(rnd.choice('abcdefghij') for _ in range(8))}.com" for _ in range(3000)]
    want = dict(zip(pool, S.Scorer(model).lines(pool)))
    monkeypatch.setattr(S, "_CACHE_MAX", 500)
    sc = S.Scorer(model)
    for _ in range(20):
        batch = [rnd.choice(pool) for _ in range(400)]
        assert sc.lines(batch) == [want[n] for n in batch]
    assert len(sc.cache) <= 500 + 400
