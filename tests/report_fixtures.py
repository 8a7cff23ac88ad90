"""Write synthetic result directories in the result store schema (version 1) for report tests.

Records are built from the real :class:`harness.api.CellSpec` and :class:`harness.api.EpochRecord`
so a change to those types shows up here.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.api import CellSpec, EpochRecord, Recipe
from harness.store import CellStore

TRAIN_IMAGES = 2936  # the flowers training split

DEVICES = {
    "Tesla T4": {"device_capability": "7.5", "hostname": "gn7-t4"},
    "Tesla P40": {"device_capability": "6.1", "hostname": "gn8-p40"},
}


def make_env(device_name: str = "Tesla T4", **overrides: Any) -> dict[str, Any]:
    """A full environment fingerprint for a one-GPU machine (or ``device_name="cpu"``)."""
    cpu = device_name == "cpu"
    env = {
        "hostname": "cpu-box" if cpu else DEVICES.get(device_name, {}).get("hostname", "gpu-box"),
        "platform": "Linux-5.15-x86_64",
        "python": "3.11.2",
        "cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz",
        "cpu_count": 8,
        "memory_gb": 31.3,
        "device_type": "cpu" if cpu else "cuda",
        "device_name": None if cpu else device_name,
        "device_capability": None if cpu else DEVICES.get(device_name, {}).get("device_capability", "9.0"),
        "device_count": 0 if cpu else 1,
        "driver_version": None if cpu else "535.104.05",
        "cuda_version": "12.1",
        "cudnn_version": "8902",
        "nccl_version": "2.18.1",
        "torch": "2.1.0",
        "torchvision": "0.16.0",
        "timm": "0.9.12",
        "dali": "1.34.0",
        "colossalai": None,
        "pluggy": "1.3.0",
        "pandas": "2.1.4",
        "harness": "0.1.0",
        "git_commit": "0123abc",
    }
    env.update(overrides)
    return env


def make_cell(
    precision: str = "fp16",
    model: str = "vit_tiny_patch16_224",
    loader: str = "torchvision",
    backend: str = "torch",
    **overrides: Any,
) -> CellSpec:
    """A flowers cell with the seed recipe."""
    cell = CellSpec(
        id=f"{model}-{loader}-{backend}-{precision}",
        suite="flowers",
        model=model,
        loader=loader,
        backend=backend,
        precision=precision,
        loader_plugin=loader.split("-")[0],
        backend_plugin=backend.split("-")[0],
        epochs=4,
        image_size=224,
        data="/data/flower_photos",
        seed=0,
        recipe=Recipe(),
    )
    return replace(cell, **overrides)


def make_epochs(
    epoch_times: list[float], train_times: list[float], val_accs: list[float], steps: int = 23, peak_mem_gb: float = 2.5
) -> list[EpochRecord]:
    """Epoch records numbered from 1; wall time accumulates the epoch times."""
    records, wall = [], 0.0
    for i, (epoch_time, train_time, acc) in enumerate(zip(epoch_times, train_times, val_accs, strict=True), 1):
        wall += epoch_time
        records.append(
            EpochRecord(
                epoch=i,
                train_loss=1.5 / i,
                train_acc=acc - 0.05,
                val_loss=1.4 / i,
                val_acc=acc,
                lr=0.1 / i,
                epoch_time_s=epoch_time,
                train_time_s=train_time,
                throughput_img_s=TRAIN_IMAGES / train_time,
                data_wait_s=0.1 * train_time,
                peak_mem_gb=peak_mem_gb + 0.01 * i,
                optimizer_steps=steps,
                train_images=TRAIN_IMAGES,
                wall_time_s=wall,
            )
        )
    return records


def write_cell(
    out: Path,
    cell: CellSpec,
    env: dict[str, Any],
    epochs: list[EpochRecord],
    status: str = "ok",
    reason: str | None = None,
    flops_per_image: float | None = 3.8e9,
    warnings: list[str | dict[str, Any]] | None = None,
    finished_at: str = "2024-05-01T12:00:00+00:00",
    extra: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/cells/<id>/{cell.json,epochs.jsonl,result.json}`` with the result store's own writer
    (:class:`harness.store.CellStore`); ``summary`` adds to the result's summary (e.g. observers' ``extra``);
    ``extra`` adds fields this harness does not write to every line and the result (a newer writer's, or
    per-epoch observer fields: ``{"extra": {"plugin.field": 1.0}}``)."""
    store = CellStore(out, cell.id)
    store.write_cell(cell)
    for record in epochs:
        store.append_epoch(cell, env, record)
    best = max(epochs, key=lambda r: r.val_acc) if epochs else None
    store.write_result(cell, env, status, reason, summary={
        "epochs": len(epochs),
        "best_val_acc": best.val_acc if best else None,
        "best_epoch": best.epoch if best else None,
        "optimizer_steps_per_epoch": float(epochs[0].optimizer_steps) if epochs else None,
        "train_flops_per_image": flops_per_image,
        "warnings": warnings or [],
        **(summary or {}),
    }, started_at="2024-05-01T11:00:00+00:00", finished_at=finished_at)
    if extra:  # fields the store's writer does not know, added as a newer writer would
        lines = store.epochs_path.read_text().splitlines() if epochs else []
        store.epochs_path.write_text("".join(json.dumps({**json.loads(line), **extra}) + "\n" for line in lines))
        store.result_path.write_text(json.dumps({**json.loads(store.result_path.read_text()), **extra}))
    return store.dir


