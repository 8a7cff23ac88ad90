"""The ``tinycnn`` model family: small fully convolutional networks for any image size.

Models: ``tinycnn`` (width 16) and ``tinycnn-wide`` (width 64). Suite parameters
(``[models.tinycnn]``): ``width``, ``depth`` (conv blocks, each after the first halves the
resolution and doubles the channels; default 3) and ``drop_rate`` (before the classifier).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported in build(): `harness plugins` loads this module without it
    from torch import nn

WIDTHS = {"tinycnn": 16, "tinycnn-wide": 64}
PARAMS = ("width", "depth", "drop_rate")


class TinyCNNFamily:
    """The family (implements :class:`harness.api.ModelPlugin`)."""

    def knows(self, name: str) -> bool:
        return name in WIDTHS

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
        unknown = sorted(set(kwargs) - set(PARAMS))
        if unknown:
            raise TypeError(f"model {name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")
        from harness_synthetic.nets import TinyCNN

        kwargs.setdefault("width", WIDTHS[name])
        return TinyCNN(num_classes, **kwargs)  # fully convolutional: any image_size works
