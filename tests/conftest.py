"""Shared fixtures: the real flowers photos, and helpers to run the harness for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("HARNESS_FLOWERS", REPO.parent / "shared" / "data" / "flower_photos"))


@pytest.fixture(scope="session")
def photos() -> Path:
    if not (PHOTOS / "daisy").is_dir():
        pytest.skip(f"flowers photos not found at {PHOTOS} (set HARNESS_FLOWERS)")
    return PHOTOS

