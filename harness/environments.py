"""Environments: the Python environments cells run in, built on demand, cached and reused.

``default`` is the environment the harness runs in. Any other one is declared by a plugin (an
``environment`` mapping on its loader, model family or backend object) or by a suite (``[environments.NAME]``,
picked per cell by the matrix axis ``environment``). It is built once into ``~/.cache/harness/envs/NAME-HASH``,
the hash covering its requirements, its constraints' content, the interpreter and the harness and plugin
distributions installed into it; with uv when available (pip's index settings translated), else venv + pip;
a lock keeps two builds of one environment apart. One that keeps the default environment's torch is a *layer*:
only what it changes is installed, and the default environment's packages are seen beneath it. Its cells run
under its interpreter, which also answers whether they can run (``python -m harness.cell --check``):
``harness env``, ``harness run`` and ``harness run --no-build`` give one answer. See docs/environments.md.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from harness import capability, envinfo
from harness.api import CellSpec, DeviceInfo
from harness.exitcode import ExitCode
from harness.plugins import Manager, PluginError, Registration, get_manager, suite_path
from harness.prepare.sources import cache_dir
from harness.store import now, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
ROOT_ENV = "HARNESS_ENVS"  # where built environments live (default: envs/ in the harness cache)
HARNESS_EXTRAS = "[dali]"  # the harness goes into every environment with DALI, so DALI cells run there too
KEPT_LINES = 60  # of a build's output, for the message of a failure
#: pip settings (``pip config list`` keys) and the uv options that mean the same
UV_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint"}
#: A layer never replaces the default environment's torch: a different torch (and its CUDA libraries, the bulk of
#: an environment) gets a whole stack of its own.
STACK_PACKAGE = "torch"
LINK = "harness-default-environment.pth"  # in a layer's site-packages: the default environment's, beneath its own
#: uv's dry run, one line per change: `` + timm==1.0.9``, `` + pkg==1.0 (from URL)`` (a direct reference uv has
#: cached) or `` + pkg @ URL`` (one it has not)
PLANNED = re.compile(r"^ (?P<sign>[+-]) (?P<name>[^=@\s]+)"
                     r"(?:==(?P<version>\S+)(?: \(from (?P<from_url>\S+)\))?| @ (?P<url>\S+))$")
Log = Callable[[str], None]


class BuildError(RuntimeError):
    """An environment could not be built or asked about its cells; the message is its cells' skip reason."""


@dataclass(frozen=True)
class Environment:
    """What an environment holds besides the harness: pip requirements, under pip constraints files."""

    name: str = DEFAULT
    requires: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # absolute paths

    @classmethod
    def parse(cls, data: Mapping[str, Any], base: Path | None = None) -> Environment:
        """From ``{"name", "requires", "constraints"}`` (constraints: a path or a list; relative ones from
        ``base``); ValueError says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping with name, requires, constraints; got {data!r}")
        unknown = sorted(set(data) - {"name", "requires", "constraints"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; allowed: name, requires, constraints")
        name = data.get("name", DEFAULT)
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"name {name!r}: use letters, digits and _ . + -, starting with a letter or digit")
        requires = strings(data.get("requires", []), "requires")
        for text in requires:
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                raise ValueError(f"requires: {text!r} is not a requirement ({exc})") from None
        constraints = strings(data.get("constraints", []), "constraints")
        if name == DEFAULT and (requires or constraints):
            raise ValueError("'default' is the harness's own environment: it takes no requirements")
        return cls(name, requires, tuple(str((base or Path.cwd()) / c) for c in constraints))

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    def constraint_args(self) -> list[str]:
        """Its constraints files as installer arguments (pip's and uv's alike)."""
        return [a for c in self.constraints for a in ("--constraint", c)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "requires": list(self.requires), "constraints": list(self.constraints)}


def strings(value: Any, key: str) -> tuple[str, ...]:
    """``value`` as a tuple of strings (one string counts as a list of one)."""
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, list) or not all(isinstance(v, (str, Path)) for v in items):
        raise ValueError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(map(str, items))


def of_cell(cell: CellSpec) -> Environment:
    return Environment.parse(cell.environment)


def declared_by(registration: Registration, manager: Manager) -> Environment | None:
    """The environment a registered loader, model family or backend declares (its ``environment`` attribute)."""
    value = getattr(registration.impl, "environment", None)
    if value is None:
        return None
    try:
        return Environment.parse(value)
    except ValueError as exc:
        raise PluginError(f"plugin {manager.describe(registration.plugin)}: the environment of "
                          f"{registration.name!r}: {exc}") from None


def for_cell(chosen: Environment, plugins: Iterable[Registration | None], manager: Manager) -> Environment:
    """The environment a cell runs in: the suite's ``chosen`` one plus those its plugins declare; with ``chosen``
    the default, a plugin's environment whose requirements this interpreter already meets is left out."""
    declared = dict.fromkeys(e for r in plugins if r is not None and (e := declared_by(r, manager)))
    needed = [e for e in declared if not (chosen.is_default and satisfied(e))]
    parts = [e for e in (chosen, *needed) if not e.is_default]
    if not parts:
        return Environment()
    return Environment("+".join(e.name for e in parts), tuple(dict.fromkeys(r for e in parts for r in e.requires)),
                       tuple(dict.fromkeys(c for e in parts for c in e.constraints)))


