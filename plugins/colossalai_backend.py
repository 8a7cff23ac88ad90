"""Colossal-AI backends: the Booster with TorchDDPPlugin, LowLevelZeroPlugin (ZeRO-1/2) or GeminiPlugin.

Registered names: ``colossalai-ddp``, ``colossalai-zero1``, ``colossalai-zero2``, ``colossalai-gemini``.
Colossal-AI is imported only when a backend is created, so the harness works without it. Colossal-AI 0.5.0
pins torch<=2.5.1, so the backends declare the environment their cells run in (:data:`ENVIRONMENT`, built by
the harness from ``plugins/constraints/colossalai.txt``, shipped with this package; docs/environments.md).

What Colossal-AI 0.5.0 cannot do is decided in :meth:`ColossalAI.can_run`, before a cell starts, with
the reason measured here (see the README's capability matrix):

- on CPU only TorchDDPPlugin runs (gloo); LowLevelZero and Gemini need CUDA;
- Booster ``mixed_precision="fp16"`` needs CUDA (the CPU accelerator's ``autocast()`` returns a class);
- Booster ``mixed_precision="bf16"`` is an empty stub (``BF16MixedPrecision`` cannot be instantiated);
- Gemini supports fp16 and bf16 only, and only Colossal-AI's Adam optimizers.

``bf16-autocast`` is not a Colossal-AI precision: it is Colossal-AI DDP (fp32 weights) with the forward
under ``torch.autocast(bfloat16)``, named apart so reports never call it Colossal-AI bf16.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.api import CannotRun, DeviceInfo, Recipe, load_weights, weights_only
from harness.hookspecs import hookimpl
from harness_plugins._distributed import all_reduce, free_port, nnodes_problem

if TYPE_CHECKING:
    import torch

MEASURED_VERSION = "0.5.0"
CONSTRAINTS = Path(__file__).parent / "constraints" / "colossalai.txt"
#: The environment the backends' cells run in, unless the harness's own already has this Colossal-AI.
ENVIRONMENT = {"name": "colossalai", "requires": [f"colossalai=={MEASURED_VERSION}"], "constraints": str(CONSTRAINTS)}
INSTALL_HINT = ("its cells run in the environment 'colossalai', which harness run builds (docs/environments.md); "
                "by hand: pip install -e '.[colossalai]' -c plugins/constraints/colossalai.txt in a separate "
                "environment (it pins torch 2.5.1)")
AUTOCAST_BF16 = "bf16-autocast"

#: backend params each variant accepts, with what they set
PARAMS = {
    "ddp": {"bucket_cap_mb", "find_unused_parameters", "static_graph", "gradient_as_bucket_view",
            "nnodes"},  # nnodes: harness.fleet runs the cell across nodes; not a Booster argument
    "zero1": {"reduce_bucket_size_in_m", "overlap_communication", "cpu_offload", "initial_scale"},
    "zero2": {"reduce_bucket_size_in_m", "overlap_communication", "cpu_offload", "initial_scale"},
    "gemini": {"placement_policy", "shard_param_frac", "offload_optim_frac", "offload_param_frac", "initial_scale",
               "max_norm", "enable_gradient_accumulation"},
}
NEEDS_CUDA = {
    "zero1": "LowLevelZeroPlugin (ZeRO-1) needs CUDA: Colossal-AI 0.5.0 supports it on cuda/npu only "
             "(on CPU its optimizer stops at 'AssertionError: device is required')",
    "zero2": "LowLevelZeroPlugin (ZeRO-2) needs CUDA: Colossal-AI 0.5.0 supports it on cuda/npu only "
             "(on CPU its optimizer stops at 'AssertionError: device is required')",
    "gemini": "GeminiPlugin needs CUDA: Colossal-AI 0.5.0 supports it on cuda/npu only (on CPU its HybridAdam finds "
              "no usable CPU Adam kernel, and boost() stops at 'this method is not supported for cpu accelerator')",
}
DDP_BF16_STUB = ("Colossal-AI 0.5.0 has no bf16 mixed precision for the Booster: BF16MixedPrecision is an empty "
                 "stub (Booster(mixed_precision='bf16') raises TypeError: can't instantiate abstract class); "
                 f"use precision {AUTOCAST_BF16} (Colossal-AI DDP under torch.autocast) or "
                 "colossalai-zero1/zero2/gemini bf16 on CUDA")
DDP_FP16_CPU = ("Colossal-AI 0.5.0 fp16 mixed precision (FP16TorchMixedPrecision) needs CUDA: on CPU the "
                "accelerator's autocast() returns the nullcontext class, so the first forward raises TypeError")
BATCHNORM_CPU = ("colossalai-ddp cannot train a BatchNorm model on CPU: TorchDDPPlugin converts BatchNorm to "
                 "SyncBatchNorm, and torch DDP refuses it on CPU ('SyncBatchNorm layers only work with GPU modules')")
GEMINI_FP32 = "GeminiPlugin supports only fp16 and bf16 in Colossal-AI 0.5.0 (its parameters live in fp16/bf16 chunks)"
GEMINI_SGD = ("GeminiPlugin accepts only Colossal-AI's Adam optimizers (HybridAdam, FusedAdam, CPUAdam) in "
              "Colossal-AI 0.5.0; this recipe uses optimizer {optimizer!r}: use optimizer = 'adamw'")


def installed_version() -> str | None:
    """Colossal-AI's installed version, read from package metadata (no import)."""
    try:
        return metadata.version("colossalai")
    except metadata.PackageNotFoundError:
        return None


