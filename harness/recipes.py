"""Named training recipes."""

from __future__ import annotations

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
    # Plain defaults: no accumulation, no mixup, no RandAugment.
    "default": Recipe(),
}

CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine-epoch", "cosine-step", "constant")}


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
    return value


def resolve(base: str, overrides: dict[str, Any]) -> Recipe:
    """``RECIPES[base]`` with ``overrides`` applied (already coerced)."""
    return replace(RECIPES[base], **overrides)
