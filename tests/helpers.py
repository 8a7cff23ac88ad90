"""Helpers for tests that drive the real ``harness`` command line."""

from __future__ import annotations

import os
import shlex
from functools import partial
from pathlib import Path

from harness.testing import run_harness

#: :func:`harness.testing.run_harness` with a 15-minute default timeout, under the name tests/test_runner.py and
#: tests/test_environments.py import; other tests call ``run_harness`` itself.
harness = partial(run_harness, timeout=900)


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


class CreatesFile:
    """A pickle that creates ``marker`` when unpickled, as a hostile checkpoint would run any command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant_code(path: Path, marker: Path) -> None:
    """Replace the checkpoint file ``path`` with a pickle that creates ``marker`` when loaded, after checking
    here that loading it unsafely does create it (the payload is live)."""
    import torch

    torch.save(CreatesFile(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the planted payload did not run when loaded unsafely"
    marker.unlink()


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
