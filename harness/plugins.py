"""The plugin manager: built-ins and third-party plugins, all through entry points.

Plugins are modules (or objects) with ``@hookimpl`` functions, found in the
entry-point group ``harness``. ``HARNESS_PLUGINS=a,b`` loads only the named entry
points. A plugin that fails to import, declares an incompatible ``HARNESS_API`` range,
breaks the contract (:mod:`harness.contract`) or loses a name clash is listed as broken
and the rest of the harness keeps working.

Precedence (who keeps a contested entry-point or registered name): built-in plugins
(distribution ``harness``), then installed distributions, the earliest installed first, then
``HARNESS_PLUGIN_MODULES`` in order, then plugins registered in-process by tests. A model name
that several families know goes to a built-in family unless the suite pins another
(:meth:`Manager.model_family`).
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pluggy

from harness import contract, hookspecs
from harness.api import API_VERSION, BackendPlugin, CellSpec, ExecutorPlugin, LoaderPlugin, ModelPlugin
from harness.paths import ALLOW_LIST_ENV, MODULES_ENV, setting

ENTRY_POINT_GROUP = "harness"
KINDS = ("loaders", "models", "backends", "suites", "executors")
LABELS = {"loaders": "loader", "models": "model family", "backends": "backend", "suites": "suite",
          "executors": "executor"}
PROTOCOLS: dict[str, type] = {"loaders": LoaderPlugin, "models": ModelPlugin, "backends": BackendPlugin,
                              "executors": ExecutorPlugin}
BUILTIN = "harness"  # the distribution of the built-in plugins
ALWAYS = ("local-executor",)  # built-in entry points loaded whatever HARNESS_PLUGINS says: harness run needs them
IN_PROCESS = "(registered in-process)"
#: Why a plugin of each precedence tier keeps a contested name.
TIERS = ("built-in", "installed first", "loaded first", "registered first")


class PluginError(RuntimeError):
    """A plugin is unusable or two plugins conflict; the message names them."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # set for a broken plugin
    warnings: list[str] = field(default_factory=list)  # e.g. a hook-named function without @hookimpl
    precedence: tuple[Any, ...] = (len(TIERS) - 1,)  # (tier, ...): the lower keeps a contested name
    offered: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) it registered or tried to


