"""The plugin module the ``harness`` entry point names: every ``@hookimpl`` of harness-synthetic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.api import CellSpec, RunContext
from harness.hookspecs import hookimpl
from harness_synthetic import __version__
from harness_synthetic.data import Settings, SyntheticLoader
from harness_synthetic.models import TinyCNNFamily

#: The hook API versions this plugin supports; the harness refuses it outside this range.
HARNESS_API = ">=1,<2"

SUITES = Path(__file__).parent / "suites"
#: The cell process's CPU and wall clocks when the observer last read them (one cell per process).
_clocks: dict[str, float] = {}


@hookimpl
def register_loaders(register: Any) -> None:
    register("synthetic", SyntheticLoader())


@hookimpl
def register_models(register: Any) -> None:
    register("tinycnn", TinyCNNFamily())


@hookimpl
def register_suites(register: Any) -> None:
    register("synthetic-smoke", SUITES / "synthetic-smoke.toml")


@hookimpl
def harness_environment() -> dict[str, Any]:
    return {"harness_synthetic": __version__}


@hookimpl
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
    """Record the generator's effective settings beside the cell's results: the data's provenance."""
    if cell.loader_plugin == "synthetic" and context.rank == 0:
        settings = Settings.from_params(cell.loader_params, cell.subset)
        record = {"seed": cell.seed, "image_size": cell.image_size, **vars(settings)}
        (context.out_dir / "synthetic.json").write_text(json.dumps(record, indent=2) + "\n")
    if cell.loader_plugin == "synthetic":
        _clocks.clear()
        _cpu_since_last()  # the first epoch's CPU use counts from here


def _cpu_since_last() -> tuple[float, float]:
    """CPU seconds of this process (all its threads) and wall seconds since the previous reading."""
    cpu, wall = time.process_time(), time.perf_counter()
    spent = (cpu - _clocks.get("cpu", cpu), wall - _clocks.get("wall", wall))
    _clocks.update(cpu=cpu, wall=wall, total=_clocks.get("total", 0.0) + spent[0])
    return spent


@hookimpl
def harness_epoch_metrics(cell: CellSpec) -> dict[str, float] | None:
    """An observer's per-epoch field: ``synthetic.cpu_util``, CPU seconds per wall second of the epoch (2.0: two
    cores busy), stored in the epoch's record under ``extra``. Only for cells of the synthetic loader."""
    if cell.loader_plugin != "synthetic":
        return None
    cpu, wall = _cpu_since_last()
    return {"cpu_util": cpu / wall if wall > 0 else 0.0}


@hookimpl
def harness_run_metrics(cell: CellSpec) -> dict[str, float] | None:
    """A run-level field: ``synthetic.cpu_s``, the CPU seconds the cell's epochs took (in the result's summary)."""
    if cell.loader_plugin != "synthetic":
        return None
    return {"cpu_s": _clocks.get("total", 0.0)}