def precision_blocker(variant: str, device: DeviceInfo, precision: str) -> str | None:
    """Why ``variant`` cannot train in ``precision`` on ``device`` (None if it can)."""
    if variant == "ddp" and precision == "bf16":
        return DDP_BF16_STUB
    if variant == "gemini" and precision == "fp32":
        return GEMINI_FP32
    if device.type == "cpu":
        if variant in NEEDS_CUDA:
            return NEEDS_CUDA[variant]
        if precision == "fp16":
            return DDP_FP16_CPU
    return None  # whether the device runs the precision well at all: harness.devices decides


def recipe_blocker(variant: str, recipe: Recipe | None) -> str | None:
    """Why ``variant`` cannot train with ``recipe`` (None if it can, or if the recipe is not known yet)."""
    if recipe is not None and variant == "gemini" and recipe.optimizer != "adamw":
        return GEMINI_SGD.format(optimizer=recipe.optimizer)
    return None


def ensure_rendezvous_env() -> None:
    """Set torchrun's variables for a single process started without torchrun (tests, notebooks)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))


class ColossalAIBackend:
    """A Colossal-AI Booster behind the harness's :class:`harness.api.Backend` protocol."""

    def __init__(self, variant: str, device: DeviceInfo, precision: str, params: Mapping[str, Any],
                 recipe: Recipe | None = None) -> None:
        import torch
        import torch.distributed as dist
        from colossalai.accelerator import get_accelerator, set_accelerator

        self.variant, self.precision, self.params = variant, precision, dict(params)
        self.warnings: list[str] = []
        ensure_rendezvous_env()
        if device.type == "cpu":
            set_accelerator("cpu")  # also on a CUDA machine when the cell asks for the CPU
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            import colossalai

            colossalai.launch_from_torch(backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(get_accelerator().get_current_device())
        self.max_norm = float(recipe.clip_grad_norm or 0.0) if recipe else float(params.get("max_norm", 0.0))
        self.accumulate = (recipe.accumulation > 1) if recipe else bool(params.get("enable_gradient_accumulation"))
        self.booster = self._booster()
        self.optimizer: Any = None

    def _booster(self) -> Any:
        from colossalai.booster import Booster
        from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin, TorchDDPPlugin

        kwargs = {k: v for k, v in self.params.items()
                  if k not in ("max_norm", "enable_gradient_accumulation", "nnodes")}
        if self.variant == "ddp":
            mixed = "fp16" if self.precision == "fp16" else None
            return Booster(plugin=TorchDDPPlugin(**kwargs), mixed_precision=mixed)
        if self.variant in ("zero1", "zero2"):
            stage = 1 if self.variant == "zero1" else 2
            return Booster(plugin=LowLevelZeroPlugin(stage=stage, precision=self.precision, **kwargs))
        return Booster(plugin=GeminiPlugin(precision=self.precision, max_norm=self.max_norm,
                                           enable_gradient_accumulation=self.accumulate, verbose=False, **kwargs))

    # -- the Backend protocol ---------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        refusal = model_blocker(self.variant, self.device, model)
        if refusal:  # the runner skips such cells before they start (check_model); direct use lands here
            raise CannotRun(refusal)
        if self.variant == "gemini":
            optimizer = hybrid_adam(model, optimizer)
        model, optimizer, *_ = self.booster.boost(model, optimizer)
        self.optimizer = optimizer
        return model, optimizer

    def autocast(self) -> AbstractContextManager[Any]:
        """DDP fp16: the autocast Colossal-AI's AMP module applies, so the loss is computed as in torch AMP."""
        import torch

        if self.variant == "ddp" and self.precision == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        if self.precision == AUTOCAST_BF16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()  # ZeRO and Gemini run the model itself in fp16/bf16 and cast its inputs

    def backward(self, loss: torch.Tensor) -> None:
        self.booster.backward(loss, self.optimizer)

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """Skip the gradient all-reduce while accumulating, where the plugin supports it.

        ZeRO-2 reduce-scatters on every backward and accumulates its gradient partitions (it refuses
        no_sync); Gemini accumulates when built with ``enable_gradient_accumulation``.
        """
        if self.variant in ("ddp", "zero1"):
            return self.booster.no_sync(model, self.optimizer)
        if self.variant == "gemini" and not self.accumulate:
            raise ValueError("colossalai-gemini: gradient accumulation needs the plugin built with "
                             "enable_gradient_accumulation (backend param, or the recipe passed to create)")
        return nullcontext()

    def step(self, model: torch.nn.Module, optimizer: Any, clip_grad_norm: float | None) -> None:
        clip = float(clip_grad_norm or 0.0)
        if self.variant == "ddp":
            if clip:
                optimizer.clip_grad_by_norm(clip)  # the AMP optimizer unscales first
        elif self.variant in ("zero1", "zero2"):
            optimizer._clip_grad_norm = clip  # LowLevelZeroPlugin(max_norm=...) sets this; read at each step
        elif clip != self.max_norm:
            raise ValueError(f"colossalai-gemini was built with max_norm={self.max_norm}, the step asks "
                             f"clip_grad_norm={clip}: GeminiPlugin fixes clipping at construction")
        optimizer.step()
        optimizer.zero_grad()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce(tensor, self.world_size)

    def save(self, directory: Path, model: Any, optimizer: Any) -> None:
        """Booster checkpoints: unsharded model and optimizer files, written by rank 0."""
        import torch

        self.booster.save_model(model, str(directory / "model.pt"))
        self.booster.save_optimizer(optimizer, str(directory / "optimizer.pt"))
        scaler = getattr(optimizer, "scaler", None)  # DDP fp16: torch's GradScaler inside TorchAMPOptimizer
        if scaler is not None and self.rank == 0:
            torch.save(scaler.state_dict(), directory / "scaler.pt")
        self._barrier()

    def load(self, directory: Path, model: Any, optimizer: Any) -> None:
        """Booster checkpoints, read as weights only: the Booster's own ``torch.load`` would unpickle anything."""
        with weights_only(directory / "model.pt"):
            self.booster.load_model(model, str(directory / "model.pt"))
        with weights_only(directory / "optimizer.pt"):
            self.booster.load_optimizer(optimizer, str(directory / "optimizer.pt"))
        scaler = getattr(optimizer, "scaler", None)
        if scaler is not None:
            scaler.load_state_dict(load_weights(directory / "scaler.pt"))

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()


def model_blocker(variant: str, device: DeviceInfo | torch.device, model: torch.nn.Module) -> str | None:
    """TorchDDPPlugin turns BatchNorm into SyncBatchNorm, which torch's DDP refuses on CPU (any process count)."""
    import torch

    if variant != "ddp" or device.type != "cpu":
        return None
    found = next((n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)), None)
    return None if found is None else f"{BATCHNORM_CPU} (here {found!r})"


