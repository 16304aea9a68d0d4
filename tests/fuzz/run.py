"""Run one fuzz target with atheris (coverage-guided, libFuzzer):

    .venv/bin/python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS_DIR...]
    .venv/bin/python -m tests.fuzz.run wire -max_total_time=60 .fuzz-corpus/wire tests/fuzz/seeds/wire

The first corpus folder receives the new inputs; tests/fuzz/seeds/<target>
holds the seeds kept in the repository (written by tests/fuzz/seeds.py).
A crash leaves ``crash-<sha1>`` in the working folder; replay it with
``python -m tests.fuzz.run TARGET crash-<sha1>``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["detector"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer args]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
