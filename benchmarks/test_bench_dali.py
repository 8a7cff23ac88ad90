"""DALI vs the torchvision loader: training-epoch throughput on the real photos at 224 px.

Each round iterates one loader's training split once (RandomResizedCrop + flip, with or without
RandAugment) over ``HARNESS_BENCH_DALI_PHOTOS`` real photos (default 256) in batches of 64; the
loader is built (and the torchvision cache filled) before the warm-up round. Photos come from
``HARNESS_BENCH_DATA``, ``HARNESS_FLOWERS`` or ``../shared/data/flower_photos``, linked into a prepared directory with
TFRecords (``harness.prepare.tfrecord.write_tfrecords``) so both DALI readers read the same photos.
Images/s is in each benchmark's ``extra_info["throughput_img_s"]`` (photos per median round).

    pytest benchmarks/test_bench_dali.py --benchmark-json=dali.json

``test_dali_cpu_tuning`` sweeps DALI's CPU threads, prefetch depth and IDCT; ``decode=gpu`` cases
run only where CUDA is present (mixed nvJPEG decode + GPU augmentation vs CPU decode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from harness.api import DataSpec, DataSplits, DeviceInfo
from harness.datasets import discover, select

SIZE = 224
BATCH = 64
PHOTOS = int(os.environ.get("HARNESS_BENCH_DALI_PHOTOS", "256"))
ROUNDS = int(os.environ.get("HARNESS_BENCH_DALI_ROUNDS", "3"))
FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flower_photos"
FLOWERS = Path(os.environ.get("HARNESS_FLOWERS", FLOWERS))


def _dali_missing() -> str | None:
    from harness_plugins.dali_loader import DaliLoader

    return DaliLoader().can_run(DeviceInfo("cpu", "cpu"), {})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_dali = pytest.mark.skipif(_dali_missing() is not None, reason=str(_dali_missing()))
needs_cuda = pytest.mark.skipif(not _cuda(), reason="decode=gpu needs CUDA; this machine has none")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``PHOTOS`` training photos (and a quarter as many for validation) linked + written as TFRecords."""
    from harness.prepare.tfrecord import write_tfrecords

    source = Path(os.environ.get("HARNESS_BENCH_DATA") or FLOWERS)
    if not source.is_dir():
        pytest.skip(f"{source}: no photos (set HARNESS_BENCH_DATA)")
    raw = discover(source)
    out = tmp_path_factory.mktemp("bench-photos")
    for split, samples in select(raw, PHOTOS, seed=0).items():
        for s in samples:
            dest = out / split / raw.classes[s.label] / s.path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(s.path.resolve())
    write_tfrecords(discover(out), out)
    return out



@pytest.fixture(autouse=True)
def _record_environment(benchmark: Any, env: dict[str, Any]) -> None:
    """Every benchmark here carries the environment fingerprint in its ``extra_info``, as the others do."""
    benchmark.extra_info["env"] = env

def _device(decode: str = "cpu") -> DeviceInfo:
    if decode == "gpu":
        import torch

        return DeviceInfo("cuda", torch.cuda.get_device_name(), torch.cuda.get_device_capability(), True)
    return DeviceInfo("cpu", "cpu")


def _run(benchmark: Any, time_epochs: Any, loader: Any, root: Path, randaugment: bool, params: dict[str, Any],
         decode: str = "cpu") -> None:
    spec = DataSpec(root=root, image_size=SIZE, batch_size=BATCH, randaugment=randaugment, seed=0,
                    device=_device(decode), params=params)  # fmt: skip
    splits = loader.build(spec)
    images = time_epochs(splits.train, SIZE, ROUNDS, synchronize=decode == "gpu")
    benchmark.extra_info.update({
        "images_per_round": images, "image_size": SIZE, "batch_size": BATCH, "randaugment": randaugment,
        "params": params, "cpu_count": os.cpu_count(), "info": getattr(splits, "info", None),
    })  # fmt: skip
    assert images == splits.train_size // BATCH * BATCH


@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "nocache"])
def test_torchvision(benchmark: Any, time_epochs: Any, photos: Path, randaugment: bool, cache: bool) -> None:
    from harness_plugins.torchvision_loader import TorchvisionLoader

    benchmark.group = f"loader-{'randaugment' if randaugment else 'plain'}"
    _run(benchmark, time_epochs, TorchvisionLoader(), photos, randaugment, {"cache": cache})