@cache
def satisfied(environment: Environment) -> bool:
    """Whether this interpreter already has every requirement of ``environment`` (its constraints aside)."""
    for text in environment.requires:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        installed = envinfo.version(requirement.name)
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


def root() -> Path:
    """Where built environments live: ``$HARNESS_ENVS``, else ``envs/`` in the harness cache."""
    return Path(os.environ.get(ROOT_ENV) or cache_dir() / "envs")


def base_python() -> str:
    """The interpreter environments are made from: the one beneath the harness's own (virtual) environment."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def install_args(distribution: str, extras: str = "") -> tuple[str, ...]:
    """Installer arguments for ``distribution`` as it is installed here: from its source folder (editable if it
    is), from the archive it came from, else the same version from the index."""
    dist = metadata.distribution(distribution)
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    url = origin.get("url", "")
    if url.startswith("file:") and "dir_info" in origin:
        source = url2pathname(urlparse(url).path) + extras
        return ("-e", source) if origin["dir_info"].get("editable") else (source,)
    if "archive_info" in origin:
        return (f"{dist.name}{extras} @ {url}",)
    return (f"{dist.name}{extras}=={dist.version}",)


def harness_source() -> Path | None:
    """The source checkout the harness runs from, None when it runs installed."""
    source = Path(__file__).resolve().parent.parent
    return source if (source / "pyproject.toml").is_file() else None


def harness_install() -> tuple[str, ...]:
    """Installer arguments for the harness running here: editable from its source checkout (so environments run
    the code the runner runs), else as its distribution was installed."""
    source = harness_source()
    return ("-e", f"{source}{HARNESS_EXTRAS}") if source else install_args("harness", HARNESS_EXTRAS)


def harness_requirements() -> list[str]:
    """What the harness requires, with its extras: from its source's pyproject.toml, else its metadata."""
    source = harness_source()
    if source is None:
        return sorted(metadata.requires("harness") or [])
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    return [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get(HARNESS_EXTRAS[1:-1], [])]


def plugin_distributions(cells: Iterable[CellSpec], manager: Manager) -> list[str]:
    """The installed third-party distributions whose plugins load, build or train ``cells``."""
    found = set()
    for cell in cells:
        for reg in (manager.loaders().get(cell.loader_plugin), manager.family_of(cell),
                    manager.backends().get(cell.backend_plugin)):
            if reg is not None and not reg.builtin and envinfo.version(reg.distribution):
                found.add(reg.distribution)
    return sorted(found)


