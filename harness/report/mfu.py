"""MFU, from the peak FLOP/s of the device facts table (:func:`harness.devices.peak_flops`).

MFU = achieved FLOP/s (training images per second x the training FLOPs per image that the
engine measured once with ``torch.utils.flop_counter`` and stored in ``result.json``)
over the device's peak for the cell's precision.
"""

from __future__ import annotations

import math

from harness.devices import peak_flops

__all__ = ["mfu", "peak_flops"]


def mfu(
    throughput_img_s: float, flops_per_image: float | None, device_name: str | None, precision: str, devices: int = 1
) -> float:
    """Model FLOPs utilisation (above 1 only when something is wrong: the report flags it); NaN when the peak
    or the FLOPs are unknown."""
    peak = peak_flops(device_name, precision)
    if peak is None or flops_per_image is None or not math.isfinite(flops_per_image) or flops_per_image <= 0:
        return math.nan
    return throughput_img_s * flops_per_image / (peak * max(devices, 1))