def t4_p40_results(root: Path, p40_env: dict[str, Any] | None = None, p40_epochs: int = 4) -> tuple[Path, Path]:
    """Two result directories, one per machine, with golden numbers (see tests/test_report.py).

    T4: fp16 at exactly 200 img/s after the first epoch, epoch times 20/22/21 s (median 21),
    reaches 62 % at 72 s. P40: fp16 at exactly 100 img/s, median epoch 40 s, never reaches 60 %;
    bf16 skipped. Both: an fp32 cell with accumulation 16 (one optimizer step per epoch).
    """
    t4, p40 = root / "t4", root / "p40"
    env_t4 = make_env("Tesla T4")
    env_p40 = p40_env if p40_env is not None else make_env("Tesla P40")
    write_cell(
        t4,
        make_cell("fp16"),
        env_t4,
        make_epochs([30, 20, 22, 21], [20, 14.68, 14.68, 14.68], [0.30, 0.55, 0.62, 0.61]),
    )
    write_cell(
        p40,
        make_cell("fp16", epochs=p40_epochs),
        env_p40,
        make_epochs([50, 40, 41, 39], [40, 29.36, 29.36, 29.36], [0.30, 0.50, 0.58, 0.59]),
    )
    accumulate = make_cell("fp32", recipe=Recipe(accumulation=16))
    write_cell(t4, accumulate, env_t4, make_epochs([60, 50, 52], [55, 48, 49], [0.2, 0.3, 0.35], steps=1))
    write_cell(p40, accumulate, env_p40, make_epochs([70, 62, 60], [66, 58, 57], [0.2, 0.31, 0.33], steps=1))
    write_cell(
        p40,
        make_cell("bf16"),
        env_p40,
        [],
        status="skipped",
        reason="bf16 needs compute capability >= 8.0 (Tesla P40 is sm_61)",
        flops_per_image=None,
    )
    return t4, p40


COLOSSALAI_MISSING = (
    "colossalai is not installed in this environment; install it in a separate environment: pip install -e "
    "'.[colossalai]' -c constraints/colossalai.txt (it pins torch 2.5.1; see the README section 'Colossal-AI')"
)
DALI_MISSING = "nvidia-dali is not installed: pip install 'harness[dali]' (or 'harness[dali-cuda110]')"
MODELS = {"vit_tiny_patch16_224": 800.0, "resnet18": 1000.0}  # T4 fp32 torch torchvision img/s
LOADERS = {"torchvision": 1.0, "dali-file": 1.3, "dali-tfrecord": 1.25}
BACKENDS = {"torch": 1.0, "torch-ddp2": 1.05, "colossalai-ddp": 0.98, "colossalai-zero2": 0.9}
#: Per device: precision -> speed-up over fp32, or None where the precision is refused (emulated).
PRECISIONS = {"Tesla T4": {"fp32": 1.0, "fp16": 2.2, "bf16": None}, "Tesla P40": {"fp32": 0.7, "fp16": None,
                                                                                 "bf16": 0.75}}


def _matrix_epochs(speed: float, accuracy: float, rng: random.Random) -> list[EpochRecord]:
    """Four epochs at ``speed`` img/s (+-3 % per run), the first 1.5x slower; accuracy in 1/80 steps."""
    speed *= rng.uniform(0.97, 1.03)
    train = [1.5 * TRAIN_IMAGES / speed] + [TRAIN_IMAGES / speed] * 3
    accs = [round(80 * min(accuracy * f + rng.uniform(-0.02, 0.02), 0.99)) / 80 for f in (0.5, 0.8, 0.95, 1.0)]
    return make_epochs([t + 2.0 for t in train], train, accs)


def matrix_results(root: Path, repeats: int = 3) -> list[Path]:
    """A two-device report as users meet it: T4 and P40, each with a main environment (Colossal-AI not installed)
    and a ``colossalai`` one (DALI not installed), 2 models x 3 loaders x 4 backends x 3 precisions, refused
    emulated precisions, the P40's emulated bf16 run anyway (and fast), ``repeats`` seeds per cell.

    Returns the directories in the order a user gives them: T4 main, T4 colossalai, P40 main, P40 colossalai.
    """
    dirs = []
    for device, precisions in PRECISIONS.items():
        for environment in ("default", "colossalai"):
            out = root / f"{DEVICES[device]['hostname']}-{environment}"
            software = {"environment": "colossalai", "torch": "2.5.1", "dali": None, "colossalai": "0.5.0"}
            env = make_env(device, **(software if environment == "colossalai" else {}))
            for model, loader, backend, precision in itertools.product(MODELS, LOADERS, BACKENDS, precisions):
                colossal = backend.startswith("colossalai")
                if environment == "colossalai" and not colossal:
                    continue  # that environment was run for the Colossal-AI cells only
                reason = _matrix_reason(environment, colossal, loader, precision, device)
                for seed in range(repeats):
                    cell = make_cell(precision, model, loader, backend, seed=seed)
                    cell = replace(cell, id=cell.id + (f"-r{seed + 1}" if seed else ""))
                    if reason:
                        write_cell(out, cell, env, [], status="skipped", reason=reason, flops_per_image=None)
                        continue
                    speed = MODELS[model] * LOADERS[loader] * BACKENDS[backend] * precisions[precision]
                    accuracy = 0.55 if model == "resnet18" else 0.45
                    write_cell(out, cell, env, _matrix_epochs(speed, accuracy, random.Random(f"{device}{cell.id}")))
            dirs.append(out)
    return dirs


def _matrix_reason(environment: str, colossal: bool, loader: str, precision: str, device: str) -> str | None:
    if colossal and environment == "default":
        return COLOSSALAI_MISSING
    if loader != "torchvision" and environment == "colossalai":
        return DALI_MISSING
    if PRECISIONS[device][precision] is None:
        return f"{precision} on {device} is emulated. Refused by default: opt in with --allow-emulated"
    return None