@dataclass(frozen=True)
class Registration:
    name: str
    impl: Any
    plugin: str
    distribution: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN


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

    def executors(self) -> dict[str, Registration]:
        return self.registries["executors"]

    def model_family(self, model: str, family: str | None = None) -> Registration | None:
        """The family that builds ``model``: ``family`` when the suite pins one (``[models.NAME] family``; it must
        know the model), else the one registered under exactly that name, else the one whose ``knows(model)`` is
        true, a built-in family first: installing a package never changes what a suite measures. Two
        third-party families knowing a name no built-in knows is a PluginError naming both."""
        families = self.models()
        if family is not None:
            pinned = families.get(family)
            if pinned is None:
                raise PluginError(f"unknown model family {family!r}; registered: {', '.join(sorted(families))}"
                                  f"{self.broken_hint('models', family)}")
            if family != model and not self._knows(pinned, model):
                raise PluginError(f"{self.owner('models', pinned)} does not know model {model!r}")
            return pinned
        if model in families:
            return families[model]
        knowing = self.families_knowing(model)
        chosen = [r for r in knowing if r.builtin] or knowing
        if len(chosen) > 1:
            named = " and ".join(self.owner("models", r) for r in chosen)
            raise PluginError(f"model {model!r} is known to {len(chosen)} model families: {named}; pin one with "
                              f"[models.{model}] family = \"NAME\" in the suite, uninstall one, or load only one "
                              f"with {ALLOW_LIST_ENV}")
        return chosen[0] if chosen else None

    def families_knowing(self, model: str) -> list[Registration]:
        """Every model family whose ``knows(model)`` is true."""
        return [r for r in self.models().values() if self._knows(r, model)]

    def shared_name(self, model: str, builder: str | None = None) -> str | None:
        """When more than one family knows ``model``: which builds it (``builder``, else as :meth:`model_family`
        decides) and which others know it; else None."""
        knowing = self.families_knowing(model)
        chosen = self.models().get(builder or "") or self.model_family(model)
        if len(knowing) < 2 or chosen is None:
            return None
        others = " and ".join(self.owner("models", r) for r in knowing if r != chosen)
        how = (f'a built-in family keeps a name it knows; pin another with [models.{model}] family = "NAME"'
               if chosen.builtin else f'the suite pins it: [models.{model}] family = "{chosen.name}"')
        return f"model {model!r} is also known to {others}; {self.owner('models', chosen)} builds it ({how})"

    def shadowing(self, names: Iterable[str] = ()) -> dict[str, list[str]]:
        """Third-party plugin -> the model names its families know that another family knows too, among
        ``names`` and the names of families that can list theirs (an optional ``names()``, as timm's)."""
        third = [r for r in self.models().values() if not r.builtin]
        if not third:
            return {}
        probe = set(names)
        for family in self.models().values():
            lister = getattr(family.impl, "names", None)
            if lister is not None:
                probe.update(lister())
        found: dict[str, list[str]] = {}
        for name in sorted(probe):
            try:
                knowing = self.families_knowing(name)
            except PluginError:  # a family whose knows() raises: harness plugins still lists everything
                continue
            for r in knowing:
                if not r.builtin and len(knowing) > 1:
                    found.setdefault(r.plugin, []).append(name)
        return found

    def _knows(self, family: Registration, model: str) -> bool:
        try:
            return bool(family.impl.knows(model))
        except Exception as exc:
            raise PluginError(f"{self.owner('models', family)} raised in knows({model!r}): {exc!r}") from exc

    def family_of(self, cell: CellSpec) -> Registration | None:
        """The family that builds ``cell``'s model: ``cell.model_plugin`` when set, else :meth:`model_family`."""
        return self.models().get(cell.model_plugin) or self.model_family(cell.model)

    def describe(self, plugin: str) -> str:
        """``'name' (distribution D V)``: how messages name a plugin."""
        info = next((p for p in self.plugins if p.name == plugin), None)
        if info is None:
            return repr(plugin)
        return f"{plugin!r} (distribution {' '.join(filter(None, (info.distribution, info.version)))})"

    def owner(self, kind: str, registration: Registration) -> str:
        """``loader 'x' of plugin 'p' (distribution D V)``: how contract errors name what a plugin registered."""
        return f"{LABELS[kind]} {registration.name!r} of plugin {self.describe(registration.plugin)}"

    def model_owner(self, cell: CellSpec) -> str:
        """``model 'm' built by model family 'f' of plugin ...``: how contract errors name a cell's model."""
        family = self.family_of(cell)
        return f"model {cell.model!r}" + (f" built by {self.owner('models', family)}" if family else "")

    def broken_hint(self, kind: str, name: str) -> str:
        """``"; plugin 'p' that may provide it is broken: why"`` for each broken plugin that offered ``name``
        as a ``kind``, else for each that broke before offering anything (it may have been about to); then
        the plugins that are not loaded at all (:func:`unloaded`)."""
        broken = [p for p in self.plugins if p.error]
        suspects = [p for p in broken if (kind, name) in p.offered] or [p for p in broken if not p.offered]
        return "".join(f"; plugin {p.name!r} that may provide it is broken: {p.error}" for p in suspects) + "".join(
            f"; {line}" for line in unloaded())

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook; an exception names the plugin that raised it."""
        return [answer for _, answer in self._answers(hook_name, kwargs)]

    def metrics(self, hook_name: str, **kwargs: Any) -> dict[str, float]:
        """Call an observer hook (``harness_epoch_metrics``, ``harness_run_metrics``): every plugin's fields,
        named ``"<plugin>.<field>"``; an answer that is not a dict of numbers is a ContractError naming it."""
        return {f"{plugin}.{key}": value for plugin, answer in self._answers(hook_name, kwargs)
                for key, value in contract.check_metrics(answer, f"plugin {self.describe(plugin)}", hook_name).items()}

    def _answers(self, hook_name: str, kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        """(plugin name, answer) of each implementation of ``hook_name``, in load order."""
        answers = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                answers.append((impl.plugin_name, impl.function(**{k: kwargs[k] for k in impl.argnames})))
            except Exception as exc:
                raise PluginError(f"plugin {self.describe(impl.plugin_name)} raised in {hook_name}: {exc!r}") from exc
        return answers

    def environment_by_plugin(self) -> dict[str, dict[str, Any] | None]:
        """Plugin name -> its ``harness_environment`` fields; a raising plugin is left out with a warning naming
        it, so it cannot take the fingerprint (and every cell) down."""
        results: dict[str, dict[str, Any] | None] = {}
        for impl in reversed(self.pm.hook.harness_environment.get_hookimpls()):
            try:
                results[impl.plugin_name] = cast("dict[str, Any] | None", impl.function())
            except Exception as exc:
                warnings.warn(f"plugin {self.describe(impl.plugin_name)} raised in harness_environment: {exc!r}",
                              stacklevel=3)
        return results

    def environment(self) -> list[dict[str, Any] | None]:
        """``harness_environment`` results, as ``hook.harness_environment()`` gives them (raising plugins left out)."""
        return list(self.environment_by_plugin().values())


@dataclass(frozen=True)
class Source:
    """A plugin to load: its name, where it comes from, its precedence and how to import it."""

    name: str
    distribution: str
    version: str
    precedence: tuple[Any, ...]
    load: Callable[[], object]


def _installed_at(dist: metadata.Distribution | None) -> float:
    """When ``dist`` was installed: the modification time of its metadata folder (inf when unknown)."""
    folder = getattr(dist, "_path", None)  # importlib.metadata.PathDistribution's *.dist-info folder
    try:
        return Path(folder).stat().st_mtime if folder is not None else math.inf
    except (TypeError, OSError):
        return math.inf


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


def unloaded() -> list[str]:
    """Why installed plugins that might be meant are not loaded: entry points ``HARNESS_PLUGINS`` leaves out, and
    distributions named ``harness-*`` or with an entry-point group like ``harness`` but none called ``harness``."""
    allowed = setting(ALLOW_LIST_ENV)
    lines = [f"plugin {ep.name!r} is not loaded: {ALLOW_LIST_ENV}={allowed}"
             for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
             if allowed and ep.name not in {n.strip() for n in allowed.split(",")}]
    seen = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        groups = sorted({ep.group for ep in dist.entry_points})
        if name in seen or ENTRY_POINT_GROUP in groups:
            continue
        seen.add(name)
        near = [g for g in groups if ENTRY_POINT_GROUP in g.lower() or contract.did_you_mean(g, [ENTRY_POINT_GROUP])]
        if near or re.match(rf"{ENTRY_POINT_GROUP}[-_.]", name.lower()):
            has = f" (it has [project.entry-points.{near[0]}])" if near else ""
            lines.append(f"distribution {name} {dist.version} declares no [project.entry-points.{ENTRY_POINT_GROUP}] "
                         f"table{has}, so its plugins are never loaded")
    return lines


def _entry_points() -> Iterator[metadata.EntryPoint]:
    allowed = setting(ALLOW_LIST_ENV)
    names = {n.strip() for n in allowed.split(",")} if allowed else None
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if names is None or ep.name in names or (ep.name in ALWAYS and ep.dist is not None and ep.dist.name == BUILTIN):
            yield ep


def _sources() -> Iterator[Source]:
    """Every plugin to load, in load order: entry points by name, then ``HARNESS_PLUGIN_MODULES``."""
    for ep in _entry_points():
        dist, version = (ep.dist.name, ep.dist.version) if ep.dist is not None else ("?", "?")
        precedence = (0,) if dist == BUILTIN else (1, _installed_at(ep.dist), dist)
        yield Source(ep.name, dist, version, precedence, ep.load)
    for index, module in enumerate(filter(None, setting(MODULES_ENV).split(","))):
        yield Source(module, f"(module {module})", "", (2, index), partial(importlib.import_module, module))


def _register(pm: pluggy.PluginManager, info: PluginInfo, plugin: object) -> None:
    """Register ``plugin`` as ``info.name`` after checking its API range and hooks; record its hooks and warnings."""
    _check_api(plugin)
    info.warnings = contract.check_hooks(pm, plugin)
    pm.register(plugin, name=info.name)
    info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])


def _load(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Load every source; of sources sharing a name, the one of highest precedence is loaded (listed first) and
    the others are listed broken, naming it."""
    sources = list(_sources())
    keepers: dict[str, Source] = {}
    for source in sources:
        if source.name not in keepers or source.precedence < keepers[source.name].precedence:
            keepers[source.name] = source
    position = {name: index for index, name in enumerate(keepers)}
    infos: list[PluginInfo] = []
    for source in sorted(sources, key=lambda s: (position[s.name], s.precedence)):
        keeper = keepers[source.name]
        if source is not keeper and source.distribution == keeper.distribution:
            continue  # the same entry point seen twice (e.g. an editable install)
        info = PluginInfo(source.name, source.distribution, source.version, precedence=source.precedence)
        infos.append(info)
        if source is not keeper:
            info.error = (f"entry point name {source.name!r} is taken by distribution {keeper.distribution} "
                          f"({TIERS[keeper.precedence[0]]}); rename one of them in its "
                          f"[project.entry-points.{ENTRY_POINT_GROUP}] table")
            continue
        try:
            _register(pm, info, source.load())
        except Exception as exc:  # a broken plugin must not take the harness down
            info.error = " ".join(f"{type(exc).__name__}: {exc}".split())
    return infos