@dataclass(frozen=True)
class Spec:
    """An environment as built: its declaration, the installer arguments of the harness and the plugin
    distributions that go in with it, and the hash of all that."""

    environment: Environment
    installs: tuple[str, ...]
    distributions: tuple[str, ...]  # the third-party plugin distributions among ``installs``
    key: str

    @classmethod
    def of(cls, environment: Environment, distributions: Iterable[str] = ()) -> Spec:
        """OSError if a constraints file cannot be read."""
        distributions = tuple(distributions)
        installs = harness_install() + tuple(a for d in distributions for a in install_args(d))
        content = {"requires": environment.requires, "installs": installs, "default": sys.prefix,
                   "constraints": [Path(c).read_text() for c in environment.constraints],
                   "python": [platform.python_version(), base_python()],
                   "harness": [envinfo.version("harness"), harness_requirements()]}
        key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
        return cls(environment, installs, distributions, key)

    @property
    def path(self) -> Path:
        return root() / f"{self.environment.name}-{self.key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def marker(path: Path) -> dict[str, Any] | None:
    """What the build at ``path`` recorded when it finished (its marker is written last); None before that."""
    try:
        return dict(json.loads((path / envinfo.ENV_MARKER).read_text()))
    except (OSError, ValueError):
        return None


def ready(path: Path) -> bool:
    """Whether ``path`` holds a finished build that still holds: a layer only over the default environment as it
    was built on (a *stale* layer is rebuilt)."""
    done = marker(path)
    return done is not None and (done.get("layer_over") is None or done["layer_over"] == default_fingerprint())


def layered(path: Path) -> bool:
    """Whether the build at ``path`` is a layer over the default environment."""
    return (marker(path) or {}).get("layer_over") is not None


def default_site_dirs() -> list[str]:
    """The site-packages folders of the environment the harness runs in: a layer sees them beneath its own."""
    return [d for d in dict.fromkeys(site.getsitepackages()) if os.path.isdir(d)]


def visible(path: list[str]) -> dict[str, metadata.Distribution]:
    """The distributions importable from the folders ``path``, by name (the first of a name wins, as for imports)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=path):
        found.setdefault(canonicalize_name(dist.metadata["Name"] or ""), dist)
    return found


def conflicts(path: list[str]) -> set[str]:
    """What ``pip check`` says of the distributions importable from ``path`` (neither pip's nor uv's check reads a
    layer's ``.pth``): each requirement not met, as a phrase; unreadable requirements are passed over, as pip does."""
    dists = visible(path)
    found = set()
    for name, dist in dists.items():
        for text in dist.requires or []:
            try:
                requirement = Requirement(text)
                if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                    continue
                have = dists.get(canonicalize_name(requirement.name))
                if have is None or not requirement.specifier.contains(have.version, prereleases=True):
                    found.add(f"{name} {dist.version} requires {requirement}, "
                              + ("which is missing" if have is None else f"not {have.version}"))
            except ValueError:  # InvalidRequirement, InvalidMarker, InvalidVersion
                continue
    return found


@cache
def default_fingerprint() -> dict[str, str]:
    """The default environment as a layer records it: its folder and a hash of what is installed there."""
    pins = sorted(f"{name}=={dist.version}" for name, dist in visible(default_site_dirs()).items())
    return {"prefix": sys.prefix, "packages": hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]}


def activated(path: Path, variables: Mapping[str, str]) -> dict[str, str]:
    """``variables`` with the environment at ``path`` activated: ``VIRTUAL_ENV``, its ``bin`` first on PATH (a
    layer's, then the default environment's, whose commands it also sees)."""
    bins = [path / "bin", *([Path(sys.prefix) / "bin"] if layered(path) else [])]
    search = os.pathsep.join([*map(str, bins), variables.get("PATH", "")])
    return {**variables, "VIRTUAL_ENV": str(path), "PATH": search}


# ---------------------------------------------------------------- building


