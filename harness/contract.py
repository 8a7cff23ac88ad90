"""The plugin contract, checked where the harness meets a plugin; each breach is one line naming the plugin.

- loading: hook and argument names the specs have ("did you mean"), and a warning for functions named
  like hooks without ``@hookimpl`` (:func:`check_hooks`);
- registration: an instance, not a class, with every member of its protocol (:func:`check_registration`);
- in the cell process: a loader's ``build`` returns ``DataSplits`` with a training split, whose iterables'
  first batches are ``(images, labels)`` pairs as :class:`harness.api.DataSplits` documents
  (:func:`checked_splits`); a model family's ``build`` returns a ``torch.nn.Module`` (:func:`check_model`)
  whose forward gives ``[batch, num_classes]`` logits (:func:`check_logits`); an observer's metrics are a dict
  of numbers (:func:`check_metrics`).
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import cache
from typing import Any

import pluggy

from harness import hookspecs
from harness.api import DataSplits

#: A float batch whose values exceed this is taken for unnormalised 0..255 pixels.
MAX_NORMALISED = 10.0


class ContractError(RuntimeError):
    """A plugin broke the contract of :mod:`harness.api`; the message names the plugin, the method and what
    was expected."""


@cache
def hooks() -> dict[str, tuple[str, ...]]:
    """Hook name -> its argument names, from :mod:`harness.hookspecs`."""
    return {name: tuple(inspect.signature(spec).parameters) for name, spec in vars(hookspecs).items()
            if hasattr(spec, "harness_spec")}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Raise ContractError for an ``@hookimpl`` whose hook or argument the specs lack; return warnings for
    functions named like hooks that lack ``@hookimpl`` (pluggy never calls them)."""
    found, warnings = 0, []
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            if callable(getattr(plugin, attr, None)) and difflib.get_close_matches(attr, hooks(), n=1, cutoff=0.8):
                hint = "" if attr in hooks() else did_you_mean(attr, hooks())
                warnings.append(f"{attr} looks like a hook but has no @hookimpl, so it is never called "
                                f"(decorate it with harness.hookspecs.hookimpl){hint}")
            continue
        found += 1
        name = opts.get("specname") or attr
        if name not in hooks():
            raise ContractError(f"unknown hook {name!r}{did_you_mean(name, hooks())}")
        spec = hooks()[name]
        for argument in pluggy.HookImpl(plugin, "", getattr(plugin, attr), opts).argnames:
            if argument not in spec:
                raise ContractError(f"hook {name}: unknown argument {argument!r}{did_you_mean(argument, spec)} "
                                    f"(the spec is {name}({', '.join(spec)}))")
    if not found:
        warnings.append("no @hookimpl functions: it adds nothing")
    return warnings


def members(protocol: type) -> dict[str, str]:
    """Member name -> how messages show it (``method build(spec)``, ``attribute precisions``)."""
    shown = {name: f"attribute {name}" for name in getattr(protocol, "__annotations__", {})}
    for name, value in vars(protocol).items():
        if inspect.isfunction(value) and not name.startswith("_"):
            arguments = list(inspect.signature(value).parameters)[1:]
            shown[name] = f"method {name}({', '.join(arguments)})"
    return shown


def check_registration(kind: str, protocol: type | None, name: object, value: object) -> None:
    """Raise ContractError unless ``register(name, value)`` gives a named instance of ``protocol`` (a suite:
    a path)."""
    if not isinstance(name, str) or not name:
        raise ContractError(f"register({name!r}, ...): expected a non-empty str name")
    label = f"{kind} {name!r}"
    if protocol is None:
        if not isinstance(value, (str, os.PathLike)):
            raise ContractError(f"{label}: registered {type(value).__name__}; expected the path of a suite TOML file")
        return
    if isinstance(value, type):
        raise ContractError(f"{label}: registered the class {value.__name__}; expected an instance: "
                            f"register({name!r}, {value.__name__}())")
    missing = [shown for member, shown in members(protocol).items() if not hasattr(value, member)]
    if missing:
        raise ContractError(f"{label} ({type(value).__name__}) does not implement harness.api.{protocol.__name__}: "
                            f"missing {', '.join(missing)}")