def _collect(manager: Manager, kind: str) -> list[Registration]:
    """What every loaded plugin registers for ``kind``; a hook that raises or registers something that breaks
    the contract marks its plugin broken."""
    infos = _owners(manager.plugins)
    protocol = PROTOCOLS.get(kind)
    found: list[Registration] = []
    for impl in reversed(getattr(manager.pm.hook, f"register_{kind}").get_hookimpls()):
        info = infos[impl.plugin_name]
        mine: list[Registration] = []

        def register(name: str, value: Any, _mine: list[Registration] = mine, _info: PluginInfo = info) -> None:
            if isinstance(name, str):
                _info.offered.add((kind, name))
            contract.check_registration(LABELS[kind], protocol, name, value)
            if any(r.name == name for r in _mine):
                raise contract.ContractError(f"{LABELS[kind]} {name!r} is registered twice by this plugin")
            _mine.append(Registration(name, value, _info.name, _info.distribution))

        try:
            impl.function(register=register)
        except contract.ContractError as exc:
            info.error = f"register_{kind}: {exc}"
            continue
        except Exception as exc:
            info.error = f"register_{kind} raised {type(exc).__name__}: {exc}"
            continue
        found += mine
    return found


def _owners(infos: list[PluginInfo]) -> dict[str, PluginInfo]:
    """Plugin name -> the info of the plugin loaded under it (listed before any that lost the name to it)."""
    return {p.name: p for p in reversed(infos)}


