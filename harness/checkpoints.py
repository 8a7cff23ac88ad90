"""Checkpoints are untrusted input (they travel with result folders between machines): read as weights only.

A pickle can run code when it is loaded. ``torch.load(weights_only=True)`` unpickles tensors, containers and
numbers only and refuses anything else; :func:`load_weights` does that, and :func:`weights_only` makes every
``torch.load`` inside it do the same, for libraries that load checkpoints themselves (Colossal-AI's Booster
calls ``torch.load`` without ``weights_only``, which torch 2.5 takes as False). Either raises
:class:`UnsafeCheckpoint`, one line naming the file, instead of running what the file holds.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: torch reads this at every ``torch.load`` call (torch 2.4 and later): set, every load is weights-only.
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file holds more than weights (loading it could run code); it was not loaded."""


def refusal(path: Path, exc: pickle.UnpicklingError) -> UnsafeCheckpoint:
    """torch's multi-line refusal as one line naming ``path`` and what the file asked to load."""
    found = re.search(r"(unsupported [^\n]*)", str(exc), re.IGNORECASE)
    what = found.group(1).rstrip(".") if found else "not weights only"
    return UnsafeCheckpoint(f"{path}: refused, it holds more than weights ({what}) and loading it could run code; "
                            "delete the cell's checkpoint.pt to start the cell over")


def load_weights(path: Path, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``; :class:`UnsafeCheckpoint` when the file holds more than weights."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refusal(path, exc) from None


@contextmanager
def weights_only(path: Path) -> Iterator[None]:
    """Every ``torch.load`` inside reads weights only, whoever calls it; a refusal names ``path``."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise refusal(path, exc) from None
    finally:
        if previous is None:
            del os.environ[FORCE_WEIGHTS_ONLY]
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous
