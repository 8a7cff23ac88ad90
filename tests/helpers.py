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


def one_cell_suite(path: Path, model: str, loader: str, name: str = "contract", batch_size: int = 8,
                   tables: str = "") -> Path:
    """A one-cell CPU suite of ``model`` and ``loader`` on the torch backend in fp32, 16 px, 1 epoch; ``tables``
    (TOML) is appended."""
    return write_suite(path, f"""
name = "{name}"
epochs = 1
image_size = 16
device = "cpu"
recipe = {{ base = "default", batch_size = {batch_size} }}

[matrix]
model = ["{model}"]
loader = ["{loader}"]
backend = ["torch"]
precision = ["fp32"]
{tables}""")
