"""The DALI loader on the real flower photos: same photos, labels and validation tensors as the
torchvision loader, every validation photo once per epoch, disjoint covering shards under torchrun.

Runs with either DALI flavour (``nvidia-dali-cuda120`` 2.x or ``nvidia-dali-cuda110==1.34.0``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from harness.api import DataSpec, DeviceInfo
from harness.datasets import Dataset, discover, select
from harness_plugins.dali_loader import NOT_INSTALLED, TFRECORD_NOT_INSTALLED, DaliLoader, DaliParams

CPU = DeviceInfo("cpu", "cpu")
CUDA = DeviceInfo("cuda", "NVIDIA test GPU", (9, 0), True)
needs_dali = pytest.mark.skipif(DaliLoader().can_run(CPU, {}) is not None, reason=NOT_INSTALLED)
# Measured on the flower photos (64 and 160 px): both decoders are libjpeg-turbo with the same
# (accurate) IDCT, so the decoded photos are identical; the resize sizes, filters (triangle,
# antialiased) and crop offsets match, and pixels differ by rounding only: max 1, mean about 0.1.
MAX_ABS_DIFF = 1
MAX_MEAN_DIFF = 0.25


def spec(root: Path, **kw: object) -> DataSpec:
    params = {"num_threads": 2, "record_sources": True, **kw.pop("params", {})}  # type: ignore[dict-item]
    base = dict(root=root, image_size=32, batch_size=8, randaugment=False, seed=0, device=CPU, subset=60)
    return DataSpec(**{**base, **kw, "params": params})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """A prepared directory of 150 real photos (links) with TFRecords, as ``harness data prepare`` writes."""
    from harness.prepare.tfrecord import write_tfrecords

    out = tmp_path_factory.mktemp("flowers")
    raw = discover(photos)
    chosen = select(raw, 120, seed=1)
    for split, samples in chosen.items():
        for s in samples:
            dest = out / split / raw.classes[s.label] / s.path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(s.path)
    write_tfrecords(discover(out), out)
    return out


def test_params_are_checked() -> None:
    loader = DaliLoader()
    assert loader.can_run(CPU, {"reader": "lmdb"}) == "dali loader: param reader='lmdb' is not one of file, tfrecord"
    assert "unknown param 'thread'" in str(loader.can_run(CPU, {"thread": 2}))
    assert "num_threads=-1 must be a positive integer" in str(loader.can_run(CPU, {"num_threads": -1}))
    with pytest.raises(ValueError, match="decode='tpu' is not one of cpu, gpu"):
        DaliParams.parse({"decode": "tpu"})


@needs_dali
def test_gpu_decode_needs_cuda() -> None:
    assert DaliLoader().can_run(CPU, {"decode": "gpu"}) == "decode=gpu needs CUDA; this machine has none"
    assert DaliLoader().can_run(CUDA, {"decode": "gpu", "reader": "tfrecord"}) is None
    assert DaliLoader().can_run(CPU, {"decode": "cpu", "prefetch": 3}) is None


def can_run_without(module: str, params: dict[str, str]) -> str:
    """``DaliLoader.can_run`` in a real interpreter in which ``module`` cannot be imported (a finder refuses it)."""
    code = textwrap.dedent(f"""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r} or name.startswith({module!r} + "."):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Refuse())
        from harness.api import DeviceInfo
        from harness_plugins.dali_loader import DaliLoader
        print(DaliLoader().can_run(DeviceInfo("cpu", "cpu"), {params!r}))
        assert {module!r} not in sys.modules
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_without_dali_the_loader_says_how_to_install() -> None:
    out = can_run_without("nvidia.dali", {"reader": "tfrecord"})
    assert out == NOT_INSTALLED
    assert "pip install 'harness[dali]'" in out


@needs_dali
def test_without_tfrecord_only_the_tfrecord_reader_is_skipped_with_the_install_hint() -> None:
    assert can_run_without("tfrecord", {"reader": "tfrecord"}) == TFRECORD_NOT_INSTALLED
    assert can_run_without("tfrecord", {"reader": "file"}) == "None"


def test_every_dali_extra_brings_what_the_tfrecord_reader_needs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for name in ("dali", "dali-cuda110"):
        assert any(req.startswith("tfrecord") for req in extras[name]), name


