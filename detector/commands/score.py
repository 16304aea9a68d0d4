"""`detector score [FILE...]`: DGA score of domain names, one JSON object per line.

Reads names one per line from the files (or stdin), scores them in batches
with the shipped model, and writes for each input line one JSON object; the
shipped model says, for example:

@EXAMPLE@

Names the detector never scores (reverse lookups, .local, single labels,
_tcp. service names) get ``dga_score`` 0 and an ``excluded`` reason. Repeated
names are answered from a cache. Blank lines and ``#`` comments are skipped;
bytes that are not UTF-8 are replaced (U+FFFD), and such names score as given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Iterator

from detector import errors
from detector.errors import DetectorError

CHUNK = 32768
_CACHE_MAX = 1 << 20


#: names for the help's example; their scores come from the shipped model when
#: the help is shown, so the example never goes stale (tests/test_cli.py checks it)
EXAMPLE_NAMES = ("bpujwsmplvftnqcx.ru", "wikipedia.org", "1.0.0.127.in-addr.arpa")

EPILOG = """\
examples:
  echo bpujwsmplvftnqcx.ru | detector score
  detector score names.txt -o scores.jsonl --top 0
  detector score tranco.csv --threshold 0.9 | jq -r 'select(.dga_alert) | .domain'

-o FILE is truncated first. exit codes: 0 ok, 2 an input file cannot be read,
5 output failed (the message says after how many names), 14 model missing or
built for another feature version
"""


def example_text(model_path: str | None = None) -> str:
    """The example of the help: EXAMPLE_NAMES scored by the shipped model, as
    `detector score` prints them (indented)."""
    try:
        from detector.detect.dga.model import DgaModel

        sc = Scorer(DgaModel.load(model_path))
        lines = sc.lines(list(EXAMPLE_NAMES))
    except Exception as e:  # noqa: BLE001  the help must show even without a model
        return f"    (no example: the model cannot be loaded: {e})"
    return "\n".join(f"    $ echo {n} | detector score\n    {line}" for n, line in zip(EXAMPLE_NAMES, lines))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills @EXAMPLE@ when the help is shown, not when the parser is built
    (every command builds every parser; loading the model costs a second)."""

    def add_text(self, text):  # noqa: ANN001
        if text and "@EXAMPLE@" in text:
            text = text.replace("@EXAMPLE@", example_text())
        super().add_text(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="DGA score of domain names (one per line)",
                       description=__doc__, epilog=EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="files of names, one per line (default: stdin)")
    p.add_argument("--model", metavar="PATH", help="model artefact (default models/dga.joblib)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="alert threshold (default: the model's, chosen for FPR <= 1e-4 on popular names)")
    p.add_argument("-o", "--output", default="-", metavar="-|FILE", help="where to write (default stdout)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="top features per name (default 3)")
    p.set_defaults(func=run)


_BLOCK = 1 << 20  # bytes read at a time


def _blocks(files: list[str]) -> Iterator[bytes]:
    """The input in blocks of whole lines (the last one may lack its newline)."""
    streams = [None] if not files else files
    for f in streams:
        if f is None:
            fh = sys.stdin.buffer
        else:
            try:
                fh = open(f, "rb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise DetectorError(f"{f}: cannot read: {e.strerror}", errors.USAGE) from None
        try:
            tail = b""
            while True:
                b = fh.read(_BLOCK)
                if not b:
                    break
                cut = b.rfind(b"\n")
                if cut < 0:
                    tail += b
                    continue
                yield tail + b[: cut + 1]
                tail = b[cut + 1:]
            if tail:
                yield tail
        finally:
            if f is not None:
                fh.close()


def _names(block: bytes) -> list[str]:
    """The names of a block of lines: stripped, no trailing dot, lower case;
    blank lines and # comments skipped, "rank,domain" lines give the domain.
    A newline never ends inside a UTF-8 sequence, so decoding the block at
    once replaces the same bytes as decoding line by line."""
    if block.isascii():
        text = block.decode("ascii").lower()  # ASCII: the same as lower() per line
        out = [n for x in text.split("\n") if (n := x.strip().rstrip("."))]
    else:
        out = [n for x in block.decode("utf-8", "replace").split("\n") if (n := x.strip().rstrip(".").lower())]
    if b"#" in block or b"," in block:
        keep = []
        for n in out:
            if n.startswith("#"):
                continue
            if "," in n and n.split(",", 1)[0].isdigit():  # "rank,domain" lists
                n = n.split(",", 1)[1].strip()
            keep.append(n)
        out = keep
    return out


def _chunks(files: list[str]) -> Iterator[list[str]]:
    buf: list[str] = []
    for block in _blocks(files):
        buf += _names(block)
        while len(buf) >= CHUNK:
            yield buf[:CHUNK]
            del buf[:CHUNK]
    if buf:
        yield buf


class Scorer:
    """Batch scorer producing ready JSON lines, with a bounded cache of lines."""

    def __init__(self, model, threshold: float | None = None, top: int = 3) -> None:
        from detector.detect.dga import _LOCAL_SUFFIXES, excluded

        self.model = model
        self.threshold = model.threshold if threshold is None else threshold
        self.top = max(0, top)
        self.excluded = excluded
        self.maybe_excluded = (".arpa",) + _LOCAL_SUFFIXES
        self.cache: dict[str, str] = {}
        self.unique = 0

    def lines(self, names: list[str]) -> list[str]:
        import numpy as np

        cache = self.cache
        new = {n: None for n in names if n not in cache}  # this batch's new names, in order
        if not new:
            return list(map(cache.__getitem__, names))
        self.unique += len(new)
        excl = self.excluded
        dumps = json.dumps
        maybe = self.maybe_excluded
        # the cheap common case first: a dotted name with no local suffix or underscore
        score_names = [n for n in new if "." in n and "_" not in n and not n.endswith(maybe)]
        if len(score_names) < len(new):
            quick = set(score_names)
            for n in new:
                if n in quick:
                    continue
                why = excl(n)
                if why is None:
                    score_names.append(n)
                else:
                    new[n] = (f'{{"domain":{dumps(n)},"dga_score":0.0,"dga_alert":false,'
                              f'"excluded":"{why}","top_features":{{}}}}')
        if score_names:
            self._score(score_names, np, new)
        # a batch of names all new (the usual case) needs no look-up per name
        out = list(new.values()) if len(new) == len(names) else [new.get(n) or cache[n] for n in names]
        if len(cache) + len(new) > _CACHE_MAX:
            cache.clear()
        cache.update(new)
        return out

    def _score(self, names: list[str], np, dst: dict[str, str]) -> None:
        """The lines of ``names`` (scored names) into ``dst``."""
        from detector.detect.dga import features as F

        m = self.model
        X = m.features(names)
        p = m.proba_from_features(X)
        fast = getattr(F._cdga, "lines", None)
        if fast is not None and X.dtype == m.center.dtype == m.scale.dtype == np.float32:
            # the lines in C; the few it leaves (None: a name to escape, say) below
            out = fast(names, np.ascontiguousarray(p, np.float64), np.ascontiguousarray(X),
                       np.ascontiguousarray(m.center), np.ascontiguousarray(m.scale),
                       float(self.threshold), self.top, F.FEATURES)
            dst.update(zip(names, out))
            if None not in out:
                return
            rest = [i for i, line in enumerate(out) if line is None]
            names = [names[i] for i in rest]
            X, p = X[rest], p[rest]
        self._score_py(names, X, p.tolist(), np, dst)

    def _score_py(self, names: list[str], X, p: list[float], np, dst: dict[str, str] | None = None) -> None:
        """The lines by orjson (the reference of ``_cdga.lines``), into ``dst``
        (default: the cache)."""
        import orjson

        from detector.detect.dga.features import FEATURES

        m = self.model
        thr = self.threshold
        k = self.top
        fn = FEATURES
        cache = self.cache if dst is None else dst
        dumps = orjson.dumps
        if k:
            z = np.abs((X - m.center) / m.scale)
            top = np.argsort(-z, axis=1, kind="stable")[:, :k]
            vals = np.take_along_axis(X, top, 1).astype(np.float64).round(3).tolist()
            top = top.tolist()
            for n, s, t, v in zip(names, p, top, vals):
                cache[n] = dumps({"domain": n, "dga_score": round(s, 4), "dga_alert": s >= thr,
                                  "top_features": {fn[j]: x for j, x in zip(t, v)}}).decode()
        else:
            for n, s in zip(names, p):
                cache[n] = dumps({"domain": n, "dga_score": round(s, 4), "dga_alert": s >= thr,
                                  "top_features": {}}).decode()


def run(args: argparse.Namespace) -> int:
    from detector.detect.dga.model import DgaModel
    from detector.sinks.stream import _open_reason

    model = DgaModel.load(args.model)
    sc = Scorer(model, args.threshold, args.top)
    # the modules and the model stay for the whole run: the collector need not
    # walk them again and again while the batches allocate (about 5% of a run)
    gc.freeze()
    if args.output == "-":
        if sys.stdout is None:  # started with fd 1 closed
            raise DetectorError("stdout is closed: nowhere to write (give -o FILE)", errors.SINK)
        sys.stdout.flush()
        fd, where = sys.stdout.fileno(), "stdout"
    else:
        where = f"-o {args.output}"
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DetectorError(f"{where}: cannot write: {_open_reason(args.output, e)}", errors.SINK) from None
    written = 0
    try:
        for chunk in _chunks(args.files):
            data = ("\n".join(sc.lines(chunk)) + "\n").encode()
            done = 0
            try:
                while done < len(data):
                    done += os.write(fd, memoryview(data)[done:])
            except BrokenPipeError:
                raise
            except OSError as e:
                written += data[:done].count(b"\n")
                raise DetectorError(f"{where}: write failed after {written:,} scores: {e.strerror or e}; "
                                    "the rest are not written", errors.SINK) from None
            written += len(chunk)
    finally:
        if args.output != "-":
            os.close(fd)
    return errors.OK
