"""Accuracy and throughput parity of a harness cell with a bare PyTorch loop at the same settings.

The bare loop is what a user would write without the harness: PIL decoding in 2 DataLoader workers,
RandomResizedCrop + flip, AdamW lr 1e-3 wd 0.05, batch 64, cosine LR per step, fp32, timm's model with
``num_classes = 5`` (and ``img_size`` for ViTs). Both train on the harness's split of the photos (the same 4:1,
seeded split, so both validate on the same photos) and validate as the harness does (shorter side to
size / 0.875, centre crop). The harness side is ``harness run`` on a one-cell suite with those settings and the
torchvision loader with 2 workers and ``cache = false``, which decodes every photo every epoch and crops it at
full resolution, as the bare loop does. The loader's default (``cache = true``) keeps each photo decoded at the
validation's resize (shorter side 73 px at 64 px), so its training crops are cut from that smaller image: a
different input, measured with ``--cached`` (``harness-cached``) and reported beside the parity pair.

The bare loop runs with ``OMP_WAIT_POLICY=PASSIVE``, as the harness runs its cells: with OpenMP's default
(spinning) threads a bare loop on a busy 2-core machine trained at a fraction of its speed (no epoch in 5 minutes
here, against ~25 s quiet), which would flatter the harness.

Runs are paired by seed (the seed sets the split, the initialisation and the order on both sides) and
interleaved per model, bare then harness for the first seed, harness then bare for the next, and so on, so a
drift of the machine's speed cancels out of the ratio; one seed's accuracy is noisy (a few points at 3 epochs),
the mean over seeds is what is compared. Throughput is training images per second of training time (evaluation
excluded) over the epochs after the first (warm-up), as the report computes it.

    python benchmarks/parity.py --data ../shared/data/flower_photos --epochs 3 --seeds 0,1,2 [--cached] \
        --json reports/benchmarks/parity-<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; as harness.runner.cell_env

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from harness import envinfo
from harness.datasets import discover

MODELS = ("vit_tiny_patch16_224", "resnet18")
SIZE, BATCH, LR, WD, WORKERS = 64, 64, 1e-3, 0.05, 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SUITE = f"""\
name = "parity"
description = "benchmarks/parity.py: the bare loop's settings"
epochs = {{epochs}}
image_size = {SIZE}
seed = {{seed}}
device = "cpu"
recipe = {{{{ base = "default", optimizer = "adamw", lr = {LR}, weight_decay = {WD}, schedule = "cosine-step", \
batch_size = {BATCH} }}}}

[matrix]
model = ["{{model}}"]
loader = ["tv2"]
backend = ["torch"]
precision = ["fp32"]

[loaders.tv2]
use = "torchvision"
workers = {WORKERS}
cache = {{cache}}
"""


class Photos(Dataset):
    def __init__(self, samples: list[Any], transform: T.Compose) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        with Image.open(sample.path) as image:
            return self.transform(image.convert("RGB")), sample.label


def bare_loop(model_name: str, data: Path, epochs: int, seed: int) -> list[dict[str, float]]:
    """The bare loop; one record per epoch: training throughput and validation accuracy."""
    torch.manual_seed(seed)
    dataset = discover(data, seed=seed)
    normalize = T.Normalize(MEAN, STD)
    train = DataLoader(
        Photos(dataset.splits["train"], T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                                                   normalize])),
        batch_size=BATCH, shuffle=True, drop_last=True, num_workers=WORKERS, persistent_workers=True)
    validation = DataLoader(
        Photos(dataset.splits["validation"], T.Compose([T.Resize(round(SIZE / 0.875)), T.CenterCrop(SIZE),
                                                        T.ToTensor(), normalize])),
        batch_size=BATCH, num_workers=WORKERS, persistent_workers=True)
    kwargs: dict[str, Any] = {"img_size": SIZE} if model_name.startswith("vit") else {}
    model = timm.create_model(model_name, num_classes=len(dataset.classes), **kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train))
    records = []
    for epoch in range(1, epochs + 1):
        model.train()
        images_seen, start = 0, time.perf_counter()
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            images_seen += len(labels)
        train_time = time.perf_counter() - start
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in validation:
                correct += int((model(images).argmax(1) == labels).sum())
                total += len(labels)
        records.append({"epoch": epoch, "train_images": images_seen, "train_time_s": train_time,
                        "val_acc": correct / total})
        print(f"bare {model_name} seed {seed} epoch {epoch}: val_acc {correct / total:.4f} "
              f"{images_seen / train_time:.1f} img/s", flush=True)
    return records


def harness_cell(model_name: str, data: Path, epochs: int, seed: int, scratch: Path, cache: bool
                 ) -> list[dict[str, float]]:
    """``harness run`` on a one-cell suite at the bare loop's settings; its epoch records."""
    suite = scratch / f"parity-{model_name}.toml"
    suite.write_text(SUITE.format(epochs=epochs, model=model_name, seed=seed, cache=str(cache).lower()))
    out = Path(tempfile.mkdtemp(dir=scratch))
    subprocess.run([sys.executable, "-m", "harness.cli", "run", "--suite", str(suite), "--data", str(data),
                    "--out", str(out)], check=True)
    (epochs_file,) = out.glob("cells/*/epochs.jsonl")
    return [json.loads(line) for line in epochs_file.read_text().splitlines()]


def throughput(records: list[dict[str, float]]) -> float:
    steady = records[1:] or records
    return sum(r["train_images"] for r in steady) / sum(r["train_time_s"] for r in steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the flower photos (class folders)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2", help="paired seeds: each gives both sides the same split")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cached", action="store_true", help="also run the loader's default (cache = true)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {"device": envinfo.device_info("cpu").name, "epochs": args.epochs, "seeds": seeds,
                               "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for model_name in args.models.split(","):
            runs: dict[str, list[list[dict[str, float]]]] = {"bare": [], "harness": [], "harness-cached": []}
            for i, seed in enumerate(seeds):  # bare first, then harness first, ...: a drift cancels out
                for side in [*(("bare", "harness") if i % 2 == 0 else ("harness", "bare")),
                             *(["harness-cached"] if args.cached else [])]:
                    records = (bare_loop(model_name, args.data, args.epochs, seed) if side == "bare"
                               else harness_cell(model_name, args.data, args.epochs, seed, Path(scratch),
                                                 cache=side == "harness-cached"))
                    runs[side].append(records)
            summary = {side: {"best_val_acc": [max(r["val_acc"] for r in rs) for rs in side_runs],
                              "throughput_img_s": [throughput(rs) for rs in side_runs]}
                       for side, side_runs in runs.items() if side_runs}
            results["models"][model_name] = {**summary, **parity(summary, "harness")}
            if args.cached:
                results["models"][model_name].update(parity(summary, "harness-cached"))
            print(json.dumps({model_name: results["models"][model_name]}, indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def parity(summary: dict[str, dict[str, list[float]]], side: str) -> dict[str, float]:
    """``side`` against the bare loop over the paired seeds: mean accuracy difference (points) and the geometric
    mean of the per-seed throughput ratios."""
    bare, other = summary["bare"], summary[side]
    points = [100 * (o - b) for o, b in zip(other["best_val_acc"], bare["best_val_acc"], strict=True)]
    ratios = [o / b for o, b in zip(other["throughput_img_s"], bare["throughput_img_s"], strict=True)]
    return {f"{side}_minus_bare_accuracy_points": round(sum(points) / len(points), 2),
            f"{side}_over_bare_throughput": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 4)}


if __name__ == "__main__":
    main()
