"""The ``synthetic`` loader: class-dependent images generated in memory, for compute-only benchmarks.

Each class is a stripe pattern with its own orientation and frequency; every image draws a
random colour, phase, a little jitter and pixel noise, so colour says nothing about the class.
The images are made once, in memory, from the cell's seed (``DataSpec.root`` is ignored, and
``reads_data = False`` lets ``harness run`` go without ``--data``: no disk I/O at all), and
batches are slices of a per-epoch permutation, so the loader costs next to nothing per step.

Suite parameters (``[loaders.synthetic]``):
``train_size`` (default 1024), ``validation_size`` (default a quarter of ``train_size``),
``classes`` (default 5), ``noise`` (pixel noise, a fraction of the 0..255 range, default 0.25),
``on_device`` (default false: keep the images on the training device, so batches skip the
host-to-device copy as well).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.api import DataSpec, DataSplits, DeviceInfo

if TYPE_CHECKING:  # torch is imported where it is used: `harness plugins` loads this module without it
    import torch

PARAMS: dict[str, type] = {"train_size": int, "validation_size": int, "classes": int, "noise": float,
                           "on_device": bool}
DEFAULTS: dict[str, Any] = {"train_size": 1024, "classes": 5, "noise": 0.25, "on_device": False}
CHUNK = 256  # images generated at a time: bounds the float scratch memory


@dataclass(frozen=True)
class Settings:
    """The generator's effective parameters for one cell."""

    train_size: int
    validation_size: int
    classes: int
    noise: float
    on_device: bool

    @classmethod
    def from_params(cls, params: Mapping[str, Any], subset: int | None = None) -> Settings:
        """Suite params over the defaults; ``subset`` caps the training images (validation: a quarter)."""
        merged = {**DEFAULTS, **params}
        train = merged["train_size"]
        validation = merged.get("validation_size", max(merged["classes"], train // 4))
        if subset is not None:
            train, validation = min(train, subset), min(validation, max(merged["classes"], subset // 4))
        return cls(train, validation, merged["classes"], float(merged["noise"]), merged["on_device"])


def check_params(params: Mapping[str, Any]) -> str | None:
    """None if ``params`` are valid, else what is wrong with them."""
    for key, value in params.items():
        if key not in PARAMS:
            return f"unknown synthetic loader parameter {key!r}; allowed: {', '.join(PARAMS)}"
        kind = PARAMS[key]
        ok = isinstance(value, (int, float) if kind is float else kind) and not (
            kind is not bool and isinstance(value, bool))
        if not ok:
            return f"synthetic loader parameter {key!r} must be {kind.__name__}, got {value!r}"
    settings = Settings.from_params(params)
    if settings.classes < 2:
        return f"synthetic loader parameter 'classes' must be at least 2, got {settings.classes}"
    if settings.train_size < settings.classes or settings.validation_size < settings.classes:
        return (f"synthetic loader: train_size ({settings.train_size}) and validation_size "
                f"({settings.validation_size}) must be at least classes ({settings.classes})")
    if settings.noise < 0:
        return f"synthetic loader parameter 'noise' must be >= 0, got {settings.noise}"
    return None


def class_styles(classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: stripe angle (radians, evenly spread, seeded offset) and frequency (cycles per image)."""
    import torch

    offset = torch.rand(1, generator=torch.Generator().manual_seed(seed)) * math.pi / classes
    angles = offset + torch.arange(classes, dtype=torch.float32) * math.pi / classes
    frequencies = 2.0 + (torch.arange(classes, dtype=torch.float32) % 3) * 1.5
    return angles, frequencies


def generate(labels: torch.Tensor, size: int, styles: tuple[torch.Tensor, torch.Tensor], noise: float,
             seed: int) -> torch.Tensor:
    """uint8 NCHW images of ``labels`` in the classes' ``styles``: a pure function of its arguments."""
    import torch

    angles, frequencies = styles
    generator = torch.Generator().manual_seed(seed)
    axis = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    out = torch.empty(len(labels), 3, size, size, dtype=torch.uint8)
    for start in range(0, len(labels), CHUNK):
        y = labels[start : start + CHUNK]
        n = len(y)
        angle = angles[y] + 0.15 * torch.randn(n, generator=generator)
        frequency = frequencies[y] * (1 + 0.1 * torch.randn(n, generator=generator))
        phase = 2 * math.pi * torch.rand(n, generator=generator)
        tint = 0.3 + 0.7 * torch.rand(n, 3, generator=generator)
        along = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
        wave = torch.sin(2 * math.pi * frequency[:, None, None] * along + phase[:, None, None])
        image = 128 + 100 * wave[:, None] * tint[:, :, None, None]
        image += noise * 255 * torch.randn(n, 3, size, size, generator=generator)
        out[start : start + n] = image.clamp_(0, 255).round_().to(torch.uint8)
    return out


class Batches:
    """This rank's batches of a fixed in-memory set; shuffled per epoch from (seed, epoch) when training."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, shuffle: bool,
                 rank: int, world_size: int) -> None:
        usable = len(labels) - len(labels) % world_size  # equal shards: every rank runs the same number of steps
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.shuffle, self.rank, self.world_size, self.usable = seed, shuffle, rank, world_size, usable
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        return self.usable // self.world_size

    def __len__(self) -> int:
        full = self.shard_size // self.batch_size
        return full if self.shuffle else math.ceil(self.shard_size / self.batch_size)  # training drops the last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        if self.shuffle:
            order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(
                self.seed * 7919 + self.epoch))
        else:
            order = torch.arange(len(self.labels))
        shard = order[: self.usable][self.rank :: self.world_size].to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = shard[start : start + self.batch_size]
            yield self.images[index], self.labels[index]


def balanced_labels(count: int, classes: int) -> torch.Tensor:
    import torch

    return torch.arange(count) % classes


def storage_device(spec: DataSpec, settings: Settings) -> torch.device:
    """Where the images live: the training device when ``on_device`` is set and it is a GPU, else the CPU."""
    import torch

    if settings.on_device and spec.device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class SyntheticLoader:
    """The ``synthetic`` loader (implements :class:`harness.api.LoaderPlugin`)."""

    reads_data = False  # generated in memory: suites of synthetic cells need no --data

    def can_run(self, device: DeviceInfo, params: Mapping[str, Any]) -> str | None:
        return check_params(params)

    def check_params(self, params: Mapping[str, Any]) -> str | None:
        """Optional: lets a typo in the suite's [loaders.synthetic] table reject the suite up front."""
        return check_params(params)

    def build(self, spec: DataSpec) -> DataSplits:
        settings = Settings.from_params(spec.params, spec.subset)
        where = storage_device(spec, settings)
        styles = class_styles(settings.classes, spec.seed)  # the same classes in both splits
        splits = {}
        for offset, (split, count, shuffle) in enumerate(
                (("train", settings.train_size, True), ("validation", settings.validation_size, False)), start=1):
            labels = balanced_labels(count, settings.classes)
            images = generate(labels, spec.image_size, styles, settings.noise, spec.seed * 1_000_003 + offset)
            splits[split] = Batches(images.to(where), labels.to(where), spec.batch_size, spec.seed, shuffle,
                                    spec.rank, spec.world_size)
        return DataSplits(splits["train"], splits["validation"],
                          classes=[f"pattern_{c}" for c in range(settings.classes)],
                          train_size=splits["train"].shard_size, validation_size=splits["validation"].shard_size)
