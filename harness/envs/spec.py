"""What an environment is: its declaration, what goes into it with the harness, and the hash naming its build."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from packaging.requirements import InvalidRequirement, Requirement

from harness import envinfo, paths
from harness.api import CellSpec
from harness.plugins import Manager, PluginError, Registration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: The attribute by which a built-in plugin object names the harness extra its cells need (the DALI loader's
#: ``dali``): an environment gets the harness with exactly the extras of its cells' plugins.
EXTRA = "harness_extra"


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

    @property
    def parts(self) -> list[str]:
        """The names of the declarations combined into it (``torch-2.5+colossalai``: two)."""
        return self.name.split("+")

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


def for_cell(chosen: Environment, declared: Iterable[Environment | None]) -> Environment:
    """The environment a cell runs in: the suite's ``chosen`` one plus those its plugins and variants ``declared``;
    with ``chosen`` the default, a declared environment whose requirements this interpreter meets is left out."""
    needed = [e for e in dict.fromkeys(e for e in declared if e) if not (chosen.is_default and satisfied(e))]
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
    source = Path(__file__).resolve().parents[2]
    return source if (source / "pyproject.toml").is_file() else None


def extras_text(extras: Iterable[str]) -> str:
    """``[a,b]`` for extras ``a, b``; empty for none."""
    names = sorted(set(extras))
    return f"[{','.join(names)}]" if names else ""


def harness_install(extras: Iterable[str] = ()) -> tuple[str, ...]:
    """Installer arguments for the harness running here, with ``extras``: editable from its source checkout (so
    environments run the code the runner runs), else as its distribution was installed."""
    source, text = harness_source(), extras_text(extras)
    return ("-e", f"{source}{text}") if source else install_args("harness", text)


def harness_requirements(extras: Iterable[str] = ()) -> list[str]:
    """What the harness requires with ``extras``: from its source's pyproject.toml, else its metadata."""
    wanted = set(extras)
    source = harness_source()
    if source is None:
        found = []
        for text in metadata.requires("harness") or []:
            marker = Requirement(text).marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in wanted):
                found.append(text)
        return sorted(found)
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(r for e in sorted(wanted) for r in optional.get(e, []))]


def registrations(cell: CellSpec, manager: Manager) -> list[Registration]:
    """The registered loader, model family and backend that load, build and train ``cell``."""
    found = (manager.loaders().get(cell.loader_plugin), manager.family_of(cell),
             manager.backends().get(cell.backend_plugin))
    return [r for r in found if r is not None]


def plugin_distributions(cells: Iterable[CellSpec], manager: Manager) -> list[str]:
    """The installed third-party distributions whose plugins load, build or train ``cells``."""
    return sorted({r.distribution for c in cells for r in registrations(c, manager)
                   if not r.builtin and envinfo.version(r.distribution)})


def extras_of(registration: Registration) -> list[str]:
    """The harness extra a registered plugin's cells need (its ``harness_extra``), if it names one."""
    extra = getattr(registration.impl, EXTRA, None)
    return [extra] if extra else []


def harness_extras(cells: Iterable[CellSpec], manager: Manager) -> list[str]:
    """The harness extras ``cells`` need: those their plugins name, e.g. ``dali`` for the DALI loader's."""
    return sorted({e for c in cells for r in registrations(c, manager) for e in extras_of(r)})


@dataclass(frozen=True)
class Spec:
    """An environment as built: its declaration, the installer arguments of the harness (with the extras its cells
    need) and the plugin distributions that go in with it, and the hash of all that."""

    environment: Environment
    installs: tuple[str, ...]
    distributions: tuple[str, ...]  # the third-party plugin distributions among ``installs``
    extras: tuple[str, ...]  # the harness's extras among ``installs``
    key: str

    @classmethod
    def of(cls, environment: Environment, distributions: Iterable[str] = (), extras: Iterable[str] = ()) -> Spec:
        """OSError if a constraints file cannot be read."""
        distributions, extras = tuple(distributions), tuple(sorted(set(extras)))
        installs = harness_install(extras) + tuple(a for d in distributions for a in install_args(d))
        content = {"requires": environment.requires, "installs": installs, "default": sys.prefix,
                   "constraints": [Path(c).read_text() for c in environment.constraints],
                   "python": [platform.python_version(), base_python()],
                   "harness": [envinfo.version("harness"), harness_requirements(extras)]}
        key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
        return cls(environment, installs, distributions, extras, key)

    @classmethod
    def for_cells(cls, environment: Environment, cells: list[CellSpec], manager: Manager) -> Spec:
        """The build of ``environment`` that ``cells`` run in: with their plugins' distributions and extras."""
        return cls.of(environment, plugin_distributions(cells, manager), harness_extras(cells, manager))

    @property
    def path(self) -> Path:
        return paths.envs_dir() / f"{self.environment.name}-{self.key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"
