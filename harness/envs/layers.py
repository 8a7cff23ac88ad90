"""Layers: an environment that keeps the default environment's torch holds only what it changes, and sees the
default environment's packages beneath its own; and the state of a built folder (finished, stale, broken)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import site
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from harness import envinfo
from harness.envs.installer import pip_settings, uv_options, uv_variables
from harness.envs.spec import BuildError, Spec, harness_requirements
from harness.redact import redact

#: A layer never replaces the default environment's torch: a different torch (and its CUDA libraries, the bulk of
#: an environment) gets a whole stack of its own.
STACK_PACKAGE = "torch"
LINK = "harness-default-environment.pth"  # in a layer's site-packages: the default environment's, beneath its own
#: uv's dry run, one line per change: `` + timm==1.0.9``, `` + pkg==1.0 (from URL)`` (a direct reference uv has
#: cached) or `` + pkg @ URL`` (one it has not)
PLANNED = re.compile(r"^ (?P<sign>[+-]) (?P<name>[^=@\s]+)"
                     r"(?:==(?P<version>\S+)(?: \(from (?P<from_url>\S+)\))?| @ (?P<url>\S+))$")
Log = Callable[[str], None]


# ---------------------------------------------------------------- a built folder's state


def marker(path: Path) -> dict[str, Any] | None:
    """What the build at ``path`` recorded when it finished (its marker is written last); None before that."""
    try:
        return dict(json.loads((path / envinfo.ENV_MARKER).read_text()))
    except (OSError, ValueError):
        return None


def problem(path: Path) -> str | None:
    """Why ``path`` does not hold a usable build (not built, unfinished, a stale layer, a broken interpreter), as a
    phrase; None when it does."""
    done = marker(path)
    if done is None:
        return "not built" if not path.exists() else "unfinished (a build running or interrupted)"
    if not (path / "bin" / "python").is_file():  # deleted, or a link to an interpreter that is gone
        return f"broken (its interpreter {path / 'bin' / 'python'} is missing)"
    if done.get("layer_over") not in (None, default_fingerprint()):
        return "a stale layer (the default environment changed)"
    return None


def ready(path: Path) -> bool:
    """Whether ``path`` holds a finished build that still holds (else the next build redoes it)."""
    return problem(path) is None


def layered(path: Path) -> bool:
    """Whether the build at ``path`` is a layer over the default environment."""
    return (marker(path) or {}).get("layer_over") is not None


def activated(path: Path, variables: Mapping[str, str]) -> dict[str, str]:
    """``variables`` with the environment at ``path`` activated: ``VIRTUAL_ENV``, its ``bin`` first on PATH (a
    layer's, then the default environment's, whose commands it also sees)."""
    bins = [path / "bin", *([Path(sys.prefix) / "bin"] if layered(path) else [])]
    search = os.pathsep.join([*map(str, bins), variables.get("PATH", "")])
    return {**variables, "VIRTUAL_ENV": str(path), "PATH": search}


# ---------------------------------------------------------------- the default environment beneath


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
def default_pins() -> dict[str, str]:
    """What the default environment has installed: canonical name -> version."""
    return {name: dist.version for name, dist in visible(default_site_dirs()).items()}


@cache
def default_fingerprint() -> dict[str, str]:
    """The default environment as a layer records it: its folder and a hash of what is installed there."""
    pins = sorted(f"{name}=={version}" for name, version in default_pins().items())
    return {"prefix": sys.prefix, "packages": hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]}


def held(spec: Spec) -> list[str]:
    """The default environment's versions a layer keeps, as constraints: every installed package but those ``spec``
    names itself (a one-package layer never re-resolves the rest, e.g. DALI to another build)."""
    own = named(spec)
    return [f"{name}=={version}" for name, version in sorted(default_pins().items()) if name not in own]


def named(spec: Spec) -> set[str]:
    """The distributions ``spec`` names itself, in its requirements or its constraints files (canonical names)."""
    lines = [*spec.environment.requires, *(line for c in spec.environment.constraints
                                           for line in Path(c).read_text().splitlines())]
    found: set[str] = set()
    for line in lines:
        try:
            found.add(canonicalize_name(Requirement(line.split("#")[0].strip()).name))
        except InvalidRequirement:
            continue
    return found


# ---------------------------------------------------------------- building one


def layer_pins(spec: Spec, uv: str, log: Log) -> list[str] | None:
    """What ``spec`` changes in the default environment (uv's dry run of installing it there: the harness's and
    its plugins' requirements and the environment's own, with every other package held at the default
    environment's version), as pins; None when it replaces torch, so it gets a whole stack, or when the dry run
    fails or reads unexpectedly (the whole build then says why)."""
    settings = pip_settings()
    wanted = [*harness_requirements(spec.extras), *(r for d in spec.distributions for r in metadata.requires(d) or []),
              *spec.environment.requires]
    with tempfile.NamedTemporaryFile("w", suffix="-default.txt") as kept:
        kept.write("".join(f"{pin}\n" for pin in held(spec)))
        kept.flush()
        command = [uv, "pip", "install", "--dry-run", "--color", "never", "--python", sys.executable,
                   "--break-system-packages",  # nothing is installed: a system Python (PEP 668) can be asked too
                   *uv_options(settings), *spec.environment.constraint_args(), "--constraint", kept.name, *wanted]
        done = subprocess.run(command, capture_output=True, text=True, env=uv_variables(settings))
    if done.returncode:
        said = redact(" ".join(done.stderr.strip().splitlines()[-2:]))
        log(f"  uv's dry run over the default environment (its versions held) failed: a whole stack ({said})")
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
        raise BuildError(redact(f"{python} failed: {' '.join(done.stderr.strip().splitlines()[-2:])}"))
    return json.loads(done.stdout)
