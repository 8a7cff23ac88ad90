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
        missing = f"flowers photos not found at {PHOTOS} (set HARNESS_FLOWERS)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must test on the real photos", pytrace=False)
        pytest.skip(missing)
    return PHOTOS

