"""Device rules: which precisions a device computes natively, which it only emulates, and why.

The one place that knows. The runner and ``harness env`` refuse a precision the cell's device only
emulates (unless the cell opts in with ``allow_emulated``), the engine labels cells that ran one
anyway, and the report reads the verdict each result's fingerprint carries.

A precision is named after the dtype it computes in: ``fp32``, ``fp16``, ``bf16``, or a backend's
variant of one such as ``bf16-autocast``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.api import DeviceInfo
from harness.paths import FORCE_CPU_BF16, setting

NATIVE, EMULATED, UNSUPPORTED = "native", "emulated", "unsupported"
DTYPES = ("fp32", "fp16", "bf16")

#: Overrides the CPU probe (``native`` or ``emulated``), to test both policies on one machine.

CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, AMX-BF16; Arm BF16
CPU_FP16_FEATURES = ("amx_fp16",)  # torch's CPU fp16 autocast is fast only on AMX-FP16
CPU_BF16_SLOWDOWN = ("measured 10-50x slower than fp32 on an AVX2-only AMD EPYC: vit_tiny 6.6 vs 73 img/s, "
                     "resnet18 1.2-2.8 vs 57-61 img/s")
CPU_FP16_SLOWDOWN = "measured ~30x slower than fp32 (torch autocast fp16 on CPUs without AMX-FP16)"
FAST_FP16_CAPABILITIES = {(5, 3), (6, 0), (6, 2)}  # besides every compute capability >= 7.0


@dataclass(frozen=True)
class Support:
    """How a device runs one precision; ``reason`` and ``slowdown`` say why it is not native."""

    level: str  # native | emulated | unsupported
    reason: str = ""
    slowdown: str = ""

    def refusal(self, allow_emulated: bool) -> str | None:
        """Why a cell in this precision does not run here (None if it does)."""
        if self.level == NATIVE or (self.level == EMULATED and allow_emulated):
            return None
        if self.level == EMULATED:
            return (f"{self.reason}; {self.slowdown}. Refused by default: opt in with --allow-emulated "
                    "(or allow_emulated = true in the suite) to run it labelled 'emulated'")
        return self.reason


def dtype(precision: str) -> str:
    """The dtype a precision computes in: ``"bf16-autocast"`` -> ``"bf16"``."""
    return precision.split("-", 1)[0]


def support(device: DeviceInfo, precision: str) -> Support:
    """How ``device`` runs ``precision``."""
    kind = dtype(precision)
    if kind == "fp32":
        return Support(NATIVE)
    if kind not in DTYPES:
        return Support(UNSUPPORTED, f"precision {precision!r}: unknown dtype {kind!r} (known: {', '.join(DTYPES)})")
    if device.type == "cpu":
        return _cpu(device, kind)
    return _cuda(device, kind)


def _cpu(device: DeviceInfo, kind: str) -> Support:
    isa = f"torch CPU capability {device.isa}" if device.isa else "torch CPU capability unknown"
    if setting(FORCE_CPU_BF16):
        isa += f"; {FORCE_CPU_BF16}={setting(FORCE_CPU_BF16)}"
    if kind == "bf16":
        if device.bf16_native:
            return Support(NATIVE)
        return Support(EMULATED, f"bf16 on {device.name} is emulated: no AVX512-BF16 or AMX-BF16 ({isa})",
                       CPU_BF16_SLOWDOWN)
    if device.fp16_native:
        return Support(NATIVE)
    return Support(EMULATED, f"fp16 on {device.name} is emulated: no AMX-FP16 ({isa})", CPU_FP16_SLOWDOWN)


def _cuda(device: DeviceInfo, kind: str) -> Support:
    capability = device.capability or (0, 0)
    if kind == "bf16":
        if device.bf16_native:
            return Support(NATIVE)
        return Support(EMULATED, f"bf16 on {device.label} is emulated: native bf16 needs compute capability 8.0+",
                       "expect no speed-up over fp32")
    if capability >= (7, 0) or capability in FAST_FP16_CAPABILITIES:
        return Support(NATIVE)
    return Support(EMULATED, f"fp16 on {device.label} has no fast fp16 arithmetic (half precision runs at 1/64 of "
                             "the fp32 rate; fp16 matmuls fall back to the fp32 units)", "expect no speed-up over fp32")


def verdicts(device: DeviceInfo) -> dict[str, str]:
    """``{"fp32": "native", "bf16": ..., "fp16": ...}``: what results carry in their fingerprint."""
    return {kind: support(device, kind).level for kind in DTYPES}


def cpu_device(name: str, count: int) -> DeviceInfo:
    """This CPU, probed: torch's kernel capability and the instruction-set flags the kernel reports."""
    import torch

    flags = cpu_flags()
    forced = setting(FORCE_CPU_BF16)
    if forced and forced not in (NATIVE, EMULATED):
        raise ValueError(f"{FORCE_CPU_BF16}={forced!r}: expected {NATIVE!r} or {EMULATED!r}")
    if forced:
        bf16 = forced == NATIVE
    elif flags:
        bf16 = any(f in flags for f in CPU_BF16_FEATURES)
    else:  # no /proc/cpuinfo (macOS, Windows): oneDNN's own answer
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return DeviceInfo("cpu", name, bf16_native=bf16, fp16_native=any(f in flags for f in CPU_FP16_FEATURES),
                      count=count, isa=torch.backends.cpu.get_cpu_capability())


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def from_fingerprint(env: dict[str, Any]) -> DeviceInfo | None:
    """The device a result ran on, rebuilt from its fingerprint (for results older than ``precision_support``)."""
    capability = env.get("device_capability") or (match_device(env.get("device_name")) or {}).get("capability")
    if env.get("device_type") != "cuda" or not capability:
        return None
    try:
        major, minor = (int(p) for p in str(capability).split(".")[:2])
    except ValueError:
        return None
    return DeviceInfo("cuda", str(env.get("device_name")), capability=(major, minor), bf16_native=major >= 8)


def recorded_support(env: dict[str, Any], precision: str) -> str | None:
    """native / emulated / unsupported for a result, from its fingerprint; None if it cannot be known."""
    recorded = env.get("precision_support")
    if isinstance(recorded, dict) and dtype(precision) in recorded:
        return str(recorded[dtype(precision)])
    device = from_fingerprint(env)
    return support(device, precision).level if device else None


@cache
def device_facts() -> tuple[dict[str, Any], ...]:
    """The shipped GPU table (``harness/data/devices.json``: peaks, memory, fast fp16), specific variants first."""
    text = (Path(__file__).resolve().parent / "data" / "devices.json").read_text()
    return tuple(json.loads(text)["devices"])


def match_device(name: str | None) -> dict[str, Any] | None:
    """Facts for a torch device name such as ``"Tesla T4"`` or ``"NVIDIA H100 80GB HBM3"``."""
    if not name:
        return None
    for facts in device_facts():
        if re.search(facts["match"], name, re.IGNORECASE):
            return facts
    return None


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Peak dense FLOP/s of one device in ``precision``; None where unknown (CPUs, unlisted GPUs).

    fp32 uses the plain fp32 rate; fp16/bf16 the tensor-core rate, but never less than the fp32 rate:
    half-precision matmuls with fp32 accumulation run at least on the fp32 units (P40 fp16, bf16 on a T4).
    """
    facts = match_device(device_name)
    precision = dtype(precision)  # by the dtype it computes in: bf16-autocast is bf16
    if facts is None or precision not in DTYPES:
        return None
    peaks = facts["peak_tflops"]
    return max(peaks.get(precision) or 0.0, peaks["fp32"]) * 1e12
