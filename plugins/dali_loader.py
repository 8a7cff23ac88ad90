"""NVIDIA DALI loader: image folders or TFRecords, decoded and augmented on the CPU or the GPU.

A counterpart of the torchvision loader with the same photos, labels and transforms:

* photos and labels are :func:`harness.datasets.discover` + :func:`harness.datasets.select`, as the
  torchvision loader's: the ``file`` reader reads them, the ``tfrecord`` reader reads their records
  from ``<data>/tfrecord`` (``harness data prepare --tfrecord``), matched by label and
  ``image/filename``; ``image/class/label`` is 1-based, as in imagenet-tools, and is shifted to 0-based;
* train: random-resized crop (area 0.08-1, aspect 3/4-4/3, bilinear) + horizontal flip p=0.5,
  optionally RandAugment (n=2, m=9 of 31 bins, fill 0 as torchvision);
* validation: resize of the shorter side to ``round(size / 0.875)`` (bilinear, antialiased, long
  side truncated as torchvision does) + centre crop (offset rounded half-to-even as torchvision);
* batches are ``(uint8 NCHW images, int64 labels)``: the engine normalises on the device.
  Mixup is NOT applied here: the engine applies it on the device, identically for every loader.

Epochs and shards: the file list is shuffled once with the cell's seed (so that DALI's contiguous
shards hold every class) and split into ``world_size`` shards by ``torch.distributed`` rank; the
shards of one epoch are disjoint and cover the split. In training DALI moves every rank to the next
shard each epoch (as DistributedSampler reshuffles) and shuffles within it; validation shards stay
put. Validation yields every photo of this rank's shard exactly once per epoch
(``LastBatchPolicy.PARTIAL`` + ``pad_last_batch``). Training (``last_batch="drop"``, the default)
drops the last incomplete batch; its list is cut to a multiple of ``world_size`` first so that
every rank runs the same number of steps (DDP needs that). ``last_batch="partial"`` keeps it.

Suite params: ``reader`` ("file" | "tfrecord"), ``decode`` ("cpu" | "gpu"), ``num_threads``
(default: the CPU count over torchrun's processes per node), ``prefetch`` (pipeline queue depth,
default 2), ``last_batch`` ("drop" | "partial"), ``initial_fill`` (shuffle buffer, default 1024),
``fast_idct`` (libjpeg-turbo's fast IDCT on the CPU, default False), ``record_sources`` (keep each
epoch's sample names on the iterables, for tests). The resolved values are in ``DataSplits.info``.

DALI 1.x (``nvidia-dali-cuda110==1.34.0``) and 2.x (``nvidia-dali-cuda120``) differ here:
``device_id=None`` selects a CPU-only pipeline on both, ``types.CPU_ONLY_DEVICE_ID`` fails on 2.x;
2.x defaults to the dynamic executor (1.34 has no ``exec_dynamic`` argument, so none is passed);
``nvidia.dali.auto_aug`` and ``enable_conditionals`` exist in both and run on the CPU in both.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import DataSpec, DataSplits, DeviceInfo, usable_cpus
from harness.datasets import DataError, Dataset, Sample, discover, select, subset
from harness.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

READERS = ("file", "tfrecord")
DECODES = ("cpu", "gpu")
LAST_BATCH = ("drop", "partial")
NOT_INSTALLED = "nvidia-dali is not installed: pip install 'harness[dali]' (or 'harness[dali-cuda110]')"
TFRECORD_NOT_INSTALLED = ("reader=tfrecord writes and indexes TFRecords with the 'tfrecord' package, which is not "
                          "installed: pip install 'harness[dali]' (or pip install tfrecord)")
VAL_RESIZE_RATIO = 0.875  # validation resizes the shorter side to round(image_size / 0.875), as torchvision's
LABEL_KEY = "image/class/label"
IMAGE_KEY = "image/encoded"
NAME_KEY = "image/filename"


@dataclass(frozen=True)
class DaliParams:
    """The suite's loader params, validated; the resolved values are recorded with the results."""

    reader: str = "file"
    decode: str = "cpu"
    num_threads: int = 0  # 0: usable_cpus() // LOCAL_WORLD_SIZE
    prefetch: int = 2
    last_batch: str = "drop"
    initial_fill: int = 1024
    fast_idct: bool = False
    record_sources: bool = False

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> DaliParams:
        """Validate ``params``; a ``ValueError`` names the offending field."""
        known = cls.__dataclass_fields__
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"dali loader: unknown param {unknown[0]!r} (known: {', '.join(sorted(known))})")
        p = cls(**params)
        for name, allowed in (("reader", READERS), ("decode", DECODES), ("last_batch", LAST_BATCH)):
            if getattr(p, name) not in allowed:
                raise ValueError(f"dali loader: param {name}={getattr(p, name)!r} is not one of {', '.join(allowed)}")
        for name in ("num_threads", "prefetch", "initial_fill"):
            value = getattr(p, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "num_threads" else 1):
                raise ValueError(f"dali loader: param {name}={value!r} must be a positive integer")
        return p

    def resolved(self) -> DaliParams:
        """These params with defaults that depend on the machine filled in."""
        from dataclasses import replace

        per_process = usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return replace(self, num_threads=self.num_threads or max(1, per_process))