def uv_binary() -> str | None:
    """The ``uv`` package's binary, else a ``uv`` on PATH, else None (then venv + pip build)."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def pip_settings() -> dict[str, str]:
    """pip's configuration as pip applies it (``pip config list``: its files and PIP_* variables), key -> value."""
    settings = {k[4:].lower().replace("_", "-"): v for k, v in os.environ.items() if k.startswith("PIP_")}
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    rank = {"global": 0, "install": 1, ":env:": 2}  # what pip lets override what
    entries = []
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in rank:
            try:
                entries.append((rank[section], key, str(ast.literal_eval(value))))
            except (ValueError, SyntaxError):
                continue
    settings.update((key, value) for _, key, value in sorted(entries))
    return settings


def uv_options(settings: Mapping[str, str]) -> list[str]:
    """pip's index settings as uv options, resolving across every index at once as pip does."""
    options = [a for key, flag in UV_OPTIONS.items() for value in settings.get(key, "").split() for a in (flag, value)]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        options.append("--no-index")
    if "UV_INDEX_STRATEGY" not in os.environ:
        options += ["--index-strategy", "unsafe-best-match"]
    return options


def uv_variables(settings: Mapping[str, str]) -> dict[str, str]:
    """The process environment for uv: pip's certificate and timeout, unless the user set uv's own."""
    translated = {"SSL_CERT_FILE": settings.get("cert"),
                  "UV_HTTP_TIMEOUT": settings.get("timeout") or settings.get("default-timeout")}
    return {**{k: v for k, v in translated.items() if v}, **os.environ}


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


def layer_pins(spec: Spec, uv: str, log: Log) -> list[str] | None:
    """What ``spec`` changes in the default environment (uv's dry run of installing it there: the harness's and
    its plugins' requirements and the environment's own), as pins; None when it replaces torch, so it gets a
    whole stack, or when the dry run fails or reads unexpectedly (the whole build then says why)."""
    settings = pip_settings()
    wanted = [*harness_requirements(), *(r for d in spec.distributions for r in metadata.requires(d) or []),
              *spec.environment.requires]
    constraints = spec.environment.constraint_args()
    command = [uv, "pip", "install", "--dry-run", "--color", "never", "--python", sys.executable,
               "--break-system-packages",  # nothing is installed: a system Python (PEP 668) can be asked too
               *uv_options(settings), *constraints, *wanted]
    done = subprocess.run(command, capture_output=True, text=True, env=uv_variables(settings))
    if done.returncode:
        log(f"  uv's dry run over the default environment failed (exit code {done.returncode}): a whole stack")
        return None
    changes = [m for line in done.stderr.splitlines() if (m := PLANNED.match(line))]
    added = [m for m in changes if m["sign"] == "+"]
    counted = re.search(r"Would install (\d+) package", done.stderr)
    if len(added) != (int(counted[1]) if counted else 0):
        log("  uv's dry run over the default environment did not read as expected: a whole stack")
        return None
    stack = [m["version"] or m["url"] for m in changes if canonicalize_name(m["name"]) == STACK_PACKAGE]
    if stack:
        log(f"  it changes {STACK_PACKAGE} ({' -> '.join(stack)}): a whole stack")
        return None
    return [f"{m['name']} @ {url}" if (url := m["url"] or m["from_url"]) else f"{m['name']}=={m['version']}"
            for m in added]


def link_and_check(spec: Spec) -> set[str]:
    """Put the default environment's site-packages beneath the layer's own (a ``.pth`` file); the requirements
    then unmet that are met in the default environment."""
    purelib = evaluate(spec.python, "sysconfig.get_paths()['purelib']", "sysconfig")
    Path(purelib, LINK).write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in default_site_dirs()))
    return conflicts(evaluate(spec.python, "sys.path", "sys")) - conflicts(evaluate(sys.executable, "sys.path", "sys"))


