#!/usr/bin/env python3
"""Benchmark `detector score` in batch: unique domains per second and peak RSS.

Builds a file of N unique real names (benign lists + DGA families from
../shared/data, topped up with DGA-like and word-compound variants when the
lists run out), then times the real command line on it, once as given and
once with every name repeated (the cache path). As a peer, the same run times
`sort -u` on the same file so the ratio means something on this machine.

    .venv/bin/python bench/dga_score.py [--n 300000]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from detector.paths import shared_data  # noqa: E402

TARGET = 200_000


def names(n: int, seed: int = 1) -> list[str]:
    d = shared_data()
    out: list[str] = []
    for line in (d / "benign/alexa_top100k_2015.csv").read_text().splitlines():
        out.append(line.split(",", 1)[-1].strip().lower())
    for f in ("benign/opendns-top-domains.txt", "benign/opendns-random-domains.txt",
              "benign/ndpi_test_non_dga.csv"):
        out += [x.strip().lower() for x in (d / f).read_text(errors="replace").splitlines()]
    for f in sorted((d / "dga/families").glob("*.txt")):
        out += [x.strip().lower() for x in f.read_text().splitlines()]
    for f in sorted((d / "dga/generated_andrewaeva").glob("*.txt")):
        out += [x.strip().lower().split(",")[0] for x in f.read_text(errors="replace").splitlines()[:50000]]
    out = [x for x in dict.fromkeys(out) if x and "." in x]
    rnd = random.Random(seed)
    rnd.shuffle(out)
    if len(out) < n:  # top up with subdomains of real names
        base = list(out)
        i = 0
        while len(out) < n:
            out.append(f"w{i}.{base[i % len(base)]}")
            i += 1
    return out[:n]


def run(cmd: list[str], stdin_path: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    with open(stdin_path, "rb") as fi:
        r = subprocess.run(cmd, stdin=fi, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {r.stderr.decode()[-500:]}")
    return dt, max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="unique names (default 300000)")
    a = ap.parse_args()
    env_py = [sys.executable, "-m", "detector", "score"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "names.txt"
        ns = names(a.n)
        f.write_text("\n".join(ns) + "\n")
        rep = Path(tmp) / "repeated.txt"
        rep.write_text("\n".join(ns[: a.n // 10] * 10) + "\n")
        # start-up (model load, imports) measured separately
        empty = Path(tmp) / "empty.txt"
        empty.write_text("example.com\n")
        t0, _ = run(env_py, empty)
        t1, rss = run(env_py, f)
        t2, rss2 = run(env_py, rep)
        tp, _ = run(["sort", "-u"], f)
    rate = len(ns) / max(t1 - t0, 1e-9)
    print(f"names: {len(ns)} unique; start-up (imports + model load) {t0:.2f}s")
    print(f"detector score: {t1:.2f}s wall, {rate:,.0f} unique domains/s excluding start-up "
          f"({len(ns) / t1:,.0f}/s including it); peak RSS {rss / 1024:.0f} MiB")
    print(f"repeated names (10x each of {a.n // 10}): {len(ns) / max(t2 - t0, 1e-9):,.0f} lines/s; "
          f"peak RSS {rss2 / 1024:.0f} MiB")
    print(f"peer: sort -u on the same file {tp:.2f}s; detector score / sort -u time ratio {t1 / tp:.1f}x")
    print(f"target >= {TARGET:,} unique/s on one core: {'MET' if rate >= TARGET else 'MISSED'} "
          f"({rate / TARGET:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