def dali_version() -> str | None:
    """The installed DALI distribution's version, without importing it."""
    for dist in ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110", "nvidia-dali"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def dali_installed() -> bool:
    return installed("nvidia.dali")


class DaliLoader:
    """The ``dali`` loader plugin (:class:`harness.api.LoaderPlugin`)."""

    harness_extra = "dali"  # an environment its cells run in gets the harness with its dali extra (DALI, tfrecord)

    def check_params(self, params: Mapping[str, Any]) -> str | None:
        try:
            DaliParams.parse(params)
        except (TypeError, ValueError) as exc:
            return str(exc)
        return None

    def can_run(self, device: DeviceInfo, params: Mapping[str, Any]) -> str | None:
        if problem := self.check_params(params):
            return problem
        if not dali_installed():
            return NOT_INSTALLED
        if params.get("reader") == "tfrecord" and not installed("tfrecord"):
            return TFRECORD_NOT_INSTALLED
        if params.get("decode") == "gpu" and device.type != "cuda":
            return "decode=gpu needs CUDA; this machine has none"
        return None

    def build(self, spec: DataSpec) -> DataSplits:
        p = DaliParams.parse(spec.params).resolved()
        dataset = discover(spec.data_dir)
        chosen = select(dataset, spec.subset, spec.seed)  # the torchvision loader's photos
        if p.reader == "tfrecord" and not (spec.data_dir / "tfrecord").is_dir():
            spec = replace(spec, root=cached_tfrecords(dataset.classes, chosen))
        splits = {}
        for split in ("train", "validation"):
            train = split == "train"
            if p.reader == "tfrecord":
                src = _tfrecord_source(spec, chosen[split], train, len(dataset.classes))
            else:
                src = _file_source(spec, chosen[split], train)
            splits[split] = DaliSplit(spec, p, src, train=train)
        result = DataSplits(
            train=splits["train"],
            validation=splits["validation"],
            classes=list(dataset.classes),
            train_size=splits["train"].shard_size,
            validation_size=splits["validation"].shard_size,
        )
        result.info = {"dali": dali_version(), **asdict(p)}
        return result