def _claim(manager: Manager, collected: dict[str, list[Registration]]) -> dict[str, dict[str, Registration]]:
    """Registrations by kind and name. Plugins claim their names in precedence order: one registering a name
    already claimed is broken, naming both plugins, and none of its registrations are kept."""
    registries: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
    owners = _owners(manager.plugins)
    for info in sorted(owners.values(), key=lambda p: p.precedence):
        if info.error:
            continue
        mine = [(kind, r) for kind in KINDS for r in collected[kind] if r.plugin == info.name]
        taken = next(((kind, r) for kind, r in mine if r.name in registries[kind]), None)
        if taken is not None:
            kind, reg = taken
            first = registries[kind][reg.name]
            info.error = (f"{LABELS[kind]} {reg.name!r} is registered twice: by plugin "
                          f"{manager.describe(first.plugin)} and by plugin {manager.describe(reg.plugin)}; "
                          f"{first.plugin!r} keeps it ({TIERS[owners[first.plugin].precedence[0]]})")
            continue
        for kind, reg in mine:
            registries[kind][reg.name] = reg
    return registries


def build_manager(extra: Sequence[tuple[str, object]] = ()) -> Manager:
    """Load every entry-point plugin plus ``extra`` (name, plugin) pairs, then collect registrations."""
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    infos = _load(pm)
    for index, (name, plugin) in enumerate(extra):
        info = PluginInfo(name, IN_PROCESS, "", precedence=(len(TIERS) - 1, index))
        _register(pm, info, plugin)
        for message in info.warnings:
            warnings.warn(f"plugin {name!r}: {message}", stacklevel=2)
        infos.append(info)
    manager = Manager(pm, infos)
    manager.registries = _claim(manager, {kind: _collect(manager, kind) for kind in KINDS})
    for name, info in _owners(infos).items():  # whatever a plugin broke, none of its hooks stay
        if info.error and pm.has_plugin(name):
            pm.unregister(name=name)
    return manager


_extra_plugins: list[tuple[str, object]] = []


@cache
def get_manager() -> Manager:
    """The process-wide manager (loaded once)."""
    return build_manager(list(_extra_plugins))


@contextmanager
def registered(plugin: object, name: str = "test-plugin") -> Iterator[Manager]:
    """Register ``plugin`` (a module or object with hookimpls) for the duration of a block.

    A plugin that comes out broken raises :class:`PluginError` here, so that the test registering it fails
    loudly (an installed one is only listed broken).
    """
    _extra_plugins.append((name, plugin))
    get_manager.cache_clear()
    try:
        manager = get_manager()
        error = _owners(manager.plugins)[name].error
        if error:
            raise PluginError(f"plugin {name!r}: {error}")
        yield manager
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
    raise PluginError(f"unknown suite {name_or_path!r}; registered suites: {', '.join(sorted(suites)) or 'none'}"
                      f"{get_manager().broken_hint('suites', name_or_path)}")


def hook_names() -> list[str]:
    return sorted(contract.hooks())