class NaiveImageFolder:
    """The baseline users start from: ImageFolder + PIL decoding + DataLoader(num_workers=2), float output."""

    def build(self, spec: DataSpec) -> Any:
        from torch.utils.data import DataLoader
        from torchvision import datasets
        from torchvision import transforms as T

        steps = [T.RandomResizedCrop(spec.image_size), T.RandomHorizontalFlip()]
        steps += [T.RandAugment(num_ops=2, magnitude=9)] if spec.randaugment else []
        steps += [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
        folder = datasets.ImageFolder(str(spec.root / "train"), transform=T.Compose(steps))
        loader = DataLoader(folder, batch_size=spec.batch_size, shuffle=True, num_workers=2, drop_last=True)
        return DataSplits(loader, [], folder.classes, train_size=len(folder), validation_size=0)


@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
def test_naive_imagefolder(benchmark: Any, time_epochs: Any, photos: Path, randaugment: bool) -> None:
    benchmark.group = f"loader-{'randaugment' if randaugment else 'plain'}"
    _run(benchmark, time_epochs, NaiveImageFolder(), photos, randaugment, {})


@needs_dali
@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
@pytest.mark.parametrize("reader", ["file", "tfrecord"])
def test_dali_cpu(benchmark: Any, time_epochs: Any, photos: Path, randaugment: bool, reader: str) -> None:
    from harness_plugins.dali_loader import DaliLoader

    benchmark.group = f"loader-{'randaugment' if randaugment else 'plain'}"
    _run(benchmark, time_epochs, DaliLoader(), photos, randaugment, {"reader": reader})


@needs_dali
@pytest.mark.parametrize(
    "params",
    [{"num_threads": 1}, {"num_threads": 2}, {"num_threads": 4}, {"prefetch": 1}, {"prefetch": 4},
     {"fast_idct": True}],
    ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()),
)  # fmt: skip
def test_dali_cpu_tuning(benchmark: Any, time_epochs: Any, photos: Path, params: dict[str, Any]) -> None:
    from harness_plugins.dali_loader import DaliLoader

    benchmark.group = "dali-cpu-tuning"
    _run(benchmark, time_epochs, DaliLoader(), photos, False, {"reader": "file", **params})


@needs_dali
@needs_cuda
@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_dali_decode(benchmark: Any, time_epochs: Any, photos: Path, randaugment: bool, decode: str) -> None:
    from harness_plugins.dali_loader import DaliLoader

    benchmark.group = f"dali-decode-{'randaugment' if randaugment else 'plain'}"
    _run(benchmark, time_epochs, DaliLoader(), photos, randaugment, {"reader": "file", "decode": decode}, decode)


RA_OPS = ["identity", "translate_x", "shear_x", "rotate", "brightness", "contrast", "color", "sharpness",
          "posterize", "solarize", "equalize", "auto_contrast"]  # fmt: skip


@needs_dali
@pytest.mark.parametrize("op", RA_OPS)
def test_dali_randaugment_op(benchmark: Any, photos: Path, op: str) -> None:
    """Where DALI's CPU RandAugment time goes: decode + resize + one RandAugment op (m=9) on every photo."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.auto_aug import rand_augment
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    augmentation = [a for a in rand_augment.get_rand_augment_suite() if a.name == op]
    geometric = {"fill_value": 0} if op in ("translate_x", "shear_x", "rotate") else {}
    files = [str(s.path) for s in discover(photos).splits["train"]]

    @pipeline_def(enable_conditionals=True, batch_size=BATCH, num_threads=os.cpu_count(), device_id=None, seed=0)
    def pipe():  # type: ignore[no-untyped-def]
        jpegs, labels = fn.readers.file(files=files, name="reader", pad_last_batch=True)
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=SIZE, resize_y=SIZE, antialias=True)
        images = rand_augment.apply_rand_augment(augmentation, images, n=1, m=9, **geometric)
        return images, labels

    loader = DALIGenericIterator([pipe()], ["images", "labels"], reader_name="reader",
                                 last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)  # fmt: skip
    benchmark.group = "dali-randaugment-op"
    count = benchmark.pedantic(lambda: sum(len(b[0]["labels"]) for b in loader), rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info.update({"op": op, "images_per_round": count})
