"""Loader throughput: one training epoch over a class-balanced subset of the real photos, per registered loader.

Each round iterates the loader's training split once (``HARNESS_BENCH_SUBSET`` photos at
``HARNESS_BENCH_IMAGE_SIZE`` pixels, the loader's default parameters); the loader is built,
and any cache it keeps filled, before the first (warm-up) round.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.api import DataSpec, DeviceInfo
from harness.plugins import Manager


def test_loader_throughput(benchmark: Any, loader_name: str, manager: Manager, device: DeviceInfo, settings: Any,
                           data_root: Path, record: Any) -> None:
    registration = manager.loaders()[loader_name]
    spec = DataSpec(root=data_root, image_size=settings.image_size, batch_size=settings.batch_size, randaugment=False,
                    seed=0, device=device, subset=settings.subset)
    splits = registration.impl.build(spec)
    epoch = 0
    seconds: list[float] = []

    def one_epoch() -> int:
        nonlocal epoch
        epoch += 1
        if hasattr(splits.train, "set_epoch"):
            splits.train.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for batch, labels in splits.train:
            assert batch.shape[0] == labels.shape[0] and batch.shape[-1] == settings.image_size
            images += int(labels.shape[0])
        seconds.append(time.perf_counter() - start)
        return images

    images = benchmark.pedantic(one_epoch, rounds=settings.rounds, warmup_rounds=1)
    record(benchmark, kind="loader", loader=loader_name, plugin=registration.plugin,
           distribution=registration.distribution, train_size=splits.train_size, images_per_round=images,
           data=str(data_root))
    timed = sorted(seconds[1:] or seconds)  # the first round is the warm-up (none with --benchmark-disable)
    benchmark.extra_info["throughput_img_s"] = images / timed[len(timed) // 2]
    assert images > 0
