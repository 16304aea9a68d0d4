#!/usr/bin/env python3
"""Train the DGA model from the shared real data, with leave-family-out evaluation.

    python models/train.py                  # writes models/dga.joblib, dga.metadata.json, README.md
    python models/train.py --limit 300 --out /tmp/m.joblib   # quick, for a reproducibility check
    python models/train.py --eval-only --json                 # print the evaluation only

Data (../shared/data, see its PROVENANCE.tsv):
  benign: popular lists of several years, mixed (training, "popular"):
          benign/alexa_top100k_2015.csv, benign/opendns-top-domains.txt,
          benign/tranco_top100k_2022-03-04.txt, benign/tranco_top50k_2026-08-01.txt
  held-out benign: benign/opendns-random-domains.txt and benign/ndpi_test_non_dga.csv
                   (never used in training; names also in the training lists are dropped)
  DGA:    dga/families/*.txt (one family per file)
  words:  the most frequent English words of the `wordsegment` package (training only;
          the word list learned from them is stored in the artefact)

Leave-family-out: families are split into K groups, benign names into K random
slices; each group is scored by a model trained on the other groups and slices,
so every DGA score comes from a model that never saw that family, and every
popular benign score from a model that never saw that name. The default
threshold is the lowest that keeps the out-of-fold FPR on popular names at or
under 1e-4.

Leave-list-out: for each popular list L (2026, 2022, 2015), a model is trained
without L (every family, the other lists) and its FPR at the default threshold
is measured on the names of L that no other training list holds: the false
alerts a user of another year's traffic would see.

The shipped model is then trained on everything with the same seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from detector.detect.dga import features as F  # noqa: E402
from detector.detect.dga.model import DgaModel  # noqa: E402
from detector.paths import shared_data  # noqa: E402

SEED = 7
FOLDS = 5
TARGET_FPR = 1e-4
BENIGN_WEIGHT = 5.0
#: the storm threshold (the dga rule's nx_score default) keeps this FPR on popular names:
#: NXDOMAIN answers for names at or above it count toward an NXDOMAIN storm
STORM_FPR = 1e-2
#: families whose names are made of dictionary words
DICTIONARY = ("suppobox", "matsnu", "bigviktor", "rovnix")
#: families of pronounceable or fixed-pattern pseudo-words (neither random nor dictionary)
PSEUDO = ("banjori", "ngioweb", "pushdo", "simda", "pitou", "kfos", "fosniw", "tofsee",
          "sisron", "symmi", "ramdo", "padcrypt", "monerodownloader", "proslikefan")


def kind_of(fam: str) -> str:
    return "dictionary" if fam in DICTIONARY else "pseudo-word" if fam in PSEUDO else "random"


def _clean(name: str) -> str:
    return name.strip().strip(".").lower()


def read_names(path: Path, column: int | None = None) -> list[str]:
    """The scored domains of a list (``help.example.com`` -> ``example.com``; under a
    dynamic-DNS parent, ``x.duckdns.org``): the detector scores these, so training
    must see names as it will (F.scored_domain)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if column is not None:
            parts = line.split(",")
            if len(parts) <= column:
                continue
            line = parts[column]
        n = _clean(line)
        if n and "." in n:
            out.append(F.scored_domain(n))
    return list(dict.fromkeys(out))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: popular benign lists used in training, (file, csv column, short name); mixed years so
#: that no year's naming fashion (or TLD mix) becomes "benign" by itself
POPULAR = (("benign/alexa_top100k_2015.csv", 1, "alexa-2015"),
           ("benign/opendns-top-domains.txt", None, "opendns-top"),
           ("benign/tranco_top100k_2022-03-04.txt", None, "tranco-2022"),
           ("benign/tranco_top50k_2026-08-01.txt", None, "tranco-2026"))
#: the lists held out one at a time in the leave-list-out evaluation
LEAVE_LIST_OUT = ("tranco-2026", "tranco-2022", "alexa-2015")


