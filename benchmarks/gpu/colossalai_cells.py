"""The Colossal-AI GPU cells of reports/colossalai-h100: vit_tiny on the real photos at 224 px, one GPU.

Usage: python colossalai_cells.py OUT PHOTOS EPOCHS  (ROWS=backend:precision,... runs a subset).
Recipe: the seed's with AdamW (lr 1e-3, weight decay 0.05; GeminiPlugin takes only Adam), batch 128, no
accumulation, clip-grad-norm 1.0 (GeminiPlugin gets it as the backend param max_norm).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness import recipes, runner
from harness.api import CellSpec
from harness.plugins import get_manager

ROWS = [("colossalai-ddp", "fp16"), ("colossalai-ddp", "bf16"), ("colossalai-ddp", "bf16-autocast"),
        ("colossalai-zero1", "fp16"), ("colossalai-zero1", "bf16"), ("colossalai-zero2", "fp16"),
        ("colossalai-zero2", "bf16"), ("colossalai-gemini", "fp16"), ("colossalai-gemini", "bf16"),
        ("torch", "fp16"), ("torch", "bf16")]
MODEL = "vit_tiny_patch16_224"


def cells(data: str, epochs: int, rows: list[tuple[str, ...]]) -> list[CellSpec]:
    recipe = recipes.resolve("seed", {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "batch_size": 128,
                                      "accumulation": 1})
    return [CellSpec(id=f"{MODEL}-torchvision-{b}-{p}", suite="colossalai-gpu", model=MODEL, loader="torchvision",
                     backend=b, precision=p, loader_plugin="torchvision", backend_plugin=b, epochs=epochs,
                     image_size=224, data=data, seed=0, recipe=recipe, nproc=1, device="cuda",
                     model_params={"drop_rate": 0.1},
                     backend_params={"max_norm": 1.0} if b == "colossalai-gemini" else {})
            for b, p in rows]


def main(out: str, data: str, epochs: str) -> None:
    rows = [tuple(r.split(":")) for r in os.environ["ROWS"].split(",")] if os.environ.get("ROWS") else ROWS
    start = time.time()
    for outcome in runner.run_suite(cells(data, int(epochs), rows), Path(out), get_manager()):
        print("RESULT", outcome.cell.id, outcome.status, (outcome.reason or "")[:400], flush=True)
    print("elapsed", round(time.time() - start, 1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
