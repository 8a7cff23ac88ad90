"""Peak FLOP/s from the device facts table (:mod:`harness.devices`), and MFU.

MFU = achieved FLOP/s (training images per second x the training FLOPs per image that the
engine measured once with ``torch.utils.flop_counter`` and stored in ``result.json``)
over the device's peak for the cell's precision. fp32 uses the plain fp32 rate; fp16/bf16
use the tensor-core rate, but never less than the fp32 rate: half-precision matmuls with
fp32 accumulation run at least on the fp32 units (P40 fp16, bf16 on a T4).
"""

from __future__ import annotations

import math

from harness.devices import dtype, match_device

FACT_FIELDS = ("fp32", "fp16", "bf16")


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Peak dense FLOP/s of one device in ``precision`` (by the dtype it computes in: ``bf16-autocast`` is bf16);
    None where unknown (CPUs, unlisted GPUs)."""
    facts = match_device(device_name)
    precision = dtype(precision)
    if facts is None or precision not in FACT_FIELDS:
        return None
    peaks = facts["peak_tflops"]
    tflops = max(peaks.get(precision) or 0.0, peaks["fp32"])
    return tflops * 1e12


def mfu(
    throughput_img_s: float, flops_per_image: float | None, device_name: str | None, precision: str, devices: int = 1
) -> float:
    """Model FLOPs utilisation (above 1 only when something is wrong: the report flags it); NaN when the peak
    or the FLOPs are unknown."""
    peak = peak_flops(device_name, precision)
    if peak is None or flops_per_image is None or not math.isfinite(flops_per_image) or flops_per_image <= 0:
        return math.nan
    return throughput_img_s * flops_per_image / (peak * max(devices, 1))
