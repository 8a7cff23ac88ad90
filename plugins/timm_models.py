"""Models from timm: any ``timm.create_model`` name, kwargs from the suite's ``[models.NAME]`` table."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from harness.hookspecs import hookimpl

IMG_SIZE_PREFIXES = ("vit_", "deit_", "beit_", "eva", "swin", "cait_", "xcit_")


@cache
def _names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


class TimmModels:
    """Every architecture timm lists; weights are downloaded only if a suite sets ``pretrained = true``."""

    def knows(self, name: str) -> bool:
        return name in _names()

    def names(self) -> frozenset[str]:
        """Every name it knows (optional for a family): lets ``harness plugins`` find names others answer too."""
        return _names()

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> torch.nn.Module:
        import timm

        if name.startswith(IMG_SIZE_PREFIXES):
            kwargs.setdefault("img_size", image_size)  # position embeddings sized for the suite's images
        try:
            return timm.create_model(name, num_classes=num_classes, **kwargs)
        except OSError as exc:  # pretrained weights asked for, but the hub is unreachable
            raise RuntimeError(f"timm could not fetch pretrained weights for {name!r} (offline?): {exc}") from exc


@hookimpl
def register_models(register: Any) -> None:
    register("timm", TimmModels())
