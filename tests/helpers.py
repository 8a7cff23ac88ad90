"""Helpers for tests that drive the real ``harness`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def harness(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real ``harness`` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
