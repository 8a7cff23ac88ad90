"""What machine this is: the device capability checks use, and the fingerprint results carry."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import devices, paths
from harness.api import DeviceInfo

PACKAGES: dict[str, str | tuple[str, ...]] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "dali": ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130"),
    "colossalai": "colossalai",
    "pluggy": "pluggy",
    "pandas": "pandas",
    "harness": "harness",
}
#: Written last into an environment the harness built (harness/envs/build.py): what it is.
ENV_MARKER = "harness-env.json"


def device_info(requested: str = "auto") -> DeviceInfo:
    """The device a cell asks for: ``cuda`` when present (or requested), else ``cpu``."""
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return devices.cpu_device(cpu_model(), os.cpu_count() or 1)
    if not torch.cuda.is_available():
        return DeviceInfo("cuda", "no CUDA device", count=0)
    return DeviceInfo(
        "cuda",
        torch.cuda.get_device_name(0),
        capability=torch.cuda.get_device_capability(0),
        bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
        count=torch.cuda.device_count(),
    )


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(distribution: str | tuple[str, ...]) -> str | None:
    for name in (distribution,) if isinstance(distribution, str) else distribution:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def current_environment() -> dict[str, str | None]:
    """The environment this interpreter is: a built one's name and hash (from its marker), else ``default``."""
    try:
        marker = json.loads((Path(sys.prefix) / ENV_MARKER).read_text())
    except (OSError, ValueError):
        return {"environment": "default", "environment_hash": None}
    return {"environment": marker.get("name"), "environment_hash": marker.get("hash")}


#: Set by :mod:`harness.fleet` on the Ray node running the cell: the device kind it was scheduled for, the node.


def fleet() -> dict[str, str]:
    """``fleet_kind`` (the device kind the cell was placed on, e.g. ``T4``) and ``fleet_node`` (the Ray node),
    for cells run by ``harness run --executor ray``; nothing otherwise."""
    fields = {"fleet_kind": paths.setting(paths.FLEET_KIND), "fleet_node": paths.setting(paths.FLEET_NODE)}
    return {key: value for key, value in fields.items() if value}


def memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * size / 1e9, 1)


def fingerprint(device: DeviceInfo, extra: Sequence[dict[str, Any] | None] = ()) -> dict[str, Any]:
    """The environment fingerprint every result record carries."""
    import torch

    cuda = device.type == "cuda" and torch.cuda.is_available()
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb(),
        "device_type": device.type,
        "device_name": device.name,
        "device_capability": ".".join(map(str, device.capability)) if device.capability else None,
        "device_count": device.count,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision_support": devices.verdicts(device),
        "driver_version": _driver_version() if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "nccl_available": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
        **{key: version(dist) for key, dist in PACKAGES.items()},
        "git_commit": git_commit(),
        **current_environment(),
        **fleet(),
    }
    for fields in extra:
        env.update(fields or {})
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