@needs_dali
@pytest.mark.parametrize("size", [64, 160])
def test_validation_tensors_match_torchvision(photos: Path, size: int) -> None:
    """The same photos through both loaders' validation transforms: same labels, pixels within 1."""
    from harness_plugins.torchvision_loader import decode, validation_transform

    splits = DaliLoader().build(spec(photos, image_size=size, subset=100))
    expected = {str(s.path): s for s in select(discover(photos), 100, 0)["validation"]}
    transform = validation_transform(size)
    diffs, labels = [], []
    for images, ys in splits.validation:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, size, size) and ys.dtype == torch.int64
        labels += ys.tolist()
        diffs += [img.float() for img in images]
    assert sorted(splits.validation.sources) == sorted(expected)
    assert labels == [expected[src].label for src in splits.validation.sources]
    reference = [transform(decode(src)).float() for src in splits.validation.sources]
    diff = (torch.stack(diffs) - torch.stack(reference)).abs()
    assert diff.max().item() <= MAX_ABS_DIFF, diff.max()
    assert diff.mean().item() <= MAX_MEAN_DIFF, diff.mean()


def _epoch(split: object) -> tuple[list[str], list[int]]:
    labels = [int(y) for _, ys in split for y in ys]  # type: ignore[attr-defined]
    return list(split.sources), labels  # type: ignore[attr-defined]


@needs_dali
@pytest.mark.parametrize("reader", ["file", "tfrecord"])
def test_every_validation_photo_once_per_epoch(prepared: Path, reader: str) -> None:
    splits = DaliLoader().build(spec(prepared, batch_size=7, subset=None, params={"reader": reader}))
    dataset = discover(prepared)
    assert splits.validation_size == len(dataset.splits["validation"]) == 30  # 30 = 4 batches of 7 + 2
    assert len(splits.validation) == 5
    for _ in range(2):
        sources, labels = _epoch(splits.validation)
        assert len(sources) == len(set(sources)) == 30
        assert Counter(labels) == Counter(s.label for s in dataset.splits["validation"])


@needs_dali
@pytest.mark.parametrize("reader", ["file", "tfrecord"])
def test_training_drops_the_last_partial_batch(prepared: Path, reader: str) -> None:
    """A subset of the 120 training photos in batches of 8: full batches only, new order each epoch."""
    chosen = select(discover(prepared), 50, 0)["train"]
    splits = DaliLoader().build(spec(prepared, subset=50, params={"reader": reader}))
    assert splits.train_size == len(chosen) and len(splits.train) == len(chosen) // 8 == 6
    wanted = Counter(s.label for s in chosen)
    orders = []
    for _ in range(2):
        sources, labels = _epoch(splits.train)
        assert len(labels) == len(set(sources)) == 48
        assert not Counter(labels) - wanted  # labels of the chosen photos only
        orders.append(sources)
    assert orders[0] != orders[1]


@needs_dali
def test_partial_last_batch_and_randaugment(prepared: Path) -> None:
    n = len(select(discover(prepared), 50, 0)["train"])
    splits = DaliLoader().build(spec(prepared, subset=50, randaugment=True, params={"last_batch": "partial"}))
    batches = [(x, y) for x, y in splits.train]
    assert [len(y) for _, y in batches] == [8] * (n // 8) + [n % 8]
    assert len(set(splits.train.sources)) == n
    images = torch.cat([x for x, _ in batches])
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32)
    assert images.float().std() > 10  # real, varied pixels


@needs_dali
def test_tfrecord_reader_reads_the_file_readers_photos(prepared: Path) -> None:
    """Same subset, same validation tensors (records hold the original JPEG bytes), same labels."""
    seen = {}
    for reader in ("file", "tfrecord"):
        splits = DaliLoader().build(spec(prepared, subset=40, params={"reader": reader}))
        seen[reader] = sorted(
            (int(y), x.numpy().tobytes()) for xs, ys in splits.validation for x, y in zip(xs, ys, strict=True)
        )
    assert len(seen["file"]) == 10
    assert seen["file"] == seen["tfrecord"]


