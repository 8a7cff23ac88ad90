"""One rank of the DALI sharding test, started by ``torchrun --nproc_per_node=2``.

Builds the ``dali`` loader with rank and world size from torchrun's environment (after joining a
gloo process group, as a DDP cell does), runs two epochs of both splits and writes the samples it
saw to ``OUT/rank<r>.json``. Usage: ``torchrun ... dali_shard_worker.py DATA OUT READER``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from harness.api import DataSpec, DeviceInfo
from harness_plugins.dali_loader import DaliLoader


def main(data: str, out: str, reader: str) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    assert (rank, world_size) == (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    spec = DataSpec(
        root=Path(data), image_size=32, batch_size=4, randaugment=False, seed=0, device=DeviceInfo("cpu", "cpu"),
        rank=rank, world_size=world_size, params={"reader": reader, "num_threads": 1, "record_sources": True},
    )  # fmt: skip
    splits = DaliLoader().build(spec)
    seen: dict[str, object] = {"train_size": splits.train_size, "validation_size": splits.validation_size}
    for epoch in range(2):
        for name in ("train", "validation"):
            split = getattr(splits, name)
            labels = [int(y) for _, ys in split for y in ys]
            seen[f"{name}{epoch}"] = {"sources": split.sources, "labels": labels}
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
