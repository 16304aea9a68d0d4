"""The DGA model: learned feature tables + a gradient-boosted classifier.

    m = DgaModel(seed=7).fit(names, y)       # y: 1 = DGA, 0 = benign
    m.predict_proba(names)                   # (n, 2) like scikit-learn
    m.score("kngaqqsiczh.net")               # (0.99, [("trigram_ll", -7.1), ...])
    m.save("models/dga.joblib"); DgaModel.load("models/dga.joblib")

The artefact is one joblib file holding the classifier, the n-gram tables, the
word list, the default threshold and the metadata (feature version, sklearn
version, seed, training files with sha256, metrics). Loading refuses an
artefact built for another FEATURE_VERSION.

Beside it, ``dga.runtime.npz`` holds what scoring needs and nothing more: the
same tables and thresholds and the forest as flat node arrays for the C
walker, in plain numpy arrays (no pickle). Loading it needs no scikit-learn
(about 2.5 s and 90 MiB less at start-up); it is written by :meth:`save` and
used by :meth:`load` when its ``source_sha256`` matches the joblib file it
was made from, so a stale one is never used. A test checks both score alike.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from detector import errors
from detector.detect.dga import features as F
from detector.errors import DetectorError

DEFAULT_PATH_NAME = "dga.joblib"
_CACHE_MAX = 1 << 16  # names; ~25 MB at most
TEMPERATURE = 4.0
MONOTONIC = {"trigram_llr": -1, "bigram_llr": -1, "trigram_ll": -1, "bigram_ll": -1,
             "trigram_unseen": 1, "entropy": 1, "ngram_lr": 1}
#: inner folds for the n-gram model's out-of-fold logits (the forest's training input)
INNER_FOLDS = 4
NGRAM_ALPHA = 1e-5  # L2 strength of the n-gram logistic regression
NGRAM_EPOCHS = 15


class DgaModel:
    def __init__(self, seed: int = 7, max_iter: int = 250, max_leaf_nodes: int = 31) -> None:
        self.seed = seed
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.tables: F.Tables | None = None
        self.clf = None
        self.threshold = 0.5  # default alert threshold (FPR <= 1e-4 on popular names)
        self.single_threshold = 0.99  # above every popular benign name seen out-of-fold
        self.storm_threshold = 0.5  # FPR 1e-2 on popular names: NXDOMAINs this odd join a storm
        self.center = np.zeros(F.NF, np.float32)
        self.scale = np.ones(F.NF, np.float32)
        self.metadata: dict[str, Any] = {}
        self._cache: OrderedDict[str, tuple[float, list]] = OrderedDict()
        self._flat: tuple | bool | None = None  # the forest flattened for the C walker
        self._qs: tuple | None = None  # (flat, its leaf-bitvector packing) for _cdga.forest_qs

    # --- training ---------------------------------------------------------------
    def fit(self, names: list[str], y: np.ndarray, sample_weight: np.ndarray | None = None,
            benign_labels: list[str] | None = None, groups: np.ndarray | None = None) -> "DgaModel":
        """Learn the tables and the n-gram model from the training names, then the
        forest over every feature.

        Every feature learnt from the benign names (the 2-/3-gram likelihoods, the
        n-gram model's logit) is fed to the forest *out-of-fold*: a training name's
        own n-grams must not make it look benign, or the forest learns a contrast
        that names it never saw (today's popular names, in use) do not have.
        ``groups`` (a family index per DGA row, -1 for benign) keeps each family in
        one inner fold; benign rows are split at random. The word list is learnt
        once, from all benign labels (or ``benign_labels``)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        y = np.asarray(y)
        labels, subs, _ = F.split_many(names)
        if benign_labels is None:
            benign_labels = [lab for lab, t in zip(labels, y) if t == 0]
        self.tables = F.Tables.learn(benign_labels)
        cnt = F.ngram_matrix(labels)
        sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight)
        self.tables.ngram_w, self.tables.ngram_bias = self._fit_ngram(cnt, y, sw)
        self.tables._c = None
        X = np.zeros((len(y), F.NF), np.float32)
        fold = self._inner_folds(y, groups)
        lab_arr = np.array(labels, dtype=object)
        for k in range(INNER_FOLDS):
            te = fold == k
            if not te.any():
                continue
            tk = F.Tables.learn(list(lab_arr[(~te) & (y == 0)]), words=self.tables.words)
            tk.ngram_w, tk.ngram_bias = self._fit_ngram(cnt[~te], y[~te], sw[~te])
            idx = np.nonzero(te)[0]
            X[idx] = F.extract_parts(list(lab_arr[idx]), [subs[i] for i in idx], tk)
        # monotonic in the n-gram evidence: less benign-like text never lowers the
        # score, which keeps unseen families from falling into odd leaves
        cst = [MONOTONIC.get(f, 0) for f in F.FEATURES]
        self.clf = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.1, max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=50, l2_regularization=1.0, early_stopping=False,
            monotonic_cst=cst, random_state=self.seed)
        self.clf.fit(X, y, sample_weight=sample_weight)
        self._flat = None
        ben = X[y == 0]
        self.center = np.median(ben, 0).astype(np.float32)
        q = np.percentile(ben, [10, 90], axis=0)
        self.scale = np.maximum(q[1] - q[0], 1e-3).astype(np.float32)
        self._cache.clear()
        return self

    def _inner_folds(self, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        fold = rng.integers(0, INNER_FOLDS, len(y))
        if groups is not None:
            groups = np.asarray(groups)
            fams = np.unique(groups[groups >= 0])
            fam_fold = dict(zip(fams.tolist(), (rng.permutation(len(fams)) % INNER_FOLDS).tolist()))
            fold = np.where(groups >= 0, [fam_fold.get(g, 0) for g in groups.tolist()], fold)
        return fold

    def _fit_ngram(self, cnt, y, sample_weight) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import SGDClassifier

        lr = SGDClassifier(loss="log_loss", alpha=NGRAM_ALPHA, max_iter=NGRAM_EPOCHS, tol=None,
                           random_state=self.seed)
        lr.fit(cnt, y, sample_weight=sample_weight)
        return lr.coef_.ravel().astype(np.float32), float(lr.intercept_[0])

    # --- scoring ----------------------------------------------------------------
    def features(self, names: list[str]) -> np.ndarray:
        tables = self._tables()
        split = getattr(F._cdga, "split_fast", None)
        if split is None or not isinstance(names, list):
            return F.extract(names, tables)
        # F.split_many's fast path in C (the same test, on the same public-suffix
        # sets; tests/test_dga_fast.py holds the two equal), the rest by split_label
        from detector.dns import names as N

        labels, subs, slow = split(names, N._RULES, N._NODES, N._WILD, F._SHARED)
        for i in slow:
            labels[i], subs[i], _ = F.split_label(names[i])
        return F.extract_parts(labels, subs, tables)

    def predict_proba(self, names: list[str]) -> np.ndarray:
        """(n, 2): benign and DGA score; the DGA column is :meth:`proba_from_features`."""
        if not names:
            return np.zeros((0, 2))
        p = self.proba_from_features(self.features(names))
        return np.c_[1 - p, p]

    def proba_from_features(self, X: np.ndarray) -> np.ndarray:
        """DGA score in 0..1: the classifier's log-odds through a flattened logistic.

        Dividing the log-odds by ``TEMPERATURE`` keeps confident scores apart
        (a plain probability rounds every confident name to 1.0 and a
        threshold for FPR 1e-4 could not be placed between them)."""
        if not len(X):
            return np.zeros(0)
        raw = self.decision_function(X)
        return 1.0 / (1.0 + np.exp(-raw / TEMPERATURE))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The classifier's log-odds: walked in C when the extension is built
        (same sums as scikit-learn's, without its per-call thread setup)."""
        flat = self._forest()
        if flat is None:
            return self.clf.decision_function(X)
        X = np.ascontiguousarray(X, np.float32)
        out = np.empty(len(X), np.float64)
        packed = self._packed(flat)
        if packed is not None:
            nodes, roots, depths, values, baseline = flat
            F._cdga.forest_qs(X, packed, nodes, roots, depths, values, baseline, out)
        else:
            F._cdga.forest(X, *flat, out)
        return out

    def _packed(self, flat: tuple) -> bytes | None:
        """The flat forest as leaf bitvectors for ``_cdga.forest_qs`` (same sums,
        about 6x faster), made once per forest; None when the extension lacks it
        or a tree has more than 32 leaves (the walk of ``_cdga.forest`` then)."""
        if self._qs is None or self._qs[0] is not flat:
            pack = getattr(F._cdga, "forest_pack", None)
            self._qs = (flat, pack(*flat[:4]) if pack is not None else None)
        return self._qs[1]

    def _forest(self) -> tuple | None:
        """The trees as flat node arrays for the C walker, or None (no C, or a
        split kind it does not walk)."""
        if self._flat is None:
            self._flat = False
            preds = getattr(self.clf, "_predictors", None)
            if F._cdga is not None and preds and all(len(p) == 1 for p in preds):
                nodes = [p[0].nodes for p in preds]
                if not any(nd["is_categorical"].any() for nd in nodes):
                    self._flat = _pack_forest(nodes, float(np.ravel(self.clf._baseline_prediction)[0]))
        return self._flat or None

    def explain(self, X: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k features furthest from the benign median, per row (name, value)."""
        if not len(X):
            return []
        z = np.abs((X - self.center) / self.scale)
        top = np.argsort(-z, axis=1, kind="stable")[:, :k]
        vals = np.round(np.take_along_axis(X, top, 1).astype(np.float64), 3).tolist()
        names = F.FEATURES
        return [list(zip([names[j] for j in row], v)) for row, v in zip(top.tolist(), vals)]

    def score_many(self, names: list[str], k: int = 3, explain: bool = True) -> list[tuple[float, list | None]]:
        """(score, top features) per name, from a bounded cache where possible.
        With ``explain=False`` the top features may be None: the detector scores
        every name but explains only the few it reports (:meth:`score`)."""
        cache = self._cache
        todo = [n for n in dict.fromkeys(names)
                if (c := cache.get(n)) is None or (explain and c[1] is None)]
        if todo:
            X = self.features(todo)
            ps = self.proba_from_features(X).tolist()
            ex = self.explain(X, k) if explain else [None] * len(todo)
            for n, p, e in zip(todo, ps, ex):
                cache[n] = (p, e)
        out = [cache[n] for n in names]  # before eviction: a batch may exceed the cache
        while len(cache) > _CACHE_MAX:
            cache.popitem(last=False)
        return out

    def score_names(self, names: list[str]) -> list[float]:
        """The score of each name (distinct names), computed afresh and not cached:
        the detector keeps its own score per name, and a second copy here would
        only cost memory."""
        if not names:
            return []
        return self.proba_from_features(self.features(names)).tolist()

    def score(self, name: str) -> tuple[float, list]:
        return self.score_many([name])[0]

    def _tables(self) -> F.Tables:
        if self.tables is None or (self.clf is None and not self._flat):
            raise DetectorError("the DGA model is not trained", errors.MODEL,
                                "train it with `python models/train.py`")
        return self.tables

    # --- persistence --------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        import joblib
        import sklearn

        path = Path(path)
        self.metadata.update({
            "feature_version": F.FEATURE_VERSION,
            "features": list(F.FEATURES),
            "sklearn_version": sklearn.__version__,
            "seed": self.seed,
            "threshold": self.threshold,
            "single_threshold": self.single_threshold,
            "storm_threshold": self.storm_threshold,
        })
        t = self.tables
        state = {
            "feature_version": F.FEATURE_VERSION,
            "clf": self.clf,
            "threshold": self.threshold,
            "single_threshold": self.single_threshold,
            "storm_threshold": self.storm_threshold,
            "center": self.center, "scale": self.scale,
            "bigram": t.bigram, "trigram": t.trigram, "trigram_seen": np.packbits(t.trigram_seen),
            "words": "\n".join(t.words),
            "ngram_w": t.ngram_w, "ngram_bias": t.ngram_bias,
            "seed": self.seed,
            "metadata": self.metadata,
        }
        joblib.dump(state, path, compress=3)
        self.save_runtime(path)
        path.with_name(path.name.replace(".joblib", "") + ".metadata.json").write_text(
            json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")

    def save_runtime(self, path: str | Path) -> Path:
        """Write ``<name>.runtime.npz`` beside the joblib artefact at ``path``."""
        path = Path(path)
        flat = self._forest()
        if flat is None:
            raise DetectorError("the DGA model's forest cannot be flattened for the C walker",
                                errors.MODEL)
        nodes, roots, depths, values, baseline = flat
        t = self._tables()
        out = runtime_path(path)
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez_compressed(
            tmp, feature_version=np.int64(F.FEATURE_VERSION), source_sha256=np.str_(_sha256(path)),
            threshold=np.float64(self.threshold), single_threshold=np.float64(self.single_threshold),
            storm_threshold=np.float64(self.storm_threshold), center=self.center, scale=self.scale,
            bigram=t.bigram, trigram=t.trigram, trigram_seen=np.packbits(t.trigram_seen),
            words=np.str_("\n".join(t.words)), ngram_w=t.ngram_w, ngram_bias=np.float64(t.ngram_bias),
            nodes=nodes, roots=roots, depths=depths, values=values, baseline=np.float64(baseline),
            seed=np.int64(self.seed), metadata=np.str_(json.dumps(self.metadata)))
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, path: str | Path | None = None) -> "DgaModel":
        from detector.paths import models_dir

        path = Path(path) if path else models_dir() / DEFAULT_PATH_NAME
        hint = "rebuild it with `python models/train.py`"
        if not path.is_file():
            raise DetectorError(f"{path}: DGA model not found", errors.MODEL, hint)
        fast = cls._load_runtime(path)
        if fast is not None:
            return fast
        import joblib

        try:
            st = joblib.load(path)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad artefact
            raise DetectorError(f"{path}: not a readable DGA model ({type(e).__name__}: {e})",
                                errors.MODEL, hint) from None
        if not isinstance(st, dict) or "feature_version" not in st:
            raise DetectorError(f"{path}: not a DGA model artefact", errors.MODEL, hint)
        if st["feature_version"] != F.FEATURE_VERSION:
            raise DetectorError(
                f"{path}: model built for feature version {st['feature_version']}, "
                f"this code computes feature version {F.FEATURE_VERSION}", errors.MODEL, hint)
        m = cls(seed=st.get("seed", 0))
        m.clf = st["clf"]
        m.threshold = float(st["threshold"])
        m.single_threshold = float(st.get("single_threshold", max(m.threshold, 0.99)))
        m.storm_threshold = float(st.get("storm_threshold", min(m.threshold, 0.5)))
        m.center, m.scale = st["center"], st["scale"]
        words = st["words"].split("\n") if st["words"] else []
        seen = np.unpackbits(st["trigram_seen"])[: F.A ** 3].astype(bool)
        m.tables = F.Tables(st["bigram"], st["trigram"], seen, words, np.unique(F._hash_words(words)),
                            st.get("ngram_w"), float(st.get("ngram_bias", 0.0)))
        m.metadata = st.get("metadata", {})
        return m

    @classmethod
    def _load_runtime(cls, path: Path) -> "DgaModel | None":
        """The runtime arrays made from ``path``, or None (absent, stale, no C walker)."""
        rt = runtime_path(path)
        if F._cdga is None or not rt.is_file():
            return None
        try:
            with np.load(rt, allow_pickle=False) as z:
                st = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DetectorError(f"{rt}: not a readable DGA runtime model ({e})", errors.MODEL,
                                f"delete it to use {path.name}, or rebuild with `python models/train.py`"
                                ) from None
        if int(st["feature_version"]) != F.FEATURE_VERSION or str(st["source_sha256"]) != _sha256(path):
            return None  # made for another artefact or feature version: use the joblib
        m = cls(seed=int(st["seed"]))
        m.threshold = float(st["threshold"])
        m.single_threshold = float(st["single_threshold"])
        m.storm_threshold = float(st["storm_threshold"])
        m.center, m.scale = st["center"], st["scale"]
        words = str(st["words"]).split("\n") if str(st["words"]) else []
        seen = np.unpackbits(st["trigram_seen"])[: F.A ** 3].astype(bool)
        m.tables = F.Tables(st["bigram"], st["trigram"], seen, words, np.unique(F._hash_words(words)),
                            st["ngram_w"], float(st["ngram_bias"]))
        m._flat = (st["nodes"], st["roots"], st["depths"], st["values"], float(st["baseline"]))
        m.metadata = json.loads(str(st["metadata"]))
        return m


def runtime_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".joblib") + ".runtime.npz")


_SHA: dict[tuple[str, float, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    h = _SHA.get(key)
    if h is None:
        h = _SHA[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return h


_NODE = np.dtype([("thr", "<f4"), ("left", "<i4"), ("right", "<i4"), ("feat", "u1"),
                  ("missing_left", "u1"), ("pad", "<u2")])


def _pack_forest(trees: list[np.ndarray], baseline: float) -> tuple:
    """scikit-learn's predictor nodes as the C walker's arrays (see ``_cdga.c``):
    packed nodes with global child indices (a leaf points to itself), roots,
    depths, leaf values, baseline."""
    sizes = [len(nd) for nd in trees]
    offs = np.cumsum([0] + sizes)
    cat = np.concatenate(trees)
    self_idx = np.arange(len(cat), dtype=np.int64)
    shift = np.repeat(offs[:-1], sizes)
    leaf = cat["is_leaf"].astype(bool)
    thr64 = cat["num_threshold"].astype(np.float64)
    thr = thr64.astype(np.float32)
    over = thr.astype(np.float64) > thr64  # round down: x <= thr32 iff x <= thr64 for float32 x
    thr[over] = np.nextafter(thr[over], np.float32(-np.inf))
    out = np.zeros(len(cat), _NODE)
    out["thr"] = thr
    out["left"] = np.where(leaf, self_idx, cat["left"] + shift)
    out["right"] = np.where(leaf, self_idx, cat["right"] + shift)
    out["feat"] = np.where(leaf, 0, cat["feature_idx"])
    out["missing_left"] = cat["missing_go_to_left"]
    depths = np.array([int(nd["depth"].max()) for nd in trees], np.int32)
    return (out, offs[:-1].astype(np.int32), depths, cat["value"].astype(np.float64), baseline)


_LOADED: dict[str, DgaModel] = {}


def default_model(path: str | Path | None = None) -> DgaModel:
    """The shipped model, loaded once per process."""
    key = str(path or "")
    if key not in _LOADED:
        _LOADED[key] = DgaModel.load(path)
    return _LOADED[key]
