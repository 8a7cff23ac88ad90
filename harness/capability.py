"""Whether a cell can run on this machine: the one answer the runner and ``harness env`` share."""

from __future__ import annotations

from collections.abc import Callable

from harness.api import CellSpec, DeviceInfo
from harness.plugins import Manager, Registration


def blocker(cell: CellSpec, manager: Manager, device: DeviceInfo) -> str | None:
    """None if ``cell`` can run on ``device``, else the precise reason it cannot."""
    if cell.device == "cuda" and device.count == 0:
        return "device cuda requested, but this machine has no CUDA device"
    if device.type == "cuda" and cell.nproc > device.count:
        return f"needs {cell.nproc} GPUs, this machine has {device.count}"
    backend = manager.backends()[cell.backend_plugin]
    if cell.precision not in backend.impl.precisions:
        offers = ", ".join(backend.impl.precisions)
        return f"backend {cell.backend} has no precision {cell.precision} (it offers {offers})"
    loader = manager.loaders()[cell.loader_plugin]
    return ask(backend, lambda: backend.impl.can_run(device, cell.precision, cell.nproc, cell.backend_params,
                                                     recipe=cell.recipe)) or (
        ask(loader, lambda: loader.impl.can_run(device, cell.loader_params)))


def ask(registration: Registration, can_run: Callable[[], str | None]) -> str | None:
    """A plugin's ``can_run`` answer; one that raises cannot run, and the reason names the plugin."""
    try:
        return can_run()
    except Exception as exc:
        return f"plugin {registration.plugin!r} raised in can_run: {exc!r}"
