"""Where pocketlm finds data and keeps artifacts; every location is overridable by an environment variable.

This module imports nothing heavy: the torch-free serving path reads it too.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout that holds `pocketlm/`, `model_cards/`, `training_scripts/`..."""


def data_dir() -> Path:
    """The local data mirror: `POCKETLM_DATA_DIR`, else `../shared/data` beside the checkout (read-only)."""
    return Path(os.environ.get("POCKETLM_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).expanduser()


def hub_dir() -> Path:
    """The local hub folder where artifacts are published: `POCKETLM_HUB_DIR`, else `hub/` in the checkout."""
    return Path(os.environ.get("POCKETLM_HUB_DIR", REPO_ROOT / "hub")).expanduser()


def runs_dir() -> Path:
    """Scratch space for training runs (checkpoints, logs): `POCKETLM_RUNS_DIR`, else `runs/` in the checkout."""
    return Path(os.environ.get("POCKETLM_RUNS_DIR", REPO_ROOT / "runs")).expanduser()


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (`HF_HUB_OFFLINE=1`, as in tests and CI)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
