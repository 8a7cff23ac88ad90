"""Whether a cell can run on this machine: the one answer the runner and ``harness env`` share."""

from __future__ import annotations

from harness.api import CellSpec, DeviceInfo
from harness.plugins import Manager


def blocker(cell: CellSpec, manager: Manager, device: DeviceInfo) -> str | None:
    """None if ``cell`` can run on ``device``, else the precise reason it cannot."""
    if cell.device == "cuda" and device.count == 0:
        return "device cuda requested, but this machine has no CUDA device"
    if device.type == "cuda" and cell.nproc > device.count:
        return f"needs {cell.nproc} GPUs, this machine has {device.count}"
    backend = manager.backends()[cell.backend_plugin].impl
    if cell.precision not in backend.precisions:
        return f"backend {cell.backend} has no precision {cell.precision} (it offers {', '.join(backend.precisions)})"
    return backend.can_run(device, cell.precision, cell.nproc, cell.backend_params) or manager.loaders()[
        cell.loader_plugin
    ].impl.can_run(device, cell.loader_params)
