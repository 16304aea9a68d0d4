"""What the benchmarks share: where captures are cached, the command that runs
the detector, and the site allowlist a capture's own resolvers go in."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"


def detector_command() -> list[str]:
    """This checkout's installed `detector`, else `python -m detector`."""
    exe = REPO / ".venv" / "bin" / "detector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


def cached_capture(name: str, build: Callable[..., None], *args) -> Path:
    """bench/out/NAME, built once by ``build(path, *args)``."""
    OUT.mkdir(parents=True, exist_ok=True)
    cap = OUT / name
    if not cap.exists():
        t = time.perf_counter()
        build(cap, *args)
        print(f"built {cap} ({cap.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
    return cap


def site_rules(name: str, resolvers: list[str]) -> list[str]:
    """--rules for every shipped rule plus an allowlist of the capture's resolvers (the
    site's, as a deployment would list them)."""
    allow = OUT / f"{name}-allowlist.yaml"
    allow.write_text(f"kind: allowlist\nresolvers: [{', '.join(resolvers)}]\n")
    return ["--rules", str(REPO / "rules"), "--rules", str(allow)]



