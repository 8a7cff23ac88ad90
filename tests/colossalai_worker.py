"""Run under torchrun by tests/test_colossalai_backend.py, in the environment that has Colossal-AI.

``loop PHOTOS OUT CLIP``: the Backend protocol of ``colossalai-ddp`` fp32 on real photos (32 px): prepare,
two micro-batches (the first under no_sync), step with clipping, all_reduce, save, load.
``claims``: what Colossal-AI 0.5.0 does on this CPU for each combination ``can_run`` refuses.
Rank 0 prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.api import DeviceInfo
from harness.datasets import discover, subset
from harness_plugins.colossalai_backend import ColossalAI

CPU = DeviceInfo("cpu", "cpu")


def photo_batch(root: Path, count: int, size: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of ``count`` real training photos, resized to ``size``, normalised to [0, 1]."""
    samples = subset(discover(root).splits["train"], count, seed=0)[rank::world]
    arrays = [np.asarray(Image.open(s.path).convert("RGB").resize((size, size))) for s in samples]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return images, torch.tensor([s.label for s in samples])


def tiny_model(classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, classes))


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def loop(photos: Path, out: Path, clip: float) -> dict[str, object] | None:
    backend = ColossalAI("ddp").create(CPU, "fp32", {})
    model = tiny_model()
    model, optimizer = backend.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    images, labels = photo_batch(photos, 16, 32, backend.rank, backend.world_size)
    losses = []
    for i, (x, y) in enumerate(zip(images.chunk(2), labels.chunk(2), strict=True)):
        with backend.no_sync(model) if i == 0 else nullcontext(), backend.autocast():
            loss = F.cross_entropy(model(x), y)
            backend.backward(loss / 2)
        losses.append(loss.item())
    before = flat(model)
    backend.step(model, optimizer, clip or None)
    after = flat(model)
    mean = backend.all_reduce(after.clone()) / backend.world_size
    processes = backend.all_reduce(torch.ones(1)).item()
    backend.save(out, model, optimizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    backend.load(out, model, optimizer)
    restored = torch.equal(flat(model), after)
    rank, world = backend.rank, backend.world_size
    backend.close()
    if rank != 0:
        return None
    return {"world_size": world, "processes": processes, "losses": losses,
            "max_update": (after - before).abs().max().item(), "ranks_agree": torch.allclose(mean, after),
            "restored": restored, "grads_cleared": all(p.grad is None or not p.grad.any() for p in model.parameters()),
            "files": sorted(p.name for p in out.iterdir())}


def attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc} @ {Path(traceback.extract_tb(exc.__traceback__)[-1].filename).name}"
    return "ok"


def batchnorm_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 5))


def train_step(variant: str, precision: str, optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
               build: Callable[[], torch.nn.Module] = tiny_model) -> None:
    backend = ColossalAI(variant).create(CPU, precision, {})
    model = build()
    model, opt = backend.prepare(model, optimizer(model.parameters(), lr=0.1))
    with backend.autocast():
        loss = F.cross_entropy(model(torch.rand(4, 3, 16, 16)).float(), torch.tensor([0, 1, 2, 3]))
    backend.backward(loss)
    backend.step(model, opt, None)


def claims() -> dict[str, str]:
    from colossalai.booster import Booster
    from colossalai.booster.plugin import GeminiPlugin, TorchDDPPlugin

    found = {"ddp-fp32": attempt(lambda: train_step("ddp", "fp32"))}  # also starts the process group
    found["ddp-bf16"] = attempt(lambda: Booster(plugin=TorchDDPPlugin(), mixed_precision="bf16"))
    found["ddp-fp16"] = attempt(lambda: train_step("ddp", "fp16"))
    for variant in ("zero1", "zero2"):
        found[f"{variant}-fp32"] = attempt(lambda v=variant: train_step(v, "fp32"))
        found[f"{variant}-bf16"] = attempt(lambda v=variant: train_step(v, "bf16"))
    found["gemini-bf16"] = attempt(lambda: train_step("gemini", "bf16", torch.optim.AdamW))
    found["gemini-fp32"] = attempt(lambda: GeminiPlugin(precision="fp32"))
    found["ddp-batchnorm"] = attempt(lambda: Booster(plugin=TorchDDPPlugin()).boost(batchnorm_model()))
    found["adapter-batchnorm"] = attempt(lambda: train_step("ddp", "fp32", build=batchnorm_model))
    return found


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    if argv[0] == "loop":
        report = loop(Path(argv[1]), Path(argv[2]), float(argv[3]))
    else:
        report = claims()
        report = report if dist.get_rank() == 0 else None
    if report is not None:
        print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