def evaluate(python: Path | str, expression: str, module: str) -> Any:
    """``expression`` (after ``import module``) as ``python`` evaluates it, isolated (no current folder, no
    ``PYTHONPATH``); BuildError if it fails."""
    done = subprocess.run([str(python), "-I", "-c", f"import json, {module}; print(json.dumps({expression}))"],
                          capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"{python} failed: {' '.join(done.stderr.strip().splitlines()[-2:])}")
    return json.loads(done.stdout)


def failure(lines: list[str]) -> str:
    """The installer's message in one line: its output from the first error line on (else its last lines)."""
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*(×|error|ERROR)", line)), len(lines) - 10)
    return " ".join(line.strip() for line in lines[max(start, 0):] if line.strip())


def run_step(command: list[str], variables: Mapping[str, str], log: Log) -> None:
    """Run one build command, relaying its output (but per-package lines); BuildError with its message."""
    log("  $ " + shlex.join(command))
    kept: deque[str] = deque(maxlen=KEPT_LINES)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(variables))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kept.append(line.rstrip())
            if not line.startswith((" + ", " - ")):
                log("  " + line.rstrip())
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code:
        raise BuildError(failure(list(kept)) or f"{command[0]} exited with code {code}")


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


def build(spec: Spec, log: Log = print) -> None:
    """Build ``spec`` unless it is built: as a layer over the default environment when it keeps its torch and
    breaks nothing there, else whole. BuildError with the installer's message if that fails."""
    name = spec.environment.name
    with locked(spec.path, log):
        if ready(spec.path):
            return
        shutil.rmtree(spec.path, ignore_errors=True)  # what an interrupted build left, or a stale layer
        uv = uv_binary()
        tool = "uv" if uv else "venv + pip"
        log(f"building environment {name} ({', '.join(spec.environment.requires) or 'the harness only'}) "
            f"in {spec.path} with {tool}; once, then reused")
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
            raise BuildError(f"environment {name} could not be built ({tool}): {exc}") from None
        except BaseException:
            shutil.rmtree(spec.path, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        write_json(spec.path / envinfo.ENV_MARKER, {
            **spec.environment.describe(), "hash": spec.key, "installs": list(spec.installs),
            "layer": layer, "layer_over": None if layer is None else default_fingerprint(),
            "python": base_python(), "tool": tool, "built_at": now(), "build_s": round(seconds, 1)})
        log(f"built environment {name} in {seconds:.0f} s: {spec.path}")


def run_steps(commands: list[list[str]], variables: Mapping[str, str], log: Log) -> None:
    for command in commands:
        run_step(command, variables, log)


def ask(spec: Spec, cells: list[CellSpec]) -> dict[str, Any]:
    """The environment's own answers about ``cells``: ``fingerprints`` per device and ``blockers`` per cell id."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "cells.json"
        listing.write_text(json.dumps([c.describe() for c in cells], default=str))
        done = subprocess.run([str(spec.python), "-m", "harness.cell", "--check", str(listing)], capture_output=True,
                              text=True, env=activated(spec.path, os.environ))
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        said = " ".join(done.stderr.strip().splitlines()[-3:])
        raise BuildError(f"environment {spec.environment.name} could not check its cells (exit code "
                         f"{done.returncode}): {said}") from None


# ---------------------------------------------------------------- placing cells


@dataclass(frozen=True)
class Placement:
    """Where a cell runs: the interpreter (None: nowhere), the fingerprint its result carries, why it cannot run."""

    python: str | None
    env: dict[str, Any]
    blocker: str | None


class Placer:
    """Places cells: in the harness's own environment, or in theirs, found (with ``build``, built) once and asked
    once about all its cells."""

    def __init__(self, cells: Iterable[CellSpec], manager: Manager, build: bool = True,
                 hint: str = "harness envs build --suite SUITE", log: Log = print) -> None:
        self.cells, self.manager, self.build, self.hint, self.log = list(cells), manager, build, hint, log
        self.probes: dict[str, tuple[DeviceInfo, dict[str, Any]]] = {}  # one probe per device, not per cell
        self.elsewhere: dict[Environment, Callable[[CellSpec], Placement]] = {}

    def place(self, cell: CellSpec) -> Placement:
        environment = of_cell(cell)
        if environment.is_default:
            device, env = self.probe(cell.device)
            return Placement(sys.executable, env, capability.blocker(cell, self.manager, device))
        if environment not in self.elsewhere:
            self.elsewhere[environment] = self.enter(environment)
        return self.elsewhere[environment](cell)

    def probe(self, device: str) -> tuple[DeviceInfo, dict[str, Any]]:
        if device not in self.probes:
            probed = envinfo.device_info(device)
            self.probes[device] = (probed, envinfo.fingerprint(probed, self.manager.environment()))
        return self.probes[device]

    def enter(self, environment: Environment) -> Callable[[CellSpec], Placement]:
        """Find or build ``environment`` and ask it about its cells; on failure each of them gets the reason."""
        cells = [c for c in self.cells if of_cell(c) == environment]
        spec = None
        try:
            spec = Spec.of(environment, plugin_distributions(cells, self.manager))
            if not ready(spec.path):
                if not self.build:
                    state = "a stale layer (the default environment changed)" if marker(spec.path) else "not built"
                    raise BuildError(f"environment {environment.name} is {state}; build it with: "
                                     f"{self.hint} {environment.name}")
                build(spec, self.log)
            answers = ask(spec, cells)
        except (BuildError, OSError) as exc:
            reason, key = str(exc), spec.key if spec else None
            return lambda cell: Placement(None, self.stand_in(cell, environment.name, key), reason)
        python = str(spec.python)
        return lambda cell: Placement(python, answers["fingerprints"][cell.device], answers["blockers"][cell.id])

    def stand_in(self, cell: CellSpec, name: str, key: str | None) -> dict[str, Any]:
        """The fingerprint of a cell whose environment is missing: this machine's, library versions unknown."""
        unknown = {k: None for k in envinfo.PACKAGES if k != "harness"}
        return {**self.probe(cell.device)[1], **unknown, "environment": name, "environment_hash": key}


def groups(cells: Iterable[CellSpec]) -> dict[Environment, list[CellSpec]]:
    found: dict[Environment, list[CellSpec]] = {}
    for cell in cells:
        found.setdefault(of_cell(cell), []).append(cell)
    return found


def overview(cells: Iterable[CellSpec], manager: Manager) -> list[dict[str, Any]]:
    """Each environment ``cells`` need: its name, hash, requirements, folder, whether it is built (and a layer over
    the default), its size on disk, and its cells."""
    rows = []
    for environment, members in groups(cells).items():
        if environment.is_default:
            row: dict[str, Any] = {"hash": None, "path": sys.prefix, "built": True, "size_bytes": None, "layer": False}
        else:
            spec = Spec.of(environment, plugin_distributions(members, manager))
            built = ready(spec.path)
            row = {"hash": spec.key, "path": str(spec.path), "built": built,
                   "size_bytes": disk_usage(spec.path) if built else None,
                   "layer": built and layered(spec.path)}
        rows.append({"name": environment.name, **row, "requires": list(environment.requires),
                     "backends": sorted({c.backend for c in members}), "cells": [c.id for c in members]})
    return rows


def disk_usage(path: Path) -> int:
    """Bytes ``path`` takes on disk, as ``du`` counts them (a file hard-linked twice counts once)."""
    seen, total = set(), 0
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def gigabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


# ---------------------------------------------------------------- harness envs


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="envs_command", required=True)
    listing = sub.add_parser("list", help="the environments built so far, with their size and build time")
    listing.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    build_parser = sub.add_parser("build", help="build the environments a suite's cells need (without --suite: "
                                                "those plugins declare)")
    build_parser.add_argument("names", nargs="*", help="only these environments")
    build_parser.add_argument("--suite", help="a registered suite name or a path to a suite TOML file")
    build_parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                              help="only the environments of matching cells (as harness run --only)")
    remove = sub.add_parser("remove", help="remove built environments")
    remove.add_argument("names", nargs="+", help="environment names (every build of one) or folders NAME-HASH")


