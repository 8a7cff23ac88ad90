"""Building an environment (as a layer over the default one where it can be) and asking it about its cells."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import envinfo
from harness.api import CellSpec
from harness.envs.installer import pip_settings, uv_binary, uv_options, uv_variables
from harness.envs.layers import Log, activated, default_fingerprint, layer_pins, link_and_check, ready
from harness.envs.spec import BuildError, Spec, base_python
from harness.redact import redact
from harness.store import now, write_json

logger = logging.getLogger(__name__)
KEPT_LINES = 60  # of a build's output, for the message of a failure
#: How long an environment's interpreter gets to answer about its cells (start, import torch and the plugins, ask
#: each cell's plugins, each within ``capability.PLUGIN_TIMEOUT_S``); past it, its cells are skipped with the reason.
CHECK_TIMEOUT_S = 300.0


def steps(spec: Spec, uv: str | None, layer: list[str] | None = None) -> tuple[list[list[str]], dict[str, str]]:
    """The commands that build ``spec`` (as a layer: install just ``layer``'s pins) and the process environment they
    run in (uv compiles bytecode at build time, as pip does: otherwise the first cells import an uncompiled torch,
    measured ~2x slower quick start)."""
    packages = [*spec.installs, *spec.environment.requires]
    constraints = spec.environment.constraint_args()
    if uv is None:
        return [[base_python(), "-m", "venv", str(spec.path)],
                [str(spec.python), "-m", "pip", "install", "--disable-pip-version-check", *constraints, *packages]
                ], dict(os.environ)
    settings = pip_settings()
    install = [uv, "pip", "install", "--compile-bytecode", "--python", str(spec.python), *uv_options(settings)]
    commands = [[uv, "venv", "--python", base_python(), str(spec.path)]]
    if layer is None:
        commands.append([*install, *constraints, *packages])
    elif layer:
        commands.append([*install, "--no-deps", *layer])
    return commands, uv_variables(settings)


def failure(lines: list[str]) -> str:
    """The installer's message in one line: its output from the first error line on (else its last lines)."""
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*(×|error|ERROR)", line)), len(lines) - 10)
    return " ".join(line.strip() for line in lines[max(start, 0):] if line.strip())


def run_step(command: list[str], variables: Mapping[str, str], log: Log) -> None:
    """Run one build command, relaying its output (but per-package lines), secrets redacted; BuildError with its
    message."""
    log(redact("  $ " + shlex.join(command)))
    kept: deque[str] = deque(maxlen=KEPT_LINES)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=dict(variables))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kept.append(redact(line.rstrip()))
            if not line.startswith((" + ", " - ")):
                log("  " + kept[-1])
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code:
        raise BuildError(failure(list(kept)) or f"{command[0]} exited with code {code}")


def run_steps(commands: list[list[str]], variables: Mapping[str, str], log: Log) -> None:
    for command in commands:
        run_step(command, variables, log)


@contextmanager
def locked(path: Path, log: Log) -> Iterator[None]:
    """Hold ``PATH.lock`` (flock) for the block: one process at a time builds or removes ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building {path} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(spec: Spec, log: Log = logger.info) -> None:
    """Build ``spec`` unless it is built: as a layer over the default environment when it keeps its torch and
    breaks nothing there, else whole. A folder left unfinished, a stale layer or one whose interpreter is gone is
    built again. BuildError with the installer's message if that fails."""
    name = spec.environment.name
    with locked(spec.path, log):
        if ready(spec.path):
            return
        shutil.rmtree(spec.path, ignore_errors=True)
        uv = uv_binary()
        tool = "uv" if uv else "venv + pip"
        extras = f" with the harness's {', '.join(spec.extras)} extra" if spec.extras else ""
        log(redact(f"building environment {name} ({', '.join(spec.environment.requires) or 'the harness only'}"
                   f"{extras}) in {spec.path} with {tool}; once, then reused"))
        started = time.monotonic()
        try:
            layer = layer_pins(spec, uv, log) if uv else None
            if layer is not None:
                log(f"  a layer over the default environment {sys.prefix}: {', '.join(layer) or 'nothing to add'}")
                run_steps(*steps(spec, uv, layer), log)
                unmet = link_and_check(spec)
                if unmet:
                    log(f"  as a layer it leaves requirements unmet ({'; '.join(sorted(unmet))}): a whole stack")
                    shutil.rmtree(spec.path)
                    layer = None
            if layer is None:
                run_steps(*steps(spec, uv), log)
        except BuildError as exc:
            shutil.rmtree(spec.path, ignore_errors=True)
            raise BuildError(redact(f"environment {name} could not be built ({tool}): {exc}")) from None
        except BaseException:
            shutil.rmtree(spec.path, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        write_json(spec.path / envinfo.ENV_MARKER, {
            **spec.environment.describe(), "hash": spec.key, "installs": [redact(a) for a in spec.installs],
            "layer": layer, "layer_over": None if layer is None else default_fingerprint(),
            "python": base_python(), "tool": tool, "built_at": now(), "build_s": round(seconds, 1)})
        log(f"built environment {name} in {seconds:.0f} s: {spec.path}")


def ask(spec: Spec, cells: list[CellSpec]) -> dict[str, Any]:
    """The environment's own answers about ``cells``: ``fingerprints`` per device and ``blockers`` per cell id;
    BuildError when its interpreter fails, says nothing readable, or hangs past :data:`CHECK_TIMEOUT_S`."""
    name = spec.environment.name
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "cells.json"
        listing.write_text(json.dumps([c.describe() for c in cells], default=str))
        command = [str(spec.python), "-m", "harness.cell", "--check", str(listing)]
        logger.debug("asking environment %s about %d cell(s): %s", name, len(cells), shlex.join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                  env=activated(spec.path, os.environ), timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # run() has killed it
            raise BuildError(f"environment {name}: its interpreter {spec.python} did not say within "
                             f"{CHECK_TIMEOUT_S:g} s whether its cells can run (harness.cell --check hung)") from None
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        said = redact(" ".join(done.stderr.strip().splitlines()[-3:]))
        raise BuildError(f"environment {name} could not check its cells (exit code "
                         f"{done.returncode}): {said}") from None
