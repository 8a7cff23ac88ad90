"""Helpers for tests that drive the real ``harness`` command line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from harness.testing import run_harness

#: :func:`harness.testing.run_harness` with a 15-minute default timeout, under the name tests/test_runner.py and
#: tests/test_environments.py import; other tests call ``run_harness`` itself.
harness = partial(run_harness, timeout=900)


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
