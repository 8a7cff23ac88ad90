"""The plugin manager: built-ins and third-party plugins, all through entry points.

Plugins are modules (or objects) with ``@hookimpl`` functions, found in the
entry-point group ``harness``. ``HARNESS_PLUGINS=a,b`` loads only the named entry
points. A plugin that fails to import, or declares an incompatible ``HARNESS_API``
range, is listed as broken and the rest of the harness keeps working.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.api import API_VERSION, BackendPlugin, LoaderPlugin, ModelPlugin

ENTRY_POINT_GROUP = "harness"
ALLOW_LIST_ENV = "HARNESS_PLUGINS"
MODULES_ENV = "HARNESS_PLUGIN_MODULES"  # extra importable modules to register, comma-separated
KINDS = ("loaders", "models", "backends", "suites")
PROTOCOLS: dict[str, type] = {"loaders": LoaderPlugin, "models": ModelPlugin, "backends": BackendPlugin}
IN_PROCESS = "(registered in-process)"


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

    def describe(self, plugin: str) -> str:
        """``'name' (distribution D V)``: how messages name a plugin."""
        info = next((p for p in self.plugins if p.name == plugin), None)
        if info is None:
            return repr(plugin)
        return f"{plugin!r} (distribution {' '.join(filter(None, (info.distribution, info.version)))})"

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook; an exception names the plugin that raised it."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                results.append(impl.function(**{k: kwargs[k] for k in impl.argnames}))
            except Exception as exc:
                raise PluginError(f"plugin {self.describe(impl.plugin_name)} raised in {hook_name}: {exc!r}") from exc
        return results

    def environment(self) -> list[dict[str, Any] | None]:
        """``harness_environment`` results, as ``hook.harness_environment()`` gives them; a raising plugin is skipped
        with a warning naming it, so it cannot take the fingerprint (and every cell) down."""
        results: list[dict[str, Any] | None] = []
        for impl in reversed(self.pm.hook.harness_environment.get_hookimpls()):
            try:
                results.append(impl.function())
            except Exception as exc:
                warnings.warn(f"plugin {self.describe(impl.plugin_name)} raised in harness_environment: {exc!r}",
                              stacklevel=2)
        return results


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def _check_api(plugin: object) -> None:
    wanted = getattr(plugin, "HARNESS_API", None)
    if wanted is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        supported = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        raise PluginError(f"HARNESS_API = {wanted!r} is not a version range (write e.g. '>=1,<2')") from None
    if str(API_VERSION) not in supported:
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


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> list[str]:
    """Register ``plugin`` after checking its API range and hook names; return the hooks it implements."""
    _check_api(plugin)
    pm.register(plugin, name=name)  # pluggy refuses argument names the spec lacks
    try:
        pm.check_pending()  # a misspelt hook would otherwise never be called, silently
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        raise PluginError(str(exc)) from None
    return sorted(h.name for h in pm.get_hookcallers(plugin) or [])


def _load(pm: pluggy.PluginManager) -> list[PluginInfo]:
    infos: list[PluginInfo] = []
    for name, dist, version, load in _module_sources():
        first = next((i for i in infos if i.name == name), None)
        if first is not None and first.distribution == dist:
            continue  # the same entry point seen twice (e.g. an editable install)
        info = PluginInfo(name, dist, version)
        infos.append(info)
        if first is not None:
            info.error = (f"entry point name {name!r} is taken by distribution {first.distribution}; "
                          f"rename one of them in its [project.entry-points.{ENTRY_POINT_GROUP}] table")
            continue
        try:
            info.hooks = _register(pm, load(), name)
        except Exception as exc:  # a broken plugin must not take the harness down
            info.error = f"{type(exc).__name__}: {exc}"
    return infos


def _registrations(manager: Manager, kind: str) -> list[Registration]:
    """What every plugin registers for ``kind``, in load order.

    A plugin whose hook raises or registers something that is not a ``kind`` is marked broken
    (in-process test plugins raise instead, so a test fails loudly).
    """
    infos = _owners(manager.plugins)
    protocol = PROTOCOLS.get(kind)
    found: list[Registration] = []
    for impl in reversed(getattr(manager.pm.hook, f"register_{kind}").get_hookimpls()):
        info = infos[impl.plugin_name]
        mine: list[Registration] = []

        def register(name: str, value: Any, _mine: list[Registration] = mine, _info: PluginInfo = info) -> None:
            if protocol is not None and not isinstance(value, protocol):
                raise PluginError(f"{kind[:-1]} {name!r} ({type(value).__name__}) does not implement "
                                  f"harness.api.{protocol.__name__}")
            _mine.append(Registration(name, value, _info.name, _info.distribution))

        try:
            impl.function(register=register)
        except Exception as exc:
            message = f"register_{kind} raised {type(exc).__name__}: {exc}"
            if info.distribution == IN_PROCESS:
                raise PluginError(f"plugin {info.name!r}: {message}") from exc
            info.error = message
            continue
        found += mine
    return found


def _owners(infos: list[PluginInfo]) -> dict[str, PluginInfo]:
    """Plugin name -> the info of the plugin registered under it (a later clash on the name is not)."""
    return {p.name: p for p in reversed(infos)}


def _index(kind: str, registrations: list[Registration]) -> dict[str, Registration]:
    """Registrations by name; two plugins registering one name is an error naming both distributions."""
    found: dict[str, Registration] = {}
    for reg in registrations:
        if reg.name in found:
            other = found[reg.name]
            raise PluginError(
                f"{kind[:-1]} {reg.name!r} is registered twice: by plugin {other.plugin!r} "
                f"(distribution {other.distribution}) and by plugin {reg.plugin!r} (distribution {reg.distribution})"
            )
        found[reg.name] = reg
    return found


def build_manager(extra: list[tuple[str, object]] = ()) -> Manager:
    """Load every entry-point plugin plus ``extra`` (name, plugin) pairs, then collect registrations."""
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    infos = _load(pm)
    for name, plugin in extra:
        infos.append(PluginInfo(name, IN_PROCESS, "", _register(pm, plugin, name)))
    manager = Manager(pm, infos)
    collected = {kind: _registrations(manager, kind) for kind in KINDS}
    broken = {name for name, info in _owners(infos).items() if info.error}
    for name in broken:  # whatever a plugin broke in one kind, none of its hooks or registrations stay
        if pm.has_plugin(name):
            pm.unregister(name=name)
    manager.registries = {kind: _index(kind, [r for r in regs if r.plugin not in broken])
                          for kind, regs in collected.items()}
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

