"""pytest-benchmark suite over every registered loader and backend, third-party plugins included.

Run with ``tox -e bench`` or ``pytest benchmarks --benchmark-json=bench.json``, then gate with
``harness compare BASELINE.json bench.json``. Settings come from environment variables and are
recorded, with the environment fingerprint, in every benchmark's ``extra_info``:

===========================  =======================================================  ==========
variable                     meaning                                                  default
===========================  =======================================================  ==========
HARNESS_BENCH_DATA           photos: class folders or prepared train/+validation/     (skip)
HARNESS_BENCH_MODEL          model of the training-step and end-to-end benchmarks     resnet18
HARNESS_BENCH_IMAGE_SIZE     image side in pixels                                     32
HARNESS_BENCH_BATCH          batch size                                               8
HARNESS_BENCH_STEPS          training steps per round                                 20
HARNESS_BENCH_ROUNDS         timed rounds per benchmark (after one warm-up round)     10
HARNESS_BENCH_SUBSET         photos per loader epoch                                  64
HARNESS_BENCH_THREADS        torch intra-op threads; 0 keeps torch's default          1
HARNESS_BENCH_SLOWDOWN       TEST ONLY: extra work per training step, e.g. 0.2        0
===========================  =======================================================  ==========

One torch thread by default: on a shared CI machine an oversubscribed multi-threaded torch
step swings by 10x or more, a single thread by about 20 %.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import envinfo
from harness.api import DeviceInfo
from harness.plugins import Manager, get_manager


@dataclass(frozen=True)
class Settings:
    """The benchmark settings, read once from the environment."""

    data: str | None
    model: str
    image_size: int
    batch_size: int
    steps: int
    rounds: int
    subset: int
    threads: int
    slowdown: float

    @classmethod
    def from_env(cls) -> Settings:
        def number(name: str, default: str, kind: type = int) -> Any:
            raw = os.environ.get(f"HARNESS_BENCH_{name}", default)
            try:
                value = kind(raw)
            except ValueError:
                raise pytest.UsageError(f"HARNESS_BENCH_{name}={raw!r}: expected a {kind.__name__}") from None
            if value < 0 or (kind is int and value == 0 and name not in ("THREADS",)):
                raise pytest.UsageError(f"HARNESS_BENCH_{name}={raw!r}: must be positive")
            return value

        return cls(
            data=os.environ.get("HARNESS_BENCH_DATA") or None,
            model=os.environ.get("HARNESS_BENCH_MODEL", "resnet18"),
            image_size=number("IMAGE_SIZE", "32"),
            batch_size=number("BATCH", "8"),
            steps=number("STEPS", "20"),
            rounds=number("ROUNDS", "10"),
            subset=number("SUBSET", "64"),
            threads=number("THREADS", "1"),
            slowdown=number("SLOWDOWN", "0", float),
        )


SETTINGS = Settings.from_env()


def pytest_configure(config: pytest.Config) -> None:
    if SETTINGS.threads:
        import torch

        torch.set_num_threads(SETTINGS.threads)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return SETTINGS


@pytest.fixture(scope="session")
def manager() -> Manager:
    return get_manager()


@pytest.fixture(scope="session")
def device() -> DeviceInfo:
    return _device()


def _device() -> DeviceInfo:
    return envinfo.device_info("auto")


@pytest.fixture(scope="session")
def env(manager: Manager, device: DeviceInfo) -> dict[str, Any]:
    """The harness environment fingerprint, as result records carry it."""
    import torch

    return {**envinfo.fingerprint(device, manager.hook.harness_environment()), "torch_threads": torch.get_num_threads()}


@pytest.fixture(scope="session")
def data_root() -> Path:
    if SETTINGS.data is None:
        pytest.skip("set HARNESS_BENCH_DATA to a folder of photos (class folders or train/+validation/)")
    root = Path(SETTINGS.data)
    if not root.is_dir():
        raise pytest.UsageError(f"HARNESS_BENCH_DATA={root}: not a directory")
    return root


@pytest.fixture
def record(env: dict[str, Any]) -> Callable[..., None]:
    """Write a benchmark's parameters, the settings and the environment into its ``extra_info``."""

    def write(benchmark: Any, **params: Any) -> None:
        benchmark.extra_info.update({"params": params, "settings": asdict(SETTINGS), "env": env})

    return write


@pytest.fixture
def time_epochs(benchmark: Any) -> Callable[..., int]:
    """``time_epochs(train, image_size, rounds, synchronize=False)``: iterate a loader's training split once per
    round (after one warm-up round), checking each batch's shape; record the median round's images/s in
    ``extra_info["throughput_img_s"]``; return the images per round. ``synchronize`` waits for CUDA work."""

    def run(train: Iterable[Any], image_size: int, rounds: int, synchronize: bool = False) -> int:
        seconds: list[float] = []

        def one_epoch() -> int:
            if hasattr(train, "set_epoch"):
                train.set_epoch(len(seconds) + 1)
            start, images = time.perf_counter(), 0
            for batch, labels in train:
                assert batch.shape[0] == labels.shape[0] and batch.shape[-1] == image_size
                images += int(labels.shape[0])
            if synchronize:
                import torch

                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
            return images

        images: int = benchmark.pedantic(one_epoch, rounds=rounds, warmup_rounds=1)
        timed = sorted(seconds[1:] or seconds)  # the first round is the warm-up (none with --benchmark-disable)
        benchmark.extra_info["throughput_img_s"] = images / timed[len(timed) // 2]
        return images

    return run


# ---------------------------------------------------------------- parametrization over the registered plugins


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``loader_name`` and ``backend_precision`` range over every registered plugin; what cannot run is skipped."""
    if "loader_name" in metafunc.fixturenames:
        metafunc.parametrize("loader_name", list(_loader_params()))
    if "backend_precision" in metafunc.fixturenames:
        metafunc.parametrize("backend_precision", list(_backend_params()))


def _loader_params() -> Iterator[Any]:
    device = _device()
    for name, registration in sorted(get_manager().loaders().items()):
        reason = _ask(lambda r=registration: r.impl.can_run(device, {}))
        yield pytest.param(name, id=name, marks=[pytest.mark.skip(reason=f"{name}: {reason}")] if reason else [])


def _backend_params() -> Iterator[Any]:
    device = _device()
    for name, registration in sorted(get_manager().backends().items()):
        for precision in registration.impl.precisions:
            reason = _ask(lambda r=registration, p=precision: r.impl.can_run(device, p, 1, {}))
            marks = [pytest.mark.skip(reason=f"{name} {precision}: {reason}")] if reason else []
            yield pytest.param((name, precision), id=f"{name}-{precision}", marks=marks)


def _ask(can_run: Callable[[], str | None]) -> str | None:
    """A plugin's ``can_run`` answer; an exception there is a reason too (the plugin is broken here)."""
    try:
        return can_run()
    except Exception as exc:
        return f"can_run raised {type(exc).__name__}: {exc}"
