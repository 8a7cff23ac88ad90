"""The torchvision loader: libjpeg-turbo decoding, a decoded uint8 cache, transforms v2 on uint8 tensors.

Batches are uint8 NCHW; the engine normalises them once, on the device. Suite params:
``cache`` (default true: decode every photo once, held in the parent process and shared
copy-on-write with the workers), ``workers`` (default: the CPU count, at most 8).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.io as tvio
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from harness.api import DataSpec, DataSplits, DeviceInfo, usable_cpus
from harness.datasets import Sample, discover, select
from harness.hookspecs import hookimpl

PARAMS = {"cache": bool, "workers": int}
CROP_RATIO = 0.875  # validation: resize the shorter side to size / 0.875, then centre-crop


def train_transform(size: int, randaugment: bool, min_crop_area: float) -> v2.Transform:
    steps = [v2.RandomResizedCrop(size, scale=(min_crop_area, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + ([v2.RandAugment(num_ops=2, magnitude=9)] if randaugment else []))


def validation_transform(size: int) -> v2.Transform:
    return v2.Compose([v2.Resize(round(size / CROP_RATIO), antialias=True), v2.CenterCrop(size)])


def decode(path: os.PathLike[str] | str) -> torch.Tensor:
    """A photo as a uint8 CHW RGB tensor (16-bit PNGs scaled down to 8 bits); the error names the file."""
    try:
        image = tvio.decode_image(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot decode image: {exc}") from exc
    return image if image.dtype == torch.uint8 else v2.functional.to_dtype(image, torch.uint8, scale=True)


class Photos(Dataset):
    """Photos indexed by ``(index, epoch)``: augmentation randomness is a function of (seed, epoch, index)."""

    def __init__(self, samples: Sequence[Sample], transform: v2.Transform, seed: int,
                 cache: list[np.ndarray] | None = None) -> None:
        self.samples, self.transform, self.seed, self.cache = samples, transform, seed, cache

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> torch.Tensor:
        if self.cache is not None:
            return torch.from_numpy(self.cache[index])
        return decode(self.samples[index].path)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF)
        return self.transform(self.image(index)), self.samples[index].label


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's share of a (seed, epoch)-seeded permutation, yielding ``(index, epoch)``."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int, world_size: int) -> None:
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.epoch = 1

    def order(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:  # training: every rank gets as many photos, so DDP ranks take the same steps
            random.Random(self.seed * 7919 + self.epoch).shuffle(order)
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.epoch) for i in self.order())

    def __len__(self) -> int:
        return len(self.order())


class EpochLoader:
    """A DataLoader the engine can ``set_epoch`` on."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler) -> None:
        self.loader, self.sampler = loader, sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_cache(samples: Sequence[Sample], short_side: int, workers: int) -> list[np.ndarray]:
    """Decode every photo once (in ``workers`` processes), shrunk so its shorter side is at most ``short_side``."""
    shrink = v2.Resize(short_side, antialias=True)

    class Decoded(Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int) -> np.ndarray:
            image = decode(samples[i].path)
            return (shrink(image) if min(image.shape[1:]) > short_side else image).numpy()

    loader = DataLoader(Decoded(), batch_size=None, num_workers=workers)
    return [t.numpy().copy() for t in loader]  # copies out of shared memory: no file descriptor per photo


class TorchvisionLoader:
    def can_run(self, device: DeviceInfo, params: Mapping[str, Any]) -> str | None:
        return self.check_params(params)

    def check_params(self, params: Mapping[str, Any]) -> str | None:
        for key, value in params.items():
            if key not in PARAMS:
                return f"unknown torchvision loader parameter {key!r}; allowed: {', '.join(PARAMS)}"
            if not isinstance(value, PARAMS[key]):
                return f"torchvision loader parameter {key!r} must be {PARAMS[key].__name__}, got {value!r}"
        return None

    def build(self, spec: DataSpec) -> DataSplits:
        dataset = discover(spec.data_dir)
        splits = select(dataset, spec.subset, spec.seed)
        workers = spec.params.get("workers", min(usable_cpus(), 8))
        short_side = round(spec.image_size / CROP_RATIO)
        caches = {s: build_cache(splits[s], short_side, workers) if spec.params.get("cache", True) else None
                  for s in splits}
        cuda = spec.device.type == "cuda"
        loaders = {}
        for split, shuffle in (("train", True), ("validation", False)):
            transform = (train_transform(spec.image_size, spec.randaugment, spec.min_crop_area) if shuffle
                         else validation_transform(spec.image_size))
            photos = Photos(splits[split], transform, spec.seed, caches[split])
            sampler = EpochSampler(len(photos), spec.seed, shuffle, spec.rank, spec.world_size)
            loaders[split] = EpochLoader(DataLoader(
                photos, batch_size=spec.batch_size, sampler=sampler, num_workers=workers, drop_last=shuffle,
                persistent_workers=workers > 0, pin_memory=cuda, prefetch_factor=4 if workers else None,
                generator=torch.Generator().manual_seed(spec.seed)), sampler)  # leaves the global RNG alone
        return DataSplits(loaders["train"], loaders["validation"], dataset.classes,
                          train_size=len(loaders["train"].sampler), validation_size=len(loaders["validation"].sampler),
                          info={"workers": workers, "cache": caches["train"] is not None})


@hookimpl
def register_loaders(register: Any) -> None:
    register("torchvision", TorchvisionLoader())
