"""The plain PyTorch backend: one process, or DDP under torchrun; fp32, fp16 (autocast + GradScaler), bf16."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist

from harness.api import DeviceInfo, Recipe, load_weights
from harness.hookspecs import hookimpl
from harness_plugins._distributed import all_reduce, nnodes_problem

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    """A thin adapter over torch: DDP when WORLD_SIZE > 1, autocast and GradScaler for AMP."""

    def __init__(self, device: DeviceInfo, precision: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device("cuda", local_rank) if device.type == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        self.dtype = DTYPES.get(precision)
        self.warnings: list[str] = []
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        model = model.to(self.device)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model, optimizer

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        if self.world_size > 1:
            return cast(torch.nn.parallel.DistributedDataParallel, model).no_sync()  # prepare() wrapped it
        return nullcontext()

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None) -> None:
        if clip_grad_norm:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce(tensor, self.world_size)

    def save(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.rank == 0:
            module = getattr(model, "module", model)
            torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": self.scaler.state_dict()}, directory / "torch.pt")
        if self.world_size > 1:
            dist.barrier()

    def load(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        state = load_weights(directory / "torch.pt", map_location=self.device)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Torch:
    """The ``torch`` backend family."""

    precisions = ("fp32", "fp16", "bf16")

    def can_run(self, device: DeviceInfo, precision: str, nproc: int, params: Mapping[str, Any],
                recipe: Recipe | None = None) -> str | None:
        return self.check_params(params)  # which precisions the device runs well: harness.devices decides

    def check_params(self, params: Mapping[str, Any]) -> str | None:
        other = [key for key in params if key != "nnodes"]  # nnodes: harness.fleet runs the cell across nodes
        if other:
            return f"torch backend takes no parameters besides nproc and nnodes, got {', '.join(other)}"
        return nnodes_problem(params)

    def create(self, device: DeviceInfo, precision: str, params: Mapping[str, Any],
               recipe: Recipe | None = None) -> TorchBackend:
        return TorchBackend(device, precision)


@hookimpl
def register_backends(register: Any) -> None:
    register("torch", Torch())
