"""Image-folder layouts and the deterministic 4:1 train/validation split.

Every loader reads its file lists from :func:`discover`, so the torchvision and DALI
loaders (and ``harness data prepare``) see the same photos with the same labels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("train", "validation")


class DataError(ValueError):
    """The data directory cannot be used; the message names the path."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    """Samples per split, labels indexing the sorted ``classes``."""

    classes: list[str]
    splits: dict[str, list[Sample]]
    prepared: bool  # True for train/ + validation/ folders, False for a split made here


def train_count(n: int, scale: int = 4) -> int:
    """Photos of a class of ``n`` that go to training: ``floor(n * scale / (1 + scale))``."""
    return math.floor(n * scale / (1 + scale))


def is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Sorted class name -> sorted image paths of each non-hidden subfolder of ``root``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {f.name: sorted(p for p in f.iterdir() if is_image(p) and p.stat().st_size > 0) for f in folders}


def split_class(paths: list[Path], seed: int, scale: int = 4) -> tuple[list[Path], list[Path]]:
    """Seeded shuffle of sorted ``paths``, then the first ``train_count`` go to training."""
    shuffled = sorted(paths)
    random.Random(seed).shuffle(shuffled)
    cut = train_count(len(shuffled), scale)
    return shuffled[:cut], shuffled[cut:]


def discover(root: Path | str, seed: int = 0, scale: int = 4) -> Dataset:
    """Read a prepared ``train/``+``validation/`` directory, or split raw class folders 4:1 (``scale``).

    ``seed`` seeds only the split of raw class folders (prepared folders are read as they are); the
    built-in loaders keep the default 0, so every cell sees the same split whatever its own seed.
    Returns a :class:`Dataset`: sorted ``classes`` and ``splits["train"]``/``splits["validation"]``,
    lists of :class:`Sample` (``path``, ``label`` indexing ``classes``). Raises :class:`DataError`.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: is a file; expected a data directory (class folders, or train/ + validation/)")
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist")
    if all((root / s).is_dir() for s in SPLITS):
        per_split = {s: class_folders(root / s) for s in SPLITS}
        classes = sorted(per_split["train"])
        if sorted(per_split["validation"]) != classes:
            raise DataError(f"{root}: train/ and validation/ hold different class folders")
        splits = {s: _samples(per_split[s], classes) for s in SPLITS}
        dataset = Dataset(classes, splits, prepared=True)
    else:
        folders = class_folders(root)
        classes = sorted(folders)
        halves = {name: split_class(paths, seed, scale) for name, paths in folders.items()}
        splits = {s: _samples({n: h[i] for n, h in halves.items()}, classes) for i, s in enumerate(SPLITS)}
        dataset = Dataset(classes, splits, prepared=False)
    _check(root, dataset)
    return dataset


def subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """At most ``limit`` samples, class-balanced and seeded; all of them when ``limit`` is None."""
    if limit is None or limit >= len(samples):
        return samples
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    picked: list[Sample] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        picked += group[: max(1, round(limit * len(group) / len(samples)))]
    return sorted(picked, key=lambda s: (s.label, s.path))[: max(limit, len(by_label))]


def _samples(folders: dict[str, list[Path]], classes: list[str]) -> list[Sample]:
    return [Sample(p, classes.index(name)) for name in classes for p in folders.get(name, [])]


def _check(root: Path, dataset: Dataset) -> None:
    if len(dataset.classes) < 2:
        raise DataError(f"{root}: needs at least 2 class folders of images, found {len(dataset.classes)}")
    for split, samples in dataset.splits.items():
        counts = {c: 0 for c in dataset.classes}
        for s in samples:
            counts[dataset.classes[s.label]] += 1
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise DataError(f"{root}: no images for class {empty[0]!r} in the {split} split")


def select(dataset: Dataset, limit: int | None, seed: int) -> dict[str, list[Sample]]:
    """Each split's samples; with ``limit`` (``DataSpec.subset``), at most that many training photos and a 4:1
    validation share, class-balanced and seeded (pass ``DataSpec.seed``), as the built-in loaders apply it."""
    if limit is None:
        return dataset.splits
    return {"train": subset(dataset.splits["train"], limit, seed),
            "validation": subset(dataset.splits["validation"], max(len(dataset.classes), limit // 4), seed)}


def check_apart(data: Path, out: Path) -> None:
    """Refuse an output folder inside the data folder (it would become a class of photos) and the reverse."""
    data, out = data.resolve(), out.resolve()
    if out.is_relative_to(data):
        raise DataError(f"--out {out} is inside --data {data}: its files would be read as a class of photos; "
                        "choose an --out outside the data folder")
    if data.is_relative_to(out):
        raise DataError(f"--data {data} is inside --out {out}: the run writes there; choose an --out outside the "
                        "data folder")