@needs_dali
@needs_dali
def test_raw_folder_gets_tfrecords_written_once_into_the_cache(photos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    from_records = DaliLoader().build(spec(photos, subset=40, params={"reader": "tfrecord"}))
    written = sorted((tmp_path / "cache" / "tfrecord").glob("*/tfrecord/*.idx"))
    assert [p.name for p in written] == ["train-00000-of-00001.idx", "validation-00000-of-00001.idx"]
    from_files = DaliLoader().build(spec(photos, subset=40))
    assert Counter(_epoch(from_records.validation)[1]) == Counter(_epoch(from_files.validation)[1])
    assert from_records.train_size == from_files.train_size
    DaliLoader().build(spec(photos, subset=40, params={"reader": "tfrecord"}))
    assert sorted((tmp_path / "cache" / "tfrecord").glob("*/tfrecord/*.idx")) == written  # reused


@pytest.mark.slow
@needs_dali
@pytest.mark.parametrize("reader", ["file", "tfrecord"])
def test_shards_under_torchrun_are_disjoint_and_cover(prepared: Path, tmp_path: Path, reader: str) -> None:
    worker = Path(__file__).with_name("dali_shard_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(prepared), str(tmp_path), reader]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    dataset: Dataset = discover(prepared)
    assert [r["validation_size"] for r in ranks] == [15, 15]
    assert [r["train_size"] for r in ranks] == [60, 60]
    for epoch in range(2):
        val = [r[f"validation{epoch}"]["sources"] for r in ranks]
        assert not set(val[0]) & set(val[1])
        assert len(val[0]) + len(val[1]) == len(set(val[0]) | set(val[1])) == len(dataset.splits["validation"])
        labels = ranks[0][f"validation{epoch}"]["labels"] + ranks[1][f"validation{epoch}"]["labels"]
        assert Counter(labels) == Counter(s.label for s in dataset.splits["validation"])
        train = [r[f"train{epoch}"]["sources"] for r in ranks]
        assert len(train[0]) == len(set(train[0])) == len(train[1]) == 60  # 15 batches of 4 from each shard
        assert not set(train[0]) & set(train[1])
    # training shards move on each epoch (as DistributedSampler reshuffles): rank 1 reads rank 0's old shard
    assert set(ranks[0]["train0"]["sources"]) == set(ranks[1]["train1"]["sources"])


@pytest.mark.cuda
@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_gpu_decode_matches_cpu_decode(photos: Path) -> None:
    """nvJPEG (mixed) vs libjpeg-turbo decode + GPU resize: the validation tensors agree closely."""
    out = {}
    for decode in ("cpu", "gpu"):
        device = CUDA if decode == "gpu" else CPU
        splits = DaliLoader().build(spec(photos, image_size=64, subset=100, device=device, params={"decode": decode}))
        batches = [(x.cpu(), y.cpu()) for x, y in splits.validation]
        out[decode] = (torch.cat([x for x, _ in batches]).float(), torch.cat([y for _, y in batches]))
        train_x, _ = next(iter(splits.train))
        assert train_x.is_cuda == (decode == "gpu") and train_x.dtype == torch.uint8
    assert torch.equal(out["cpu"][1], out["gpu"][1])
    diff = (out["cpu"][0] - out["gpu"][0]).abs()
    assert diff.mean().item() < 1.5, diff.mean()


@pytest.mark.parametrize("loader", ["torchvision", pytest.param("dali", marks=needs_dali)])
def test_training_crops_honour_the_recipes_smallest_crop_area(tmp_path: Path, loader: str) -> None:
    """Square photos, red left half and blue right half: crops of the whole area keep both colours at the edges
    (flipped or not); ImageNet's 0.08 gives some crops of one colour only."""
    from PIL import Image

    from harness_plugins.torchvision_loader import TorchvisionLoader

    photo = Image.new("RGB", (64, 64), (220, 20, 20))
    photo.paste((20, 20, 220), (32, 0, 64, 64))
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(20):
            photo.save(tmp_path / label / f"{i}.jpg", quality=95)

    def edges(min_crop_area: float) -> list[tuple[bool, bool]]:
        impl = DaliLoader() if loader == "dali" else TorchvisionLoader()
        params = {"num_threads": 2} if loader == "dali" else {"workers": 0}
        splits = impl.build(DataSpec(root=tmp_path, image_size=16, batch_size=8, randaugment=False, seed=0,
                                     device=CPU, params=params, min_crop_area=min_crop_area))
        images = torch.cat([x for _ in range(3) for x, _ in splits.train]).float()
        red = images[:, 0] > images[:, 2]  # N x H x W: the pixel is more red than blue
        return [(bool(r[:, 0].all()) != bool(r[:, -1].all()), bool(r.all() or not r.any())) for r in red]

    assert all(two_colours for two_colours, _ in edges(1.0))
    assert any(one_colour for _, one_colour in edges(0.08))
