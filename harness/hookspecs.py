"""The harness hook specifications: every way a plugin can extend the harness.

Registration hooks receive a ``register`` callback (as in simonw/llm) and are called
once when the plugin manager loads. Lifecycle hooks are called by the engine in the
cell process, on every rank, in the order ``harness_run_start``, per epoch
``harness_epoch_metrics`` and ``harness_epoch_end``, then ``harness_run_metrics`` and ``harness_run_end``.
Implementations may accept fewer arguments than the spec (pluggy passes only the
ones they name), so new optional arguments never break old plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from harness.api import CellSpec, EpochRecord, RunContext

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_loaders(register: Callable[..., None]) -> None:
    """Register data loaders: ``register(name, loader)``.

    ``loader`` (an instance, not the class) implements :class:`harness.api.LoaderPlugin`;
    ``name`` is what suites write in ``matrix.loader``.
    """


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register model families: ``register(name, family)``.

    ``family`` (an instance) implements :class:`harness.api.ModelPlugin`; its ``knows(model)``
    decides which suite model names it builds. A name that a built-in family knows too stays the
    built-in's unless the suite pins another (``[models.NAME] family = "F"``); two third-party
    families knowing a name no built-in knows is an error naming both.
    """


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register training backends: ``register(name, backend)``.

    ``backend`` (an instance) implements :class:`harness.api.BackendPlugin`; ``name`` is
    what suites write in ``matrix.backend``.
    """


@hookspec
def register_suites(register: Callable[..., None]) -> None:
    """Register suites: ``register(name, path)`` with ``path`` a suite TOML file."""


@hookspec
def register_executors(register: Callable[..., None]) -> None:
    """Register executors, where ``harness run`` runs cells: ``register(name, executor)``.

    ``executor`` (an instance) implements :class:`harness.api.ExecutorPlugin`: its ``configure(group)`` adds
    its options to ``harness run`` and ``create(args, manager)`` returns the :class:`harness.api.Executor`
    that launches and watches cells (``submit / poll / cancel``) for ``harness run --executor NAME``.
    """


@hookspec
def harness_environment() -> dict[str, Any] | None:
    """Return extra fields for the environment fingerprint (e.g. a library version)."""


@hookspec
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
    """Called when a cell's training starts (after data, model and backend are ready)."""


@hookspec
def harness_epoch_end(cell: CellSpec, record: EpochRecord, context: RunContext) -> None:
    """Called after each epoch's record is written to the result store."""


@hookspec
def harness_epoch_metrics(cell: CellSpec, record: EpochRecord, context: RunContext) -> dict[str, float] | None:
    """Return per-epoch fields ``{"field": number}`` for the epoch's record, before it is written; they are stored
    under the record's ``extra`` as ``"<plugin name>.<field>"``."""


@hookspec
def harness_run_metrics(cell: CellSpec, summary: dict[str, Any], context: RunContext) -> dict[str, float] | None:
    """Return run-level fields ``{"field": number}`` when a cell finishes; they are stored under ``extra`` of
    result.json's ``summary`` as ``"<plugin name>.<field>"``."""


@hookspec
def harness_run_end(cell: CellSpec, summary: dict[str, Any], context: RunContext) -> None:
    """Called when a cell finishes, with its summary (best accuracy, epochs, ...)."""