def load_data(root: Path, limit: int | None, rng: np.random.Generator):
    """(benign names, list names per benign name, families, held-out benign, files)."""
    files = {}
    src: dict[str, set[str]] = {}
    for rel, col, short in POPULAR:
        p = root / rel
        if not p.is_file():
            continue
        for n in read_names(p, column=col):
            src.setdefault(n, set()).add(short)
        files[rel] = sha256(p)
    benign = list(src)
    fams: dict[str, list[str]] = {}
    for f in sorted((root / "dga/families").glob("*.txt")):
        names = read_names(f)
        if not names:
            continue
        fams[f.stem] = names
        files[str(f.relative_to(root))] = sha256(f)
    bset = set(benign)
    held = {}
    for rel, col in (("benign/opendns-random-domains.txt", None), ("benign/ndpi_test_non_dga.csv", None)):
        p = root / rel
        if p.is_file():
            held[rel] = [n for n in read_names(p, col) if n not in bset]
            files[rel + " (held-out evaluation only)"] = sha256(p)
    if limit:
        benign = [benign[i] for i in sorted(rng.permutation(len(benign))[: limit * 10])]
        fams = {k: v[:limit] for k, v in fams.items()}
        held = {k: v[: limit * 3] for k, v in held.items()}
    lists = [src[b] for b in benign]
    return benign, lists, fams, held, files


def weights(y: np.ndarray, fam_idx: np.ndarray) -> np.ndarray:
    """Benign weighs BENIGN_WEIGHT times all DGA together (false positives are what
    a threshold at FPR 1e-4 is about); each family about the same within DGA."""
    w = np.ones(len(y))
    nb = max((y == 0).sum(), 1)
    w[y == 0] = 1.0 / nb
    fams = np.unique(fam_idx[y == 1])
    for f in fams:
        sel = fam_idx == f
        w[sel] = 1.0 / (len(fams) * max(sel.sum(), 200))
    d = w[y == 1].sum()
    if d:
        w[y == 1] /= d
    w[y == 0] *= BENIGN_WEIGHT
    return w * len(y) / w.sum()


def tpr_at(neg: np.ndarray, pos: np.ndarray, fpr: float) -> tuple[float, float]:
    """TPR at the threshold whose FPR on ``neg`` is at most ``fpr``; (tpr, threshold)."""
    t = threshold_for(neg, fpr)
    return float((pos >= t).mean()) if len(pos) else float("nan"), t


def threshold_for(neg: np.ndarray, fpr: float) -> float:
    s = np.sort(neg)[::-1]
    k = int(np.floor(fpr * len(s)))
    if k >= len(s):
        return 0.0
    return float(np.nextafter(np.float64(s[k]), 2.0))


def build(names, y, fam_idx, seed, benign_labels=None) -> DgaModel:
    m = DgaModel(seed=seed)
    m.fit(names, y, sample_weight=weights(y, fam_idx), benign_labels=benign_labels, groups=fam_idx)
    return m


