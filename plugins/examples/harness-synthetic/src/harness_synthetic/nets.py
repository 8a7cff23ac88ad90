"""The ``tinycnn`` network (imported by :meth:`harness_synthetic.models.TinyCNNFamily.build`, so that loading the
plugin does not import torch)."""

from __future__ import annotations

import torch
from torch import nn


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
