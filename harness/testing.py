"""Helpers for testing harness plugins (also a pytest plugin: ``-p harness.testing``).

Fixtures:
- ``harness_plugin``: ``harness_plugin(obj)`` registers a plugin object or module for one test.
- ``tiny_photos``: a folder of small generated JPEGs in class folders, learnable by colour.

Functions:
- ``make_photos``: the same photos, anywhere, with your own counts and size.
- ``data_spec``: a :class:`~harness.api.DataSpec` for calling a loader's ``build`` directly.
- ``check_loader``: a loader's ``build`` with the contract checks a cell applies to its batches.
- ``plugin_manager``: the plugin manager as ``harness`` commands see it (installed plugins included).
- ``suite_cells``: the cells a registered suite (or suite file) expands to.
- ``run_harness``: the real ``harness`` CLI in a subprocess, with plugin modules of your own loaded.
- ``results``: the ``result.json`` of every cell of a ``harness run`` output directory.

The fixtures need pytest; the functions do not.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from functools import cache
from pathlib import Path
from typing import Any

from harness import warm
from harness.api import CellSpec, DataSpec, DataSplits, DeviceInfo, LoaderPlugin
from harness.contract import ContractError, checked_splits
from harness.plugins import MODULES_ENV, Manager, get_manager, registered, suite_path

__all__ = ["ContractError", "check_loader", "data_spec", "make_photos", "plugin_manager", "results", "run_harness",
           "suite_cells"]

try:
    import pytest
except ImportError:  # pragma: no cover: installed without the test extra
    pytest = None  # type: ignore[assignment]

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


def data_spec(root: Path | str = ".", *, image_size: int = 32, batch_size: int = 8, seed: int = 0,
              params: Mapping[str, Any] | None = None, **fields: Any) -> DataSpec:
    """A CPU :class:`~harness.api.DataSpec` with small defaults; ``fields`` override any other field."""
    fields.setdefault("device", DeviceInfo("cpu", "cpu"))
    fields.setdefault("randaugment", False)
    return DataSpec(root=Path(root), image_size=image_size, batch_size=batch_size, seed=seed,
                    params=dict(params or {}), **fields)


def check_loader(loader: LoaderPlugin, spec: DataSpec) -> DataSplits:
    """``loader.build(spec)``, checked as a cell checks it: a :class:`~harness.api.DataSplits` with a training
    split, and a first batch of each split as it documents; raises :class:`ContractError` saying what is wrong."""
    data = checked_splits(loader.build(spec), f"loader {type(loader).__name__}")
    for batches in (data.train, data.validation):
        next(iter(batches), None)
    return data


def plugin_manager() -> Manager:
    """The plugin manager as ``harness`` commands see it: installed plugins, ``HARNESS_PLUGIN_MODULES``, and
    the current test's ``harness_plugin`` registrations."""
    return get_manager()


def suite_cells(suite: str | os.PathLike[str]) -> list[CellSpec]:
    """The cells of a registered suite (by name) or of a suite file, validated as ``harness run`` does."""
    from harness.suite import expand

    return expand(suite_path(str(suite)), get_manager()).cells


def run_harness(*args: str | os.PathLike[str], plugin_modules: Iterable[str] = (),
                pythonpath: Iterable[str | os.PathLike[str]] = (), env: Mapping[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``harness ARGS`` in a process of its own with this interpreter (forked from a warm one that has
    imported torch and timm: :mod:`harness.warm`); output is captured as text.

    ``plugin_modules`` are loaded as plugins (``HARNESS_PLUGIN_MODULES``) from ``pythonpath``
    folders, so a test can try a plugin that is not installed; cell processes inherit both.
    """
    full = {**os.environ, **(env or {})}
    modules = [m for m in (full.get(MODULES_ENV, ""), *plugin_modules) if m]
    if modules:
        full[MODULES_ENV] = ",".join(modules)
    paths = [str(p) for p in pythonpath] + [p for p in [full.get("PYTHONPATH", "")] if p]
    if paths:
        full["PYTHONPATH"] = os.pathsep.join(paths)
    argv = [str(a) for a in args]
    process = _launcher().start(sys.executable, argv, full, module="harness.cli", separate_stderr=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the command and the cells it started
        process.wait()
        raise
    return subprocess.CompletedProcess([sys.executable, "-m", "harness.cli", *argv], process.returncode or 0, out,
                                       err or "")


@cache
def _launcher() -> warm.Launcher:
    """This process's fork server for :func:`run_harness`: each command starts with torch, timm and the harness
    already imported, as a fresh process of its own (cold where the ``harness.paths.WARM`` setting is 0)."""
    launcher = warm.Launcher(zygote_env=dict(os.environ))
    atexit.register(launcher.close)
    return launcher


def results(out: Path | str) -> dict[str, dict[str, Any]]:
    """Cell id -> ``result.json`` of each cell under ``out/cells`` (see docs/results.md)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out).glob("cells/*/result.json"))}


if pytest is not None:  # the functions above work without pytest; the fixtures need it

    @pytest.fixture
    def harness_plugin() -> Iterator[Callable[..., Manager]]:
        """Register plugins for the duration of one test: ``manager = harness_plugin(obj, name="mine")``."""
        with ExitStack() as stack:
            yield lambda plugin, name="test-plugin": stack.enter_context(registered(plugin, name))

    @pytest.fixture
    def tiny_photos(tmp_path: Path) -> Path:
        """Three classes of twelve 48 px generated photos (raw class folders; loaders split them 4:1)."""
        return make_photos(tmp_path / "tiny-photos")
