"""Sanity checks: whether a cell's numbers mean what they claim (:mod:`harness.contract` checks their shape).

A failed check is a warning ``{"code", "message", "disqualifies": True}`` in the cell's result (the report
never picks such a cell, and says why), or, when the suite sets ``strict = true``, the cell's failure. The
checks look at the first batches, the first optimizer steps' losses (read where the engine reads them anyway)
and epoch ends, never at every step:

- ``params-unchanged``: the trainable parameters are bit-for-bit as before training after an epoch (and at
  least :data:`PARAM_STEPS` optimizer steps): the backend never stepped;
- ``loss-not-decreasing``: the training loss of the run's first :data:`LOSS_STEPS` optimizer steps did not
  fall (the second half's mean is not below the first half's);
- ``image-range``: a batch's images, as the loader gave them, are neither uint8 using 0..255 nor normalised
  floats (a float batch in [0, 1] is the classic mistake), or are all one value;
- ``label-range``: the first :data:`LABEL_BATCHES` training batches hold one class only;
- ``near-chance``: the best validation accuracy after the planned epochs is not above chance (one-sided
  binomial test at :data:`NEAR_CHANCE_P`);
- ``mfu-above-peak``: training throughput x FLOPs per image exceeds the device's peak FLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import torch

from harness import devices

PARAM_STEPS = 16  # fp16 loss scalers may skip the first steps; by this many, some step changed the parameters
LOSS_STEPS = 50
LABEL_BATCHES = 4
NEAR_CHANCE_P = 0.05

Problem = tuple[str, str]  # (code, message)


class SanityError(RuntimeError):
    """A sanity check failed in a suite with ``strict = true``."""


def fingerprint(model: torch.nn.Module) -> torch.Tensor | None:
    """Sum and sum of squares of each trainable parameter (float64, on the CPU): any optimizer step changes it.
    None when this process holds no parameter data (e.g. sharded away)."""
    params = [p.detach() for p in model.parameters() if p.requires_grad and p.numel()]
    if not params:
        return None
    return torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params]).cpu()


def image_problem(images: torch.Tensor) -> str | None:
    """What is wrong with a batch's image values as the loader gave them (dtype and shape already checked)."""
    low, high = float(images.min()), float(images.max())
    span = f"{low:.4g}..{high:.4g}"
    if low == high:
        return f"every image value of the batch is {low:.4g}: blank images"
    if images.dtype == torch.uint8 and high <= 1:
        return f"uint8 images span {span}; expected pixel values 0..255"
    if images.is_floating_point() and low >= 0:
        return (f"float images span {span}: not normalised (x / 255?); expected uint8 0..255 (the engine "
                "normalises) or float (x / 255 - mean) / std, about -2.1..2.6")
    return None


def loss_problem(losses: list[float]) -> str | None:
    """Whether the losses of the first optimizer steps failed to fall (second half's mean not below the first's)."""
    half = len(losses) // 2
    first, second = fmean(losses[:half]), fmean(losses[half:])
    if second < first:
        return None
    return (f"training loss did not fall over the first {len(losses)} optimizer steps: mean {first:.4g} over steps "
            f"1-{half}, {second:.4g} over steps {half + 1}-{len(losses)}")


def chance_problem(best_acc: float, images: int, classes: int, epochs: int) -> str | None:
    """Whether the best validation accuracy is indistinguishable from guessing (one-sided binomial test)."""
    from scipy.stats import binomtest

    if images <= 0 or classes < 2 or not math.isfinite(best_acc):
        return None
    p = binomtest(round(best_acc * images), images, 1 / classes, alternative="greater").pvalue
    if p <= NEAR_CHANCE_P:
        return None
    return (f"best validation accuracy {best_acc:.1%} after {epochs} epoch(s) is not above chance ({1 / classes:.1%} "
            f"for {classes} classes) on {images} validation images (binomial test p = {p:.2g})")


