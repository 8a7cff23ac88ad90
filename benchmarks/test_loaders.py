"""Loader throughput: one training epoch over a class-balanced subset of the real photos, per registered loader.

Each round iterates the loader's training split once (``HARNESS_BENCH_SUBSET`` photos at
``HARNESS_BENCH_IMAGE_SIZE`` pixels, the loader's default parameters); the loader is built,
and any cache it keeps filled, before the first (warm-up) round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.api import DataSpec, DeviceInfo
from harness.plugins import Manager


def test_loader_throughput(benchmark: Any, loader_name: str, manager: Manager, device: DeviceInfo, settings: Any,
                           data_root: Path, record: Any, time_epochs: Any) -> None:
    registration = manager.loaders()[loader_name]
    spec = DataSpec(root=data_root, image_size=settings.image_size, batch_size=settings.batch_size, randaugment=False,
                    seed=0, device=device, subset=settings.subset)
    splits = registration.impl.build(spec)
    images = time_epochs(splits.train, settings.image_size, settings.rounds)
    record(benchmark, kind="loader", loader=loader_name, plugin=registration.plugin,
           distribution=registration.distribution, train_size=splits.train_size, images_per_round=images,
           data=str(data_root))
    assert images > 0