def evaluate(benign, lists, fams, held, seed, log=print) -> tuple[dict, np.ndarray]:
    """Leave-family-out scores and metrics. Returns (metrics, out-of-fold benign scores)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    fam_names = sorted(fams)
    order = rng.permutation(len(fam_names))
    fam_fold = {fam_names[j]: i % FOLDS for i, j in enumerate(order)}
    ben_fold = rng.integers(0, FOLDS, len(benign))
    oof_b = np.zeros(len(benign))
    oof_f: dict[str, np.ndarray] = {}
    held_scores = {k: [] for k in held}
    for k in range(FOLDS):
        t0 = time.time()
        tr_names = [b for b, f in zip(benign, ben_fold) if f != k]
        tr_y = [0] * len(tr_names)
        tr_fam = [-1] * len(tr_names)
        for fi, fam in enumerate(fam_names):
            if fam_fold[fam] != k:
                tr_names += fams[fam]
                tr_y += [1] * len(fams[fam])
                tr_fam += [fi] * len(fams[fam])
        m = build(tr_names, np.array(tr_y), np.array(tr_fam), seed)
        te = [b for b, f in zip(benign, ben_fold) if f == k]
        oof_b[ben_fold == k] = m.predict_proba(te)[:, 1]
        for fam in fam_names:
            if fam_fold[fam] == k:
                oof_f[fam] = m.predict_proba(fams[fam])[:, 1]
        for h, names in held.items():
            held_scores[h].append(m.predict_proba(names)[:, 1])
        log(f"fold {k + 1}/{FOLDS}: held out {sorted(f for f in fam_names if fam_fold[f] == k)} "
            f"({time.time() - t0:.1f}s)")
    thr = threshold_for(oof_b, TARGET_FPR)
    storm = threshold_for(oof_b, STORM_FPR)
    pos = np.concatenate([oof_f[f] for f in fam_names])
    y = np.r_[np.zeros(len(oof_b)), np.ones(len(pos))]
    s = np.r_[oof_b, pos]
    met = {
        "folds": FOLDS, "seed": seed,
        "n_benign_popular": len(benign), "n_dga": int(len(pos)), "n_families": len(fam_names),
        "threshold": thr,
        "single_threshold": threshold_for(oof_b, 0.0),
        "auc": float(roc_auc_score(y, s)),
        "tpr_at_fpr_1e-3": tpr_at(oof_b, pos, 1e-3)[0],
        "tpr_at_fpr_1e-4": tpr_at(oof_b, pos, 1e-4)[0],
        "fpr_popular_at_threshold": float((oof_b >= thr).mean()),
        "storm_threshold": storm,
        "fpr_popular_at_storm_threshold": float((oof_b >= storm).mean()),
        "groups": {}, "families": {}, "heldout_benign": {},
    }
    for g in ("random", "pseudo-word", "dictionary"):
        gp = [oof_f[f] for f in fam_names if kind_of(f) == g]
        if not gp:
            continue
        gp = np.concatenate(gp)
        yy = np.r_[np.zeros(len(oof_b)), np.ones(len(gp))]
        met["groups"][g] = {
            "n": int(len(gp)),
            "auc": float(roc_auc_score(yy, np.r_[oof_b, gp])),
            "tpr_at_fpr_1e-3": tpr_at(oof_b, gp, 1e-3)[0],
            "tpr_at_fpr_1e-4": tpr_at(oof_b, gp, 1e-4)[0],
            "recall_at_threshold": float((gp >= thr).mean()),
            "recall_at_storm_threshold": float((gp >= storm).mean()),
        }
    for f in fam_names:
        met["families"][f] = {"kind": kind_of(f), "n": len(fams[f]), "fold": fam_fold[f],
                              "recall": float((oof_f[f] >= thr).mean())}
    for h, parts in held_scores.items():
        sc = np.mean(parts, axis=0) if parts else np.zeros(0)
        met["heldout_benign"][h] = {"n": int(len(sc)), "fpr_lofo_models": float((sc >= thr).mean()) if len(sc) else 0.0}
    met["leave_list_out"] = leave_list_out(benign, lists, fams, seed,
                                           {"threshold": thr, "storm": storm,
                                            "single": met["single_threshold"]}, log)
    return met, oof_b


def leave_list_out(benign, lists, fams, seed, thresholds: dict, log=print) -> dict:
    """Per popular list L: train without L, measure the FPR on L's own names."""
    out = {}
    fam_names = sorted(fams)
    for short in LEAVE_LIST_OUT:
        held = [b for b, ls in zip(benign, lists) if ls == {short}]
        if not held:
            continue
        t0 = time.time()
        tr = [b for b, ls in zip(benign, lists) if short not in ls]
        names, y, fi = list(tr), [0] * len(tr), [-1] * len(tr)
        for i, fam in enumerate(fam_names):
            names += fams[fam]
            y += [1] * len(fams[fam])
            fi += [i] * len(fams[fam])
        m = build(names, np.array(y), np.array(fi), seed)
        sc = m.predict_proba(held)[:, 1]
        worst = [held[i] for i in np.argsort(-sc)[:5]]
        out[short] = {"n": len(held), "top_scored": worst,
                      **{f"fpr_at_{k}": float((sc >= t).mean()) for k, t in thresholds.items()}}
        log(f"leave-list-out {short}: {len(held)} names only in it, FPR {out[short]['fpr_at_threshold']:.2e} "
            f"at the threshold ({time.time() - t0:.1f}s)")
    return out


