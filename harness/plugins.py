"""The plugin manager: built-ins and third-party plugins, all through entry points.

Plugins are modules (or objects) with ``@hookimpl`` functions, found in the
entry-point group ``harness``. ``HARNESS_PLUGINS=a,b`` loads only the named entry
points. A plugin that fails to import, or declares an incompatible ``HARNESS_API``
range, is listed as broken and the rest of the harness keeps working.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.api import API_VERSION

ENTRY_POINT_GROUP = "harness"
ALLOW_LIST_ENV = "HARNESS_PLUGINS"
MODULES_ENV = "HARNESS_PLUGIN_MODULES"  # extra importable modules to register, comma-separated
KINDS = ("loaders", "models", "backends", "suites")


class PluginError(RuntimeError):
    """A plugin is unusable or two plugins conflict; the message names them."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # set for a broken plugin


@dataclass(frozen=True)
class Registration:
    name: str
    impl: Any
    plugin: str
    distribution: str


@dataclass
class Manager:
    """The loaded plugins and everything they registered."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    registries: dict[str, dict[str, Registration]] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def loaders(self) -> dict[str, Registration]:
        return self.registries["loaders"]

    def models(self) -> dict[str, Registration]:
        return self.registries["models"]

    def backends(self) -> dict[str, Registration]:
        return self.registries["backends"]

    def suites(self) -> dict[str, Registration]:
        return self.registries["suites"]

    def model_family(self, model: str) -> Registration | None:
        """The family that builds ``model``: an exact registered name first, then ``knows``."""
        families = self.models()
        if model in families:
            return families[model]
        return next((r for r in families.values() if r.impl.knows(model)), None)

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook; an exception names the plugin that raised it."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                results.append(impl.function(**{k: kwargs[k] for k in impl.argnames}))
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} raised in {hook_name}: {exc!r}") from exc
        return results


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def _check_api(plugin: object) -> None:
    wanted = getattr(plugin, "HARNESS_API", None)
    if wanted is None:
        return
    from packaging.specifiers import SpecifierSet

    if str(API_VERSION) not in SpecifierSet(wanted):
        raise PluginError(f"refused: supports hook API {wanted}, this harness provides {API_VERSION}")


def _entry_points() -> Iterator[metadata.EntryPoint]:
    allowed = os.environ.get(ALLOW_LIST_ENV)
    names = {n.strip() for n in allowed.split(",")} if allowed else None
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if names is None or ep.name in names:
            yield ep


def _module_sources() -> Iterator[tuple[str, str, str, Callable[[], object]]]:
    """(name, distribution, version, loader) for every plugin to load."""
    for ep in _entry_points():
        yield (ep.name, *_distribution(ep), ep.load)
    for module in filter(None, os.environ.get(MODULES_ENV, "").split(",")):
        yield (module, f"(module {module})", "", lambda m=module: importlib.import_module(m))


def _load(pm: pluggy.PluginManager) -> list[PluginInfo]:
    infos = []
    for name, dist, version, load in _module_sources():
        if pm.has_plugin(name):
            continue  # the same entry point seen twice (e.g. an editable install)
        info = PluginInfo(name, dist, version)
        try:
            plugin = load()
            _check_api(plugin)
            pm.register(plugin, name=name)
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        except Exception as exc:  # a broken plugin must not take the harness down
            info.error = f"{type(exc).__name__}: {exc}"
        infos.append(info)
    return infos


def _collect(manager: Manager, kind: str) -> dict[str, Registration]:
    dists = {p.name: p.distribution for p in manager.plugins}
    found: dict[str, Registration] = {}
    for impl in reversed(getattr(manager.pm.hook, f"register_{kind}").get_hookimpls()):
        plugin, dist = impl.plugin_name, dists.get(impl.plugin_name, impl.plugin_name)

        def register(name: str, value: Any, _plugin: str = plugin, _dist: str = dist) -> None:
            if name in found:
                other = found[name]
                raise PluginError(
                    f"{kind[:-1]} {name!r} is registered twice: by plugin {other.plugin!r} "
                    f"(distribution {other.distribution}) and by plugin {_plugin!r} (distribution {_dist})"
                )
            found[name] = Registration(name, value, _plugin, _dist)

        impl.function(register=register)
    return found


def build_manager(extra: list[tuple[str, object]] = ()) -> Manager:
    """Load every entry-point plugin plus ``extra`` (name, plugin) pairs, then collect registrations."""
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    infos = _load(pm)
    for name, plugin in extra:
        pm.register(plugin, name=name)
        infos.append(PluginInfo(name, "(registered in-process)", "", sorted(h.name for h in pm.get_hookcallers(plugin))))
    manager = Manager(pm, infos)
    manager.registries = {kind: _collect(manager, kind) for kind in KINDS}
    return manager


_extra_plugins: list[tuple[str, object]] = []


@cache
def get_manager() -> Manager:
    """The process-wide manager (loaded once)."""
    return build_manager(list(_extra_plugins))


@contextmanager
def registered(plugin: object, name: str = "test-plugin") -> Iterator[Manager]:
    """Register ``plugin`` (a module or object with hookimpls) for the duration of a block."""
    _extra_plugins.append((name, plugin))
    get_manager.cache_clear()
    try:
        yield get_manager()
    finally:
        _extra_plugins.remove((name, plugin))
        get_manager.cache_clear()


def suite_path(name_or_path: str) -> Path:
    """Resolve ``--suite``: a registered suite name or a path to a TOML file."""
    suites = get_manager().suites()
    if name_or_path in suites:
        return Path(suites[name_or_path].impl)
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    raise PluginError(f"unknown suite {name_or_path!r}; registered suites: {', '.join(sorted(suites)) or 'none'}")


def hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(("register_", "harness_")))

