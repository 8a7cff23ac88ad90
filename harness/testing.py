"""Helpers for testing harness plugins (also a pytest plugin: ``-p harness.testing``).

Fixtures:
- ``harness_plugin``: ``harness_plugin(obj)`` registers a plugin object or module for one test.
- ``tiny_photos``: a folder of small generated JPEGs in class folders, learnable by colour.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness.plugins import Manager, registered

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 210, 40), (200, 60, 210)]


def make_photos(root: Path, classes: int = 3, per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """Write ``classes`` folders of ``per_class`` JPEGs: noisy images whose dominant colour is the class."""
    from PIL import Image

    rng = random.Random(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = COLOURS[c % len(COLOURS)]
        for i in range(per_class):
            pixels = bytes(max(0, min(255, v + rng.randint(-60, 60))) for _ in range(size * size) for v in base)
            Image.frombytes("RGB", (size, size), pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture
def harness_plugin() -> Iterator[Callable[..., Manager]]:
    """Register plugins for the duration of one test: ``manager = harness_plugin(obj, name="mine")``."""
    with ExitStack() as stack:
        yield lambda plugin, name="test-plugin": stack.enter_context(registered(plugin, name))


@pytest.fixture
def tiny_photos(tmp_path: Path) -> Path:
    """Three classes of twelve 48 px generated photos (raw class folders; loaders split them 4:1)."""
    return make_photos(tmp_path / "tiny-photos")