def batch_problem(batch: Any, num_classes: int) -> str | None:
    """What is wrong with one ``(images, labels)`` batch, or None."""
    import torch

    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return f"got {type(batch).__name__}; expected an (images, labels) pair"
    images, labels = batch
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return f"got ({type(images).__name__}, {type(labels).__name__}); expected a pair of tensors"
    if images.dim() != 4 or images.shape[1] != 3:
        hint = " (NHWC? permute(0, 3, 1, 2))" if images.dim() == 4 and images.shape[3] == 3 else ""
        return f"images have shape {list(images.shape)}{hint}; expected NCHW [batch, 3, height, width]"
    if images.dtype != torch.uint8 and not images.is_floating_point():
        return f"images are {images.dtype}; expected uint8 or normalised float"
    peak = float(images.abs().max()) if images.is_floating_point() and images.numel() else 0.0
    if peak > MAX_NORMALISED:
        return (f"float images reach {peak:g}: not normalised; expected uint8 0..255 (the engine normalises) "
                "or float (x / 255 - mean) / std")
    if labels.dtype != torch.int64 or tuple(labels.shape) != (images.shape[0],):
        return f"labels are {labels.dtype} {list(labels.shape)}; expected int64 [{images.shape[0]}]"
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        return (f"labels span {int(labels.min())}..{int(labels.max())}; expected class indices in "
                f"[0, {num_classes}) (len(DataSplits.classes))")
    return None


class Checked:
    """An iterable of batches whose first batch is checked, once; other attributes are the wrapped one's."""

    def __init__(self, batches: Iterable[Any], check: Callable[[Any], None]) -> None:
        self.batches, self.check, self.checked = batches, check, False

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            if not self.checked:
                self.check(batch)
                self.checked = True
            yield batch

    def __getattr__(self, name: str) -> Any:  # set_epoch and any other attribute of the loader's iterable
        return getattr(self.batches, name)


class SizedChecked(Checked):
    """A :class:`Checked` iterable with ``__len__`` (only when the wrapped one has it: the engine asks)."""

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]  # SizedChecked wraps only Sized iterables


def checked_splits(data: Any, owner: str) -> DataSplits:
    """``data`` as the loader ``owner`` built it, with a training split, its iterables checked on first use."""
    if not isinstance(data, DataSplits):
        raise ContractError(f"{owner}: build(spec) returned {type(data).__name__}; expected harness.api.DataSplits")
    if data.train_size <= 0 or not data.classes:
        raise ContractError(f"{owner}: build(spec) returned an empty training split (train_size {data.train_size}, "
                            f"{len(data.classes)} classes); expected training images")

    def wrap(split: str) -> Checked:
        batches = getattr(data, split)

        def check(batch: Any) -> None:
            problem = batch_problem(batch, len(data.classes))
            if problem:
                raise ContractError(f"{owner}: build(spec).{split}, first batch: {problem}")

        return (SizedChecked if hasattr(batches, "__len__") else Checked)(batches, check)

    return replace(data, train=wrap("train"), validation=wrap("validation"))


def check_model(model: Any, owner: str, name: str) -> None:
    """Raise ContractError unless the family ``owner`` built a ``torch.nn.Module`` for model ``name``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        hint = " (return the model alone)" if isinstance(model, tuple) else ""
        raise ContractError(f"{owner}: build({name!r}, ...) returned {type(model).__name__}{hint}; "
                            "expected a torch.nn.Module")


def check_logits(logits: Any, batch: int, num_classes: int, owner: str) -> None:
    """Raise ContractError unless the model ``owner`` gave ``[batch, num_classes]`` logits."""
    import torch

    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch, num_classes):
        got = f"shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ContractError(f"{owner}: forward returned {got} for {batch} images; expected logits "
                            f"[batch, num_classes] = [{batch}, {num_classes}]")


def check_metrics(answer: Any, owner: str, hook: str) -> dict[str, float]:
    """``answer`` of an observer's ``hook`` (``harness_epoch_metrics``, ...) as ``{field: number}``; ContractError
    naming ``owner`` (the plugin) and the field otherwise. None is no fields."""
    if answer is None:
        return {}
    if not isinstance(answer, dict):
        raise ContractError(f"{owner}: {hook} returned {type(answer).__name__}; expected a dict such as "
                            "{'field': 1.0}, or None")
    for key, value in answer.items():
        if not isinstance(key, str) or not key:
            raise ContractError(f"{owner}: {hook} returned the key {key!r}; expected non-empty str field names")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(f"{owner}: {hook} returned {key!r}: {value!r} ({type(value).__name__}); "
                                "expected a number")
    return answer
