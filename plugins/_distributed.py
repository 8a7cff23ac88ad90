"""Process-group helpers shared by the built-in backends (torch is imported only when they run)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the moment (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nnodes_problem(params: Mapping[str, Any]) -> str | None:
    """Why a backend table's ``nnodes`` (nodes a cell spans, each running ``nproc`` ranks) is unusable."""
    nnodes = params.get("nnodes", 1)
    if isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1:
        return f"nnodes: expected a positive integer (nodes the cell spans), got {nnodes!r}"
    return None


def all_reduce(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """``tensor`` summed over the ``world_size`` processes, as a new tensor (``tensor`` itself on one process)."""
    if world_size <= 1:
        return tensor
    import torch.distributed as dist

    total = tensor.clone()
    dist.all_reduce(total)
    return total