def command(args: argparse.Namespace) -> int:
    commands = {"list": list_command, "build": build_command, "remove": remove_command}
    return commands[args.envs_command](args)


def built() -> list[dict[str, Any]]:
    """Every folder under :func:`root`: what its marker says (an unfinished build has none), and its size."""
    rows = []
    for path in sorted(p for p in root().glob("*") if p.is_dir()):
        recorded = marker(path) or {"name": path.name.rpartition("-")[0]}
        rows.append({"folder": path.name, "path": str(path), "built": ready(path), "size_bytes": disk_usage(path),
                     "layer_over": None, **recorded})
    return rows


def list_command(args: argparse.Namespace) -> int:
    rows = built()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return ExitCode.OK
    for row in rows:
        over = row["layer_over"] and f", a layer over {row['layer_over']['prefix']}"
        state = (f"built {row['built_at']} in {row['build_s']:.0f} s with {row['tool']}{over or ''}" if row["built"]
                 else f"stale: a layer over {row['layer_over']['prefix']} as it was (the next build redoes it)" if over
                 else "unfinished (a build running or interrupted; the next build starts it again)")
        print(f"{row['folder']:32} {gigabytes(row['size_bytes']):>8}  {state}  {' '.join(row.get('requires', []))}")
    print(f"{len(rows)} environments in {root()}, {gigabytes(disk_usage(root()) if rows else 0)} on disk "
          "(files hard-linked from uv's cache are shared with it)")
    return 0