def hybrid_adam(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """Gemini takes only Colossal-AI's Adam: AdamW/Adam become HybridAdam with the same hyperparameters."""
    import torch
    from colossalai.nn.optimizer import HybridAdam

    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(GEMINI_SGD.format(optimizer=type(optimizer).__name__))
    group = optimizer.param_groups[0]
    return HybridAdam(model.parameters(), lr=group["lr"], betas=group["betas"], eps=group["eps"],
                      weight_decay=group["weight_decay"], adamw_mode=isinstance(optimizer, torch.optim.AdamW))


@dataclass(frozen=True)
class ColossalAI:
    """One Colossal-AI Booster plugin as a harness backend family."""

    variant: str  # "ddp", "zero1", "zero2" or "gemini"
    environment: ClassVar[dict[str, Any]] = ENVIRONMENT

    @property
    def precisions(self) -> tuple[str, ...]:
        extra = (AUTOCAST_BF16,) if self.variant == "ddp" else ()
        return ("fp32", "fp16", "bf16", *extra)

    def can_run(self, device: DeviceInfo, precision: str, nproc: int, params: Mapping[str, Any],
                recipe: Recipe | None = None) -> str | None:
        problem = self.check_params(params)
        if problem:
            return problem
        if installed_version() is None:
            return f"colossalai is not installed in this environment; {INSTALL_HINT}"
        return precision_blocker(self.variant, device, precision) or recipe_blocker(self.variant, recipe)

    def check_model(self, model: torch.nn.Module, device: DeviceInfo, precision: str) -> str | None:
        return model_blocker(self.variant, device, model)

    def check_params(self, params: Mapping[str, Any]) -> str | None:
        unknown = sorted(set(params) - PARAMS[self.variant])
        if unknown:
            return (f"colossalai-{self.variant} has no parameter {unknown[0]!r} "
                    f"(it takes {', '.join(sorted(PARAMS[self.variant]))})")
        return nnodes_problem(params)

    def create(self, device: DeviceInfo, precision: str, params: Mapping[str, Any],
               recipe: Recipe | None = None) -> ColossalAIBackend:
        return ColossalAIBackend(self.variant, device, precision, params, recipe)


VARIANTS = ("ddp", "zero1", "zero2", "gemini")


@hookimpl
def register_backends(register: Any) -> None:
    for variant in VARIANTS:
        register(f"colossalai-{variant}", ColossalAI(variant))


@hookimpl
def harness_environment() -> dict[str, Any] | None:
    version = installed_version()
    return {"colossalai": version} if version else None
