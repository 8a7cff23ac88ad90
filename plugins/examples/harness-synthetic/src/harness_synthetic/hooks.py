"""The plugin module the ``harness`` entry point names: every ``@hookimpl`` of harness-synthetic."""

from __future__ import annotations

import json
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