def cached_tfrecords(classes: list[str], chosen: dict[str, list[Sample]]) -> Path:
    """TFRecords of the chosen photos for a folder that has none, written once into the harness cache.

    The cache key covers every photo's path, size, mtime and label; concurrent ranks race safely
    (each writes a temporary directory, the first rename wins).
    """
    from harness.paths import cache_dir
    from harness.prepare.tfrecord import write_tfrecords

    key = hashlib.sha256()
    for split in sorted(chosen):
        for s in chosen[split]:
            stat = s.path.stat()
            key.update(f"{split}|{s.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{s.label}\n".encode())
    root = cache_dir() / "tfrecord" / key.hexdigest()[:16]
    if not (root / "tfrecord").is_dir():
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        write_tfrecords(Dataset(list(classes), chosen, prepared=True), tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


@dataclass
class ReaderSource:
    """What one split's DALI reader reads: files+labels, or TFRecords+indexes, already ordered."""

    kind: str
    size: int  # photos in the split (after the subset and the cut for equal shards)
    files: list[str] | None = None
    labels: list[int] | None = None
    records: list[str] | None = None
    indexes: list[str] | None = None
    tmpdir: tempfile.TemporaryDirectory[str] | None = None  # holds filtered index files
    photos: dict[tuple[int, str], str] | None = None  # (0-based label, image/filename) -> the photo's path


def _cut(items: list[Any], spec: DataSpec, train: bool) -> list[Any]:
    """Training lists are cut to a multiple of world_size so that every rank runs as many steps."""
    return items[: len(items) - len(items) % spec.world_size] if train else items


def _file_source(spec: DataSpec, chosen: list[Sample], train: bool) -> ReaderSource:
    """The photos in a seeded order, so that DALI's contiguous shards hold every class."""
    samples = list(chosen)
    random.Random(spec.seed).shuffle(samples)
    samples = _cut(samples, spec, train)
    return ReaderSource("file", len(samples), files=[str(s.path) for s in samples], labels=[s.label for s in samples])


def _index_lines(index: Path | str) -> list[str]:
    lines = [line for line in Path(index).read_text().splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        if len(line.split()) != 2:
            raise DataError(f"{index}:{n}: expected 'offset size', got {line!r}")
    return lines


def scan_tfrecords(records: list[str], indexes: list[str], num_classes: int) -> list[tuple[int, str]]:
    """Every record's ``(0-based label, image/filename)``, read by a DALI pipeline that decodes no image."""
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    from nvidia.dali import pipeline_def

    total = sum(len(_index_lines(i)) for i in indexes)
    features = {
        LABEL_KEY: tfrec.FixedLenFeature([1], tfrec.int64, -1),
        NAME_KEY: tfrec.FixedLenFeature((), tfrec.string, ""),
    }

    @pipeline_def(batch_size=min(256, total), num_threads=1, device_id=None, prefetch_queue_depth=1)
    def scan():
        out = fn.readers.tfrecord(path=records, index_path=indexes, features=features, pad_last_batch=True)
        return out[LABEL_KEY], fn.pad(out[NAME_KEY], fill_value=0)

    pipe = scan()
    pipe.build()
    found: list[tuple[int, str]] = []
    while len(found) < total:
        labels, names = pipe.run()
        found += [(int(labels.at(i)[0]) - 1, bytes(names.at(i)).rstrip(b"\0").decode()) for i in range(len(labels))]
    found = found[:total]
    bad = [label + 1 for label, _ in found if not 0 <= label < num_classes]
    if bad:
        raise DataError(f"{records[0]}: {LABEL_KEY}={bad[0]} is outside 1..{num_classes} (labels are 1-based)")
    return found


def _tfrecord_source(spec: DataSpec, chosen: list[Sample], train: bool, num_classes: int) -> ReaderSource:
    """The split's records (written shuffled by ``harness data prepare``); a subset or a cut writes
    filtered index files that list only the chosen photos' records, matched by (label, file name)."""
    from harness.prepare.tfrecord import tfrecord_files

    split = "train" if train else "validation"
    records, indexes = (list(map(str, x)) for x in tfrecord_files(spec.data_dir, split))
    scanned = scan_tfrecords(records, indexes, num_classes)
    if all(name for _, name in scanned):
        wanted = {(s.label, s.path.name) for s in chosen}
        keep = [key in wanted for key in scanned]
        if sum(keep) != len(chosen):
            raise DataError(
                f"{Path(records[0]).parent}: {sum(keep)} of the {len(chosen)} {split} photos of "
                f"{spec.root} found in its TFRecords; rerun harness data prepare"
            )
    else:  # records without image/filename: a class-balanced seeded subset of the records
        pseudo = [Sample(Path(f"{i}"), label) for i, (label, _) in enumerate(scanned)]
        picked = {int(str(s.path)) for s in subset(pseudo, len(chosen), spec.seed)}
        keep = [i in picked for i in range(len(scanned))]
    positions = _cut([i for i, k in enumerate(keep) if k], spec, train)
    if len(positions) == len(scanned):
        src = ReaderSource("tfrecord", len(positions), records=records, indexes=indexes)
    else:
        src = _filtered(records, indexes, set(positions))
    src.photos = {(s.label, s.path.name): str(s.path) for s in chosen}  # names the photo a record came from
    return src


def _filtered(records: list[str], indexes: list[str], keep: set[int]) -> ReaderSource:
    """Index files listing only the records at the global positions ``keep``."""
    tmp = tempfile.TemporaryDirectory(prefix="harness-dali-idx-")
    used_records, used_indexes, base = [], [], 0
    for f, (record, index) in enumerate(zip(records, indexes, strict=True)):
        lines = _index_lines(index)
        kept = [line for n, line in enumerate(lines) if base + n in keep]
        base += len(lines)
        if kept:
            path = Path(tmp.name) / f"{f:05d}.idx"
            path.write_text("".join(line + "\n" for line in kept))
            used_records.append(record)
            used_indexes.append(str(path))
    return ReaderSource("tfrecord", len(keep), records=used_records, indexes=used_indexes, tmpdir=tmp)


def _reader(src: ReaderSource, spec: DataSpec, p: DaliParams, train: bool) -> tuple[Any, Any]:
    """The DALI reader node: ``(encoded jpegs, 0-based int32 labels)``."""
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    import nvidia.dali.types as types

    common = dict(
        name="reader",
        shard_id=spec.rank,
        num_shards=spec.world_size,
        random_shuffle=train,
        stick_to_shard=not train,  # training moves to the next shard each epoch, validation keeps its own
        initial_fill=p.initial_fill,
        pad_last_batch=True,
        seed=spec.seed + 7919 * spec.rank,
    )
    if src.kind == "file":
        return fn.readers.file(files=src.files, labels=src.labels, **common)
    out = fn.readers.tfrecord(
        path=src.records,
        index_path=src.indexes,
        features={
            IMAGE_KEY: tfrec.FixedLenFeature((), tfrec.string, ""),
            LABEL_KEY: tfrec.FixedLenFeature([1], tfrec.int64, -1),
        },
        **common,
    )
    return out[IMAGE_KEY], fn.cast(out[LABEL_KEY] - 1, dtype=types.INT32)


def _train_images(jpegs: Any, size: int, p: DaliParams, randaugment: bool, min_crop_area: float) -> Any:
    """RandomResizedCrop(scale min_crop_area-1, ratio 3/4-4/3) + RandAugment(2, 9) + flip, uint8 CHW."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    gpu = p.decode == "gpu"
    images = fn.decoders.image_random_crop(
        jpegs,
        device="mixed" if gpu else "cpu",
        output_type=types.RGB,
        random_area=[min_crop_area, 1.0],
        random_aspect_ratio=[3 / 4, 4 / 3],
        num_attempts=10,
        **({} if gpu else {"use_fast_idct": p.fast_idct}),
    )
    images = fn.resize(
        images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8
    )
    if randaugment:
        from nvidia.dali.auto_aug import rand_augment

        # torchvision's RandAugment: 2 ops of magnitude 9 of 31 bins, black fill.
        images = rand_augment.rand_augment(images, n=2, m=9, num_magnitude_bins=31, fill_value=0)
    return fn.crop_mirror_normalize(
        images, dtype=types.UINT8, output_layout="CHW", mirror=fn.random.coin_flip(probability=0.5)
    )


def _validation_images(jpegs: Any, size: int, p: DaliParams) -> Any:
    """torchvision's Resize(int(size/0.875)) on the shorter side + CenterCrop(size), uint8 CHW."""
    import numpy as np
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    gpu = p.decode == "gpu"
    shape = fn.peek_image_shape(jpegs, dtype=types.INT64)  # H, W, C of the encoded image
    h, w = shape[0], shape[1]
    short = round(size / VAL_RESIZE_RATIO)
    # torchvision keeps the shorter side at `short` and truncates the longer one.
    new_h = short * h // dmath.min(h, w)
    new_w = short * w // dmath.min(h, w)
    images = fn.decoders.image(
        jpegs,
        device="mixed" if gpu else "cpu",
        output_type=types.RGB,
        **({} if gpu else {"use_fast_idct": p.fast_idct}),
    )
    images = fn.resize(
        images,
        resize_y=fn.cast(new_h, dtype=types.FLOAT),
        resize_x=fn.cast(new_w, dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=True,
        dtype=types.UINT8,
    )
    # CenterCrop's offset is int(round((extent - size) / 2)): Python rounds half to even.
    top, left = _half_even_half(new_h - size), _half_even_half(new_w - size)
    anchor = fn.cast(fn.stack(top, left), dtype=types.INT32)
    images = fn.slice(images, anchor, np.array([size, size], dtype=np.int32), axes=[0, 1], out_of_bounds_policy="pad")
    return fn.transpose(images, perm=[2, 0, 1], output_layout="CHW")


def _half_even_half(x: Any) -> Any:
    """``round(x / 2)`` with ties to even, for a non-negative integer DataNode ``x``."""
    half = x // 2
    odd = x - 2 * half  # DALI 1.34 has no % operator on DataNodes; 2.x has
    return half + odd * (half - 2 * (half // 2))


def build_pipeline(src: ReaderSource, spec: DataSpec, p: DaliParams, train: bool) -> Any:
    """The split's DALI pipeline; outputs ``images, labels`` (+ ``sources`` if recorded)."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    device_id = None  # CPU-only pipeline; DALI 2.x rejects types.CPU_ONLY_DEVICE_ID, 1.x accepts both
    if p.decode == "gpu":
        device_id = _cuda_device()

    @pipeline_def(enable_conditionals=train and spec.randaugment)
    def pipeline():
        jpegs, labels = _reader(src, spec, p, train)
        if train:
            images = _train_images(jpegs, spec.image_size, p, spec.randaugment, spec.min_crop_area)
        else:
            images = _validation_images(jpegs, spec.image_size, p)
        if p.record_sources:
            return images, labels, fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0)
        return images, labels

    return pipeline(
        batch_size=spec.batch_size,
        num_threads=p.num_threads,
        device_id=device_id,
        seed=spec.seed + 104729 * spec.rank + (0 if train else 1),
        prefetch_queue_depth=p.prefetch,
    )


def _cuda_device() -> int:
    import torch

    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1)
    return torch.cuda.current_device()


class DaliSplit:
    """One split as an iterable of ``(uint8 NCHW images, int64 labels)``; one pass = one epoch."""

    def __init__(self, spec: DataSpec, p: DaliParams, src: ReaderSource, train: bool) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.train = train
        self.src = src  # keeps filtered index files alive
        self.shard_size = _shard_size(src.size, spec.rank, spec.world_size)
        policy = LastBatchPolicy.DROP if train and p.last_batch == "drop" else LastBatchPolicy.PARTIAL
        self.batches = -(-self.shard_size // spec.batch_size)
        if policy == LastBatchPolicy.DROP:
            self.batches = self.shard_size // spec.batch_size
            if self.batches == 0:
                raise DataError(
                    f"{spec.root}: training shard of {self.shard_size} photos is smaller than one batch of "
                    f"{spec.batch_size} with last_batch='drop'; use more photos or last_batch='partial'"
                )
        self.record_sources = p.record_sources
        self.sources: list[str] = []  # last epoch's sample names when record_sources
        outputs = ["images", "labels"] + (["sources"] if p.record_sources else [])
        self._iterator = DALIGenericIterator(
            [build_pipeline(src, spec, p, train)],
            outputs,
            reader_name="reader",
            last_batch_policy=policy,
            auto_reset=True,
            prepare_first_batch=False,
        )

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sources = []
        try:
            for (batch,) in self._iterator:
                if self.record_sources:
                    self.sources += [bytes(row.tolist()).rstrip(b"\0").decode() for row in batch["sources"].cpu()]
                yield batch["images"], batch["labels"].reshape(-1).long()
        except RuntimeError as exc:  # DALI names the failing operator, never the photo: find it
            message = str(exc).strip().splitlines()[0]
            try:
                culprit = undecodable(self.src)
            except Exception:  # a shard too broken to scan: DALI's own error says the rest
                culprit = None
            raise RuntimeError(f"{culprit or 'DALI'}: {message}") from exc


def undecodable(src: ReaderSource) -> str | None:
    """``"PATH: why"`` for the first photo of the split that does not decode, else None.

    The file reader's PATH is the photo's; the TFRecord reader's is the photo's the record was written from
    (when the record's label and ``image/filename`` match one), then the shard and the record's number in it.
    """
    from harness.prepare.scan import check_image

    for path in src.files or []:
        if reason := check_image(Path(path).read_bytes()):
            return f"{path}: {reason}"
    for shard, index in zip(src.records or [], src.indexes or [], strict=True):
        wanted = {int(line.split()[0]) for line in _index_lines(index)}
        for number, (label, name, data) in _records_at(shard, wanted):
            if reason := check_image(data):
                where = f"record {number} of {shard}"
                photo = (src.photos or {}).get((label, name))
                named = f"{photo} ({where})" if photo else f"{where} (image/filename {name!r})" if name else where
                return f"{named}: {reason}"
    return None


def _records_at(shard: str, offsets: set[int]) -> Iterator[tuple[int, tuple[int, str, bytes]]]:
    """``(number in the shard, (0-based label, image/filename, image/encoded))`` of the shard's records that
    start at ``offsets``, in file order; the others are skipped unread.

    TFRecord framing: u64 length, u32 CRC of the length, the serialized ``Example``, u32 CRC of the data.
    """
    import struct

    from tfrecord import example_pb2

    with open(shard, "rb") as fh:
        size, position, number = os.fstat(fh.fileno()).st_size, 0, 0
        while position < size and offsets:
            fh.seek(position)
            head = fh.read(8)
            if len(head) != 8:
                return
            (length,) = struct.unpack("<Q", head)
            if position in offsets:
                offsets.discard(position)
                fh.seek(4, os.SEEK_CUR)
                example = example_pb2.Example()
                example.ParseFromString(fh.read(length))
                feature = example.features.feature
                labels = feature[LABEL_KEY].int64_list.value
                names = feature[NAME_KEY].bytes_list.value
                images = feature[IMAGE_KEY].bytes_list.value
                yield number, (int(labels[0]) - 1 if labels else -1, names[0].decode(errors="replace") if names else "",
                               bytes(images[0]) if images else b"")
            position += 8 + 4 + length + 4
            number += 1


def _shard_size(n: int, rank: int, world_size: int) -> int:
    """Photos in DALI's shard ``rank`` of ``n`` (shards are ``[n*i//w, n*(i+1)//w)``)."""
    return n * (rank + 1) // world_size - n * rank // world_size


@hookimpl
def register_loaders(register: Any) -> None:
    register("dali", DaliLoader())


@hookimpl
def harness_environment() -> dict[str, Any] | None:
    return {"dali": dali_version()}
