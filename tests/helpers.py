"""Helpers for tests that drive the real ``harness`` command line."""

from __future__ import annotations

import os
import shlex
from functools import partial
from pathlib import Path

from harness.testing import run_harness

#: :func:`harness.testing.run_harness` with a 15-minute default timeout, under the name tests/test_runner.py and
#: tests/test_environments.py import; other tests call ``run_harness`` itself.
harness = partial(run_harness, timeout=900)


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


class CreatesFile:
    """A pickle that creates ``marker`` when unpickled, as a hostile checkpoint would run any command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant_code(path: Path, marker: Path) -> None:
    """Replace the checkpoint file ``path`` with a pickle that creates ``marker`` when loaded, after checking
    here that loading it unsafely does create it (the payload is live)."""
    import torch

    torch.save(CreatesFile(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the planted payload did not run when loaded unsafely"
    marker.unlink()


def one_cell_suite(path: Path, model: str, loader: str, name: str = "contract", batch_size: int = 8,
                   tables: str = "") -> Path:
    """A one-cell CPU suite of ``model`` and ``loader`` on the torch backend in fp32, 16 px, 1 epoch; ``tables``
    (TOML) is appended."""
    return write_suite(path, f"""
name = "{name}"
epochs = 1
image_size = 16
device = "cpu"
recipe = {{ base = "default", batch_size = {batch_size} }}

[matrix]
model = ["{model}"]
loader = ["{loader}"]
backend = ["torch"]
precision = ["fp32"]
{tables}""")
#: An inline plugin (write it into a folder on PYTHONPATH, load it with HARNESS_PLUGIN_MODULES): model ``tiny-net``
#: (8 px) and loader ``tiny`` (generated batches, no data). Loader parameters: ``hold`` (a file) with ``hold_epoch``
#: and ``hold_processes``: block at the start of that epoch while the file exists; ``garble = N``: print N lines of
#: bytes that are not UTF-8; ``fail_rank = R``: that rank raises at the start of epoch 2.
TINY_PLUGIN = '''
import os, time
import torch
from harness.api import DataSplits
from harness.hookspecs import hookimpl


def batch(generator):
    return torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=generator), torch.randint(0, 2, (8,))


class Batches:
    def __init__(self, params, fail=False):
        self.hold, self.hold_epoch, self.epoch, self.fail = params.get("hold"), params.get("hold_epoch", 1), 1, fail

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 2

    def __iter__(self):
        if self.fail and self.epoch == 2:
            raise RuntimeError(f"planted failure on rank {os.environ['RANK']}")
        while self.hold and self.epoch >= self.hold_epoch and os.path.exists(self.hold):
            time.sleep(0.1)
        generator = torch.Generator().manual_seed(self.epoch)
        return iter([batch(generator), batch(generator)])


class Loader:
    reads_data = False

    def can_run(self, device, params):
        return None

    def build(self, spec):
        if spec.params.get("garble"):  # far more than a pipe holds, none of it UTF-8
            os.write(1, b"\\xff\\xfe not UTF-8 \\xc3\\x28\\n" * spec.params["garble"])
        held = spec.world_size >= spec.params.get("hold_processes", 1)
        return DataSplits(train=Batches(spec.params if held else {}, spec.rank == spec.params.get("fail_rank")),
                          validation=[batch(torch.Generator().manual_seed(0))], classes=["a", "b"], train_size=16,
                          validation_size=8)


class Tiny:
    def knows(self, name):
        return name == "tiny-net"

    def build(self, name, num_classes, image_size, **kwargs):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, num_classes))


@hookimpl
def register_loaders(register):
    register("tiny", Loader())


@hookimpl
def register_models(register):
    register("tiny", Tiny())
'''


def processes_of(folder: Path) -> dict[int, str]:
    """Live processes (not zombies) whose command line names ``folder``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # not a process, or gone
        if str(folder) in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found[int(entry.name)] = cmdline
    return found