def mfu_problem(throughput: float, flops: float | None, device_name: str | None, precision: str,
                processes: int) -> str | None:
    """Whether the throughput implies more FLOP/s than the device can do (where its peak and the FLOPs are known)."""
    peak = devices.peak_flops(device_name, devices.dtype(precision))
    if not peak or not flops:
        return None
    used = throughput * flops / (peak * processes)
    if used <= 1:
        return None
    return (f"{throughput:.1f} img/s x {flops / 1e9:.3g} GFLOP per image is {used:.0%} of the peak of {processes} x "
            f"{device_name} ({peak / 1e12:g} TFLOP/s in {devices.dtype(precision)}): steps skipped, or work not done")


@dataclass
class Checks:
    """The checks' state in one training run; each method returns the problems it found."""

    classes: int
    initial: torch.Tensor | None = None  # parameter fingerprint before training
    losses: list[float] = field(default_factory=list)  # the first optimizer steps' mean losses
    labels: set[int] = field(default_factory=set)
    label_batches: int = 0
    done: set[str] = field(default_factory=set)  # checks settled (passed or flagged)

    def start(self, model: torch.nn.Module) -> None:
        self.initial = fingerprint(model)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed run (a race's next rung) goes on with the checks where they
        were: a settled check is not run again, and the first optimizer steps' losses are those of the run's start,
        not of the restart (a converged loss over 50 later steps is flat, not a broken backend)."""
        return {"losses": list(self.losses), "labels": sorted(self.labels), "label_batches": self.label_batches,
                "done": sorted(self.done)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.losses, self.labels = list(state["losses"]), set(state["labels"])
        self.label_batches, self.done = state["label_batches"], set(state["done"])

    @property
    def watching_batches(self) -> bool:
        """Whether batches are still to be looked at (the loop asks this per step: a set lookup)."""
        return not {"image-range-train", "label-range"} <= self.done

    def batch(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> list[Problem]:
        """Look at a batch of ``split`` ("train" or "validation"): its images once, the training labels of the
        first :data:`LABEL_BATCHES` batches."""
        found = []
        if f"image-range-{split}" not in self.done:
            self.done.add(f"image-range-{split}")
            problem = image_problem(images)
            if problem and "image-range" not in self.done:
                self.done.add("image-range")
                found.append(("image-range", f"{split} batch: {problem}"))
        if split == "train" and "label-range" not in self.done:
            self.labels.update(labels.unique().tolist())
            self.label_batches += 1
            if len(self.labels) > 1 or self.classes < 2:
                self.done.add("label-range")
            elif self.label_batches == LABEL_BATCHES:
                self.done.add("label-range")
                found.append(("label-range", f"the first {LABEL_BATCHES} training batches hold only class "
                                             f"{min(self.labels)} of {self.classes}: the training split is unshuffled "
                                             "or its labels are wrong"))
        return found

    def step(self, loss: float) -> None:
        if len(self.losses) < LOSS_STEPS:
            self.losses.append(loss)

    def epoch_end(self, model: torch.nn.Module, steps: int, last: bool, throughput: float, flops: float | None,
                  device_name: str | None, precision: str, processes: int) -> list[Problem]:
        """After an epoch with ``steps`` optimizer steps so far (``last``: the run's last epoch)."""
        found = []
        if "params-unchanged" not in self.done and self.initial is not None and steps and (
                steps >= PARAM_STEPS or last):
            now = fingerprint(model)
            if now is not None and torch.equal(now, self.initial):
                found.append(("params-unchanged", f"the model's parameters are unchanged after {steps} optimizer "
                                                  "steps: the backend does not step the optimizer"))
                self.done.add("params-unchanged")
            elif now is not None:
                self.done.add("params-unchanged")
        if "loss-not-decreasing" not in self.done and len(self.losses) == LOSS_STEPS:
            self.done.add("loss-not-decreasing")
            problem = loss_problem(self.losses)
            if problem:
                found.append(("loss-not-decreasing", problem))
        if "mfu-above-peak" not in self.done:
            problem = mfu_problem(throughput, flops, device_name, precision, processes)
            if problem:
                self.done.add("mfu-above-peak")
                found.append(("mfu-above-peak", problem))
        return found

    def run_end(self, best_acc: float, images: int, epochs: int) -> list[Problem]:
        problem = chance_problem(best_acc, images, self.classes, epochs)
        return [("near-chance", problem)] if problem else []