def table(met: dict) -> str:
    """The evaluation as a Markdown table (models/README.md, `detector eval dga`)."""
    L = []
    L.append(f"Leave-family-out ({met['folds']} grouped folds, seed {met['seed']}): "
             f"{met['n_dga']} DGA names from {met['n_families']} families, "
             f"{met['n_benign_popular']} popular benign names. Default threshold {met['threshold']:.4f}.")
    L.append("")
    st = met.get("storm_threshold", float("nan"))
    L.append(f"| set | n | ROC AUC | TPR @ FPR 1e-3 | TPR @ FPR 1e-4 | recall @ threshold | "
             f"recall @ storm threshold {st:.4f} (NXDOMAIN names) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    L.append(f"| all unseen families | {met['n_dga']} | {met['auc']:.4f} | {met['tpr_at_fpr_1e-3']:.3f} | "
             f"{met['tpr_at_fpr_1e-4']:.3f} | | |")
    for g, v in met["groups"].items():
        L.append(f"| {g} families | {v['n']} | {v['auc']:.4f} | {v['tpr_at_fpr_1e-3']:.3f} | "
                 f"{v['tpr_at_fpr_1e-4']:.3f} | {v['recall_at_threshold']:.3f} | "
                 f"{v.get('recall_at_storm_threshold', float('nan')):.3f} |")
    L.append("")
    L.append("| benign set | n | FPR at threshold |")
    L.append("| --- | ---: | ---: |")
    L.append(f"| popular, all four lists (out-of-fold) | {met['n_benign_popular']} | "
             f"{met['fpr_popular_at_threshold']:.2e} |")
    if "fpr_popular_at_storm_threshold" in met:
        L.append(f"| popular, at the storm threshold (out-of-fold) | {met['n_benign_popular']} | "
                 f"{met['fpr_popular_at_storm_threshold']:.2e} |")
    for h, v in met["heldout_benign"].items():
        L.append(f"| {h} (never trained on; leave-family-out models) | {v['n']} | {v['fpr_lofo_models']:.2e} |")
    for h, v in met.get("heldout_benign_final", {}).items():
        L.append(f"| {h} (shipped model) | {v['n']} | {v['fpr']:.2e} |")
    llo = met.get("leave_list_out") or {}
    if llo:
        L.append("")
        L.append("Leave-list-out: a model trained without the list, scored on the names only that list holds, "
                 "at the thresholds above.")
        L.append("")
        L.append("| list left out | n | FPR @ threshold | FPR @ storm threshold | FPR @ single-name threshold "
                 "| highest-scored names |")
        L.append("| --- | ---: | ---: | ---: | ---: | --- |")
        for h, v in llo.items():
            L.append(f"| {h} | {v['n']} | {v['fpr_at_threshold']:.2e} | {v['fpr_at_storm']:.2e} | "
                     f"{v['fpr_at_single']:.2e} | {', '.join(v['top_scored'][:3])} |")
    L.append("")
    L.append("| family | kind | n | recall @ threshold (unseen) |")
    L.append("| --- | --- | ---: | ---: |")
    for f, v in sorted(met["families"].items(), key=lambda kv: (kv[1]["kind"], kv[0])):
        L.append(f"| {f} | {v['kind']} | {v['n']} | {v['recall']:.3f} |")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=HERE / "dga.joblib", help="artefact path")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--limit", type=int, default=0, metavar="N",
                    help="at most N names per family (and 10N benign): a quick run")
    ap.add_argument("--no-eval", action="store_true", help="skip the leave-family-out evaluation")
    ap.add_argument("--eval-only", action="store_true", help="evaluate, write nothing")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite models/README.md")
    a = ap.parse_args(argv)
    root = a.data or shared_data()
    if not (root / "dga/families").is_dir():
        print(f"train.py: no DGA data under {root} (set --data or DETECTOR_SHARED_DATA)", file=sys.stderr)
        return 2
    log = (lambda *x: print(*x, file=sys.stderr))
    t0 = time.time()
    rng = np.random.default_rng(a.seed)
    benign, lists, fams, held, files = load_data(root, a.limit or None, rng)
    log(f"data: {len(benign)} popular benign, {sum(map(len, fams.values()))} DGA in {len(fams)} families")
    met = {}
    if not a.no_eval:
        met, _ = evaluate(benign, lists, fams, held, a.seed, log)
    if a.eval_only:
        print(json.dumps(met, indent=2) if a.json else table(met))
        return 0
    names = list(benign)
    y = [0] * len(benign)
    fi = [-1] * len(benign)
    for i, fam in enumerate(sorted(fams)):
        names += fams[fam]
        y += [1] * len(fams[fam])
        fi += [i] * len(fams[fam])
    m = build(names, np.array(y), np.array(fi), a.seed)
    if "folds" in met:
        m.threshold = met["threshold"]
        m.single_threshold = max(met["single_threshold"], m.threshold)
        m.storm_threshold = min(met["storm_threshold"], m.threshold)
        met["heldout_benign_final"] = {
            h: {"n": len(v), "fpr": float((m.predict_proba(v)[:, 1] >= m.threshold).mean()) if v else 0.0}
            for h, v in held.items()}
    else:
        m.threshold = 0.99
    met["train_seconds"] = round(time.time() - t0, 1)
    m.metadata = {"training_files": files, "limit": a.limit or None, "metrics": met,
                  "n_train": len(names), "dictionary_families": list(DICTIONARY),
                  "n_words": len(m.tables.words)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    m.save(a.out)
    log(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")
    if "folds" in met and not a.no_readme and not a.limit and a.out.resolve() == (HERE / "dga.joblib").resolve():
        write_readme(met)
    if a.json:
        print(json.dumps(met, indent=2))
    elif "folds" in met:
        print(table(met))
    return 0


def write_readme(met: dict) -> None:
    text = f"""# models/

`dga.joblib` is the DGA model used by the `dga` detector and `detector score`;
`dga.metadata.json` records its feature version, scikit-learn version, seed,
training files with sha256 and the metrics below. Rebuild both (and this file)
with one command, about {met.get('train_seconds', 0):.0f} s on one core:

    .venv/bin/python models/train.py

The model scores the registered label (`example` in `www.example.co.uk`; the
label below a dynamic-DNS parent such as `duckdns.org`). It is a
HistGradientBoosting forest over {F.NF} features
(`detector/detect/dga/features.py`, FEATURE_VERSION {F.FEATURE_VERSION}):

- `ngram_lr`: the logit of a logistic regression over hashed character 1- to
  5-grams of the label (2^{F.NG_BITS} buckets), trained on the same names; the
  forest is trained on its *out-of-fold* logits (inner folds that hold each
  family out), so it learns how the n-gram model behaves on families it never
  saw;
- length, entropy, vowel/consonant/digit ratios and runs, hex-ness;
- character 2-/3-gram log-likelihood against the benign training labels
  (also out-of-fold in training: a training name's own n-grams must not make
  it look benign, or the forest learns a contrast unseen names lack);
- dictionary-word segmentation coverage against a word list made of the most
  frequent English words (the `wordsegment` package's counts from the Google
  Web Trillion Word Corpus, training only) that recur in benign names;
- subdomain depth and length.

No feature sees the top-level domain: a whole TLD (.xyz, .top, .app) never
makes a name suspicious. Benign training data mixes popular lists of 2015,
2022 and 2026, so no year's naming fashion is "benign" by itself. The n-gram
weights, tables and word list are stored in the artefact; loading refuses an
artefact built for another feature version (exit 14).

Single names are only part of the evidence. The `dga` detector alerts per
host on a campaign of non-prevalent NXDOMAIN names (rules/dga.yaml); the
single-name threshold below is for names that need no campaign.

## Leave-family-out evaluation (`detector eval dga`)

{table(met)}

Kinds: *dictionary* families ({", ".join(DICTIONARY)}) concatenate English
words; *pseudo-word* families ({", ".join(PSEUDO)}) use syllables, fixed stems
or encodings; all others draw random characters.
"""
    (HERE / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
