"""`detector eval dga`: leave-family-out and leave-list-out evaluation of the DGA model.

Each DGA family is scored by a model trained without it (families in grouped
folds), benign popular names by a model that never saw them; the table gives
ROC AUC, TPR at FPR 1e-3 and 1e-4, per-family recall at the default threshold,
and FPR on benign lists never used in training. Leave-list-out: for each
popular list (Tranco 2026, Tranco 2022, Alexa 2015) a model trained without it
is scored on the names only that list holds, at the shipped thresholds: the
false alerts another year's traffic would see. The evaluation code is the
training script's (models/train.py), so the table is the one in models/README.md.
``--stored`` prints the figures recorded in the shipped artefact instead of
recomputing them (about 2 minutes on one core).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from detector import errors
from detector.errors import DetectorError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model (dga: leave-family-out, leave-list-out)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  detector eval dga --stored         the figures recorded in the shipped model\n"
                       "  detector eval dga --limit 500      a quick recomputation\n"
                       "  detector eval dga --json | jq .families\n\n"
                       "exit codes: 0 ok, 2 no shared data folder, 14 model or training script missing")
    p.add_argument("what", choices=("dga",), help="what to evaluate")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--stored", action="store_true",
                   help="print the metrics stored in the model artefact (no recomputation)")
    p.add_argument("--model", metavar="PATH", help="artefact for --stored (default models/dga.joblib)")
    p.add_argument("--data", metavar="DIR", help="shared data folder (default ../shared/data)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N names per family (quick)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the training script's)")
    p.set_defaults(func=run)


def _train_module():
    from detector.paths import REPO

    path = REPO / "models" / "train.py"
    if not path.is_file():
        raise DetectorError(f"{path}: the training script is missing", errors.MODEL,
                            "run from a checkout of the project, or use --stored")
    spec = importlib.util.spec_from_file_location("detector_models_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(args: argparse.Namespace) -> int:
    train = _train_module()
    if args.stored:
        from detector.detect.dga.model import DgaModel

        met = DgaModel.load(args.model).metadata.get("metrics")
        if not met:
            raise DetectorError("the model artefact records no evaluation metrics", errors.MODEL,
                                "rebuild it with `python models/train.py` (without --no-eval)")
    else:
        import numpy as np

        from detector.paths import shared_data

        root = Path(args.data) if args.data else shared_data()
        if not (root / "dga" / "families").is_dir():
            raise DetectorError(f"{root}: no dga/families folder here", errors.USAGE,
                                "point --data (or DETECTOR_SHARED_DATA) at the shared data folder")
        seed = train.SEED if args.seed is None else args.seed
        benign, lists, fams, held, _ = train.load_data(root, args.limit or None, np.random.default_rng(seed))
        log = (lambda *a: print(*a, file=sys.stderr)) if sys.stderr.isatty() else (lambda *a: None)
        met, _ = train.evaluate(benign, lists, fams, held, seed, log)
    if args.json:
        print(json.dumps(met, indent=2, sort_keys=True))
    else:
        print(train.table(met))
    return errors.OK