def declared_specs(manager: Manager) -> list[Spec]:
    """The environments registered plugins declare and this interpreter does not satisfy."""
    specs: dict[Environment, Spec] = {}
    for kind in ("loaders", "models", "backends"):
        for reg in manager.registries[kind].values():
            environment = declared_by(reg, manager)
            if environment and not satisfied(environment) and environment not in specs:
                third_party = [] if reg.builtin or not envinfo.version(reg.distribution) else [reg.distribution]
                specs[environment] = Spec.of(environment, third_party)
    return list(specs.values())


def build_command(args: argparse.Namespace) -> int:
    manager = get_manager()
    if args.suite:
        from harness.suite import expand, select

        cells = select(expand(suite_path(args.suite), manager).cells, args.only)
        specs = [Spec.of(env, plugin_distributions(members, manager)) for env, members in groups(cells).items()
                 if not env.is_default]
    else:
        specs = declared_specs(manager)
    unknown = sorted(set(args.names) - {s.environment.name for s in specs})
    if unknown:
        known = ", ".join(sorted({s.environment.name for s in specs})) or "none"
        print(f"harness: no environment {unknown[0]!r} to build here (needed: {known})", file=sys.stderr)
        return ExitCode.USAGE
    failed = 0
    for spec in specs:
        if args.names and spec.environment.name not in args.names:
            continue
        if ready(spec.path):
            print(f"environment {spec.environment.name} is built: {spec.path}")
            continue
        try:
            build(spec)
        except BuildError as exc:
            print(f"harness: {exc}", file=sys.stderr)
            failed += 1
    return ExitCode.FAILED if failed else ExitCode.OK


def remove_command(args: argparse.Namespace) -> int:
    rows = [r for r in built() if r["folder"] in args.names or r["name"] in args.names]
    missing = sorted(set(args.names) - {r["folder"] for r in rows} - {r["name"] for r in rows})
    for row in rows:
        path = Path(row["path"])
        with locked(path, print):
            shutil.rmtree(path)
        print(f"removed {path}")
    if missing:
        print(f"harness: no environment {missing[0]!r} in {root()} (see harness envs list)", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK
