"""Colossal-AI 0.5.0 Booster plugin x precision on this GPU: one boost and three train steps on a small MLP.

Usage: torchrun --standalone --nproc_per_node=1 colossalai_probe.py  (output: reports/colossalai-h100/probe.log)
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from typing import Any

import colossalai
import torch
from colossalai.booster import Booster
from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin, TorchDDPPlugin
from torch import nn


def make(name: str, precision: str, model: nn.Module) -> tuple[Any, Any]:
    if name == "ddp":
        mixed = None if precision == "fp32" else precision
        return Booster(plugin=TorchDDPPlugin(), mixed_precision=mixed), torch.optim.SGD(model.parameters(), lr=0.1)
    if name.startswith("zero"):
        plugin = LowLevelZeroPlugin(stage=int(name[-1]), precision=precision, max_norm=1.0)
        return Booster(plugin=plugin), torch.optim.SGD(model.parameters(), lr=0.1)
    from colossalai.nn.optimizer import HybridAdam

    start = time.time()
    optimizer = HybridAdam(model.parameters(), lr=1e-3)  # JIT-builds its kernels on first use
    print(f"HybridAdam built in {time.time() - start:.1f}s", flush=True)
    return Booster(plugin=GeminiPlugin(precision=precision, max_norm=1.0)), optimizer


def probe(name: str, precision: str) -> str:
    try:
        model = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.GELU(), nn.Linear(256, 5))
        booster, optimizer = make(name, precision, model)
        model, optimizer, *_ = booster.boost(model, optimizer)
        losses = []
        for _ in range(3):
            x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 5, (32,), device="cuda")
            loss = nn.functional.cross_entropy(model(x).float(), y)
            booster.backward(loss, optimizer)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(round(loss.item(), 3))
        return f"OK losses={losses}"
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return f"FAIL {type(exc).__name__}: {str(exc)[:200]} @ {os.path.basename(where.filename)}:{where.lineno}"


def main() -> None:
    warnings.filterwarnings("ignore")
    colossalai.launch_from_torch(backend="nccl", seed=0, verbose=False)
    for name in ("ddp", "zero1", "zero2", "gemini"):
        for precision in ("fp32", "fp16", "bf16"):
            start = time.time()
            print(f"CELL {name:7s} {precision}: {probe(name, precision)} ({time.time() - start:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
