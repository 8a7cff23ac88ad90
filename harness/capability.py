"""Whether a cell can run on this machine: the one answer the runner and ``harness env`` share."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

from harness import devices
from harness.api import CellSpec, DeviceInfo, Recipe
from harness.plugins import Manager, Registration

T = TypeVar("T")
#: A plugin's answer to a question asked in the runner's process (``can_run``, ``check_params``, ``check_model``, a
#: model built on the meta device) must come within this many seconds: a plugin that hangs must not hang the run.
PLUGIN_TIMEOUT_S = 60.0


class PluginTimeout(Exception):
    """A plugin call did not return within :data:`PLUGIN_TIMEOUT_S`."""


def bounded(call: Callable[[], T]) -> T:
    """``call()``, or :class:`PluginTimeout` after :data:`PLUGIN_TIMEOUT_S` (the call goes on in a daemon thread,
    which does not keep the process alive)."""
    answer: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            answer.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread below
            answer.append((False, exc))

    thread = threading.Thread(target=target, daemon=True, name="harness-plugin-call")
    thread.start()
    thread.join(PLUGIN_TIMEOUT_S)
    if not answer:
        raise PluginTimeout(f"no answer within {PLUGIN_TIMEOUT_S:g} s")
    returned, value = answer[0]
    if not returned:
        raise value
    return value


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
    return backend_blocker(backend, device, cell.precision, cell.nproc, cell.backend_params, cell.recipe,
                           cell.allow_emulated) or (
        ask(loader, lambda: loader.impl.can_run(device, cell.loader_params))) or (
        model_blocker(cell, manager, backend, device))


def backend_blocker(backend: Registration, device: DeviceInfo, precision: str, nproc: int,
                    params: Mapping[str, Any], recipe: Recipe | None, allow_emulated: bool = False) -> str | None:
    """The device's verdict on ``precision`` (:mod:`harness.devices`), then the backend's own ``can_run``; when
    both refuse, both reasons (the device's must not hide the backend's, which ``--allow-emulated`` cannot lift)."""
    refusal = devices.support(device, precision).refusal(allow_emulated)
    own = ask(backend, lambda: backend.impl.can_run(device, precision, nproc, params, recipe=recipe))
    return f"{refusal}; and backend {backend.name} refuses: {own}" if refusal and own else refusal or own


def model_blocker(cell: CellSpec, manager: Manager, backend: Registration, device: DeviceInfo) -> str | None:
    """The backend's optional ``check_model`` answer, on the cell's model built on the meta device."""
    check = getattr(backend.impl, "check_model", None)
    family = manager.family_of(cell)
    if check is None or family is None:
        return None
    try:
        model = bounded(lambda: meta_model(family.impl, cell.model, cell.image_size,
                                           json.dumps(cell.model_params, sort_keys=True)))
    except Exception:
        return None  # not buildable on the meta device: the cell process builds it for real and reports
    return ask(backend, lambda: check(model, device, cell.precision), "check_model")


def model_arguments_problem(family: Registration, name: str, image_size: int, params: Mapping[str, Any]) -> str | None:
    """What is wrong with a suite's arguments for model ``name``: the ``TypeError`` of building it on the meta
    device (no memory, no weights), or None."""
    try:
        bounded(lambda: meta_model(family.impl, name, image_size, json.dumps(params, sort_keys=True)))
    except TypeError as exc:
        return str(exc)
    except Exception:
        return None  # not buildable on the meta device: the cell process builds it for real and reports
    return None


@cache
def meta_model(family: Any, name: str, image_size: int, params_json: str) -> Any:
    """``name`` as ``family`` builds it, on the meta device: module structure without memory or weights."""
    import torch

    params = json.loads(params_json)
    if params.get("pretrained"):
        params["pretrained"] = False  # no download for a structural check
    with torch.device("meta"):
        return family.build(name, num_classes=2, image_size=image_size, **params)


def ask(registration: Registration, call: Callable[[], str | None], method: str = "can_run") -> str | None:
    """A plugin's answer to ``call`` (its ``method``), within :data:`PLUGIN_TIMEOUT_S`; one that raises or hangs
    says no, and the reason names the plugin."""
    try:
        return bounded(call)
    except PluginTimeout:
        return f"plugin {registration.plugin!r} did not answer {method} within {PLUGIN_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"plugin {registration.plugin!r} raised in {method}: {exc!r}"
