"""The ``tinycnn`` model family: small fully convolutional networks for any image size.

Models: ``tinycnn`` (width 16) and ``tinycnn-wide`` (width 64). Suite parameters
(``[models.tinycnn]``): ``width``, ``depth`` (conv blocks, each after the first halves the
resolution and doubles the channels; default 3) and ``drop_rate`` (before the classifier).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WIDTHS = {"tinycnn": 16, "tinycnn-wide": 64}
PARAMS = ("width", "depth", "drop_rate")


class TinyCNN(nn.Module):
    """``depth`` conv-BN-ReLU blocks, global average pooling, dropout, a linear classifier."""

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for block in range(depth):
            out = width * 2**block
            layers += [nn.Conv2d(channels, out, 3, stride=1 if block == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyCNNFamily:
    """The family (implements :class:`harness.api.ModelPlugin`)."""

    def knows(self, name: str) -> bool:
        return name in WIDTHS

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
        unknown = sorted(set(kwargs) - set(PARAMS))
        if unknown:
            raise TypeError(f"model {name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")
        kwargs.setdefault("width", WIDTHS[name])
        return TinyCNN(num_classes, **kwargs)  # fully convolutional: any image_size works
