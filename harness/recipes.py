"""Named training recipes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from harness.api import Recipe

RECIPES: dict[str, Recipe] = {
    # The tutorial's Colossal-AI recipe, exactly (drop 0.1 and fp16 live in the suite).
    "seed": Recipe(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine-epoch",
        batch_size=128,
        accumulation=16,
        clip_grad_norm=1.0,
        mixup_alpha=0.2,
        randaugment=True,
    ),
    # For few epochs on a small set (flowers-cpu): enough optimizer steps (batch 64, no accumulation: 45 per
    # epoch on the flowers split instead of the seed's 1.4), AdamW with half an epoch of warmup, then cosine per
    # step, training crops of at least half the photo; no mixup or RandAugment (they pay off only over many
    # epochs). Chosen by measurement: benchmarks/recipe-search.toml, docs/measurements.md "The tuned recipe".
    "tuned": Recipe(
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        schedule="cosine-step",
        warmup_epochs=0.5,
        batch_size=64,
        min_crop_area=0.5,
    ),
    # Plain defaults: no accumulation, no mixup, no RandAugment.
    "default": Recipe(),
}

CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine-epoch", "cosine-step", "constant")}
#: What the optimizers, the loss and the loaders accept (numbers must also be finite), as the error says it.
LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "a positive learning rate"),
    "momentum": (lambda v: 0 <= v < 1, "a momentum in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a non-negative weight decay"),
    "warmup_epochs": (lambda v: v >= 0, "a non-negative number of epochs"),
    "batch_size": (lambda v: v >= 1, "a positive integer"),
    "accumulation": (lambda v: v >= 1, "a positive integer"),
    "clip_grad_norm": (lambda v: v >= 0, "a positive gradient norm, or 0 for no clipping"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a label smoothing in [0, 1)"),
    "mixup_alpha": (lambda v: v >= 0, "a non-negative mixup alpha (0: no mixup)"),
    "min_crop_area": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
}


def _kind(default: Any) -> type:
    if isinstance(default, (bool, str)):
        return type(default)
    return int if isinstance(default, int) else float  # float fields may also be None


KINDS: dict[str, type] = {f.name: _kind(f.default) for f in fields(Recipe)}


def coerce(name: str, value: Any) -> Any:
    """``value`` as recipe field ``name`` expects it; TypeError/ValueError names what is wrong."""
    kind = KINDS[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"got {value!r}; allowed: {', '.join(CHOICES[name])}")
    if name in LIMITS:
        accepts, expected = LIMITS[name]
        if not (math.isfinite(value) and accepts(value)):
            raise ValueError(f"expected {expected}, got {value!r}")
    return value


def resolve(base: str, overrides: dict[str, Any]) -> Recipe:
    """``RECIPES[base]`` with ``overrides`` applied (already coerced)."""
    return replace(RECIPES[base], **overrides)
