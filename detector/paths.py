"""Where the project's files are: rules/, models/, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(__file__).resolve().parent


def shared_data() -> Path:
    """The real-data folder (../shared/data beside the checkout), or $DETECTOR_SHARED_DATA."""
    env = os.environ.get("DETECTOR_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


def models_dir() -> Path:
    env = os.environ.get("DETECTOR_MODELS")
    return Path(env) if env else REPO / "models"


def bundled(name: str) -> Path:
    """A file shipped inside the package (detector/data/)."""
    return PACKAGE / "data" / name
