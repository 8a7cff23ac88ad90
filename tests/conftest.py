"""Shared fixtures: the real flowers photos, and helpers to run the harness for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("HARNESS_FLOWERS", REPO.parent / "shared" / "data" / "flower_photos"))


@pytest.fixture(scope="session")
def photos() -> Path:
    if not (PHOTOS / "daisy").is_dir():
        pytest.skip(f"flowers photos not found at {PHOTOS} (set HARNESS_FLOWERS)")
    return PHOTOS


def harness(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real ``harness`` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
