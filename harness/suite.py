"""Suites: declarative TOML files validated against the registered plugins, expanded into cells."""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from harness import capability, recipes
from harness.api import CellSpec, Recipe
from harness.envs.spec import DEFAULT, Environment, declared_by, for_cell, of_cell
from harness.plugins import Manager, PluginError
from harness.race import RaceError, RaceSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AXES = ("model", "loader", "backend", "precision")
RECIPE = "recipe"  # an optional matrix axis: named recipes, built in or the suite's [recipes.NAME] tables
FAMILY = "family"  # [models.NAME] family = "F": model family F builds NAME (docs/plugins.md, register_models)
ENVIRONMENT = "environment"  # an optional matrix axis: the environment each cell runs in (docs/environments.md)
OPTIONAL_AXES = (RECIPE, ENVIRONMENT)
# key -> (accepted types, required)
TOP_LEVEL: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "description": ((str,), False),
    "epochs": ((int,), True),
    "image_size": ((int,), True),
    "subset": ((int,), False),
    "seed": ((int,), False),
    "repeat": ((int,), False),
    "nproc": ((int,), False),
    "device": ((str,), False),
    "recipe": ((str, dict), False),  # required unless the matrix has a recipe axis
    "recipes": ((dict,), False),
    "target_acc": ((float, int), False),
    "tensorboard": ((bool,), False),
    "save_best": ((bool,), False),
    "allow_emulated": ((bool,), False),
    "strict": ((bool,), False),  # a failed sanity check (harness/sanity.py) fails the cell
    "timeout_s": ((int, float), False),
    "strategy": ((str,), False),  # "full" (every cell to the end, the default) or "race" (harness/race.py)
    "race": ((dict,), False),  # the race's first rung, factor and kept cells
    "matrix": ((dict,), True),
    "models": ((dict,), False),
    "loaders": ((dict,), False),
    "backends": ((dict,), False),
    "environments": ((dict,), False),
}
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("full", "race")
RACE_KEYS = ("first", "factor", "margin", "keep")
#: Counts and sizes, with their smallest allowed value (checked wherever they appear). Recipe values: recipes.LIMITS.
COUNTS = {"epochs": 1, "image_size": 1, "subset": 1, "seed": 0, "repeat": 1, "nproc": 1, "workers": 0}
#: Largest allowed values: a 32-bit seed keeps the seeds derived from it (seed * 1009 + epoch, seed + 104729 * rank)
#: within the 64-bit integers torch and DALI take; a photo side beyond 4096 is a typo, not a size any classifier
#: trains at (one 100,000 px photo would take 120 GB as float32).
MAXIMA = {"seed": 2**32 - 1, "image_size": 4096}
#: Suite names become folder names (runs/NAME-TIMESTAMP): no separators, no leading dot.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SuiteError(ValueError):
    """An invalid suite; the message names the file, the key and the allowed values."""


def check_count(value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer from ``minimum`` to ``maximum``, else ValueError saying what is expected."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
            maximum is not None and value > maximum):
        expected = (f"an integer from {minimum} to {maximum}" if maximum is not None else
                    f"{'a positive' if minimum == 1 else 'a non-negative'} integer")
        raise ValueError(f"expected {expected}, got {value!r}")
    return value


@dataclass
class Suite:
    name: str
    path: Path
    cells: list[CellSpec] = field(default_factory=list)
    description: str = ""
    environments: dict[str, list[str]] = field(default_factory=dict)  # who declared each environment its cells use
    strategy: str = "full"  # "race": run as a race (harness/race.py) unless the command line says otherwise
    race: RaceSettings = field(default_factory=RaceSettings)  # the suite's [race] settings, for a race


def load(path: Path, manager: Manager) -> dict[str, Any]:
    """Parse and validate ``path``; return the raw, checked table."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"{path}: suite file not found") from None
    except IsADirectoryError:
        raise SuiteError(f"{path}: is a directory; expected a suite TOML file or a suite name") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); a suite is a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    Validator(path, manager).check(raw)
    return raw


class Validator:
    def __init__(self, path: Path, manager: Manager) -> None:
        self.path, self.manager = path, manager

    def fail(self, key: str, message: str) -> None:
        raise SuiteError(f"{self.path}: key {key!r}: {message}")

    def check(self, raw: dict[str, Any]) -> None:
        for key in raw:
            if key not in TOP_LEVEL:
                self.fail(key, f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
        for key, (types, required) in TOP_LEVEL.items():
            if key not in raw:
                if required:
                    self.fail(key, "missing")
            elif not isinstance(raw[key], types) or (int in types and isinstance(raw[key], bool)):
                self.fail(key, f"expected {' or '.join(t.__name__ for t in types)}, got {raw[key]!r}")
        if raw.get("device", "auto") not in DEVICES:
            self.fail("device", f"got {raw['device']!r}; allowed: {', '.join(DEVICES)}")
        if not NAME.match(raw["name"]) or len(raw["name"]) > 100:
            self.fail("name", f"{raw['name']!r}: use letters, digits and _ . + - (it names the output folder), "
                              "starting with a letter or digit, at most 100 characters")
        for key in COUNTS:
            if key in raw:
                self.check_count(key, raw[key])
        timeout = raw.get("timeout_s")
        if timeout is not None and not timeout > 0:
            self.fail("timeout_s", f"expected a positive number of seconds, got {timeout!r}")
        target = raw.get("target_acc")
        if target is not None and not 0 < target <= 1:
            self.fail("target_acc", f"expected a validation accuracy in (0, 1], e.g. 0.6; got {target!r}")
        if raw.get("strategy", "full") not in STRATEGIES:
            self.fail("strategy", f"got {raw['strategy']!r}; allowed: {', '.join(STRATEGIES)}")
        self.check_race(raw.get("race", {}))
        self.check_recipes(raw)
        self.check_variants(raw, "loaders", self.manager.loaders())
        self.check_variants(raw, "backends", self.manager.backends())
        self.check_models(raw)
        self.check_environments(raw)
        self.check_matrix(raw)

    def check_race(self, table: dict[str, Any]) -> None:
        for key in table:
            if key not in RACE_KEYS:
                self.fail(f"race.{key}", f"unknown key; allowed: {', '.join(RACE_KEYS)}")
        keep = table.get("keep", [])
        if not isinstance(keep, list) or not all(isinstance(k, str) and "=" in k for k in keep):
            self.fail("race.keep", f"expected a list of KEY=VALUE filters (as --only takes), got {keep!r}")
        try:
            race_settings(table)
        except RaceError as exc:
            key, _, message = str(exc).partition(": ")
            self.fail(key, message)

    def check_recipes(self, raw: dict[str, Any]) -> None:
        axis = raw["matrix"].get(RECIPE) if isinstance(raw["matrix"], dict) else None
        if axis is not None and "recipe" in raw:
            self.fail("recipe", "the matrix has a recipe axis: name the recipes there (and define variants in "
                                "[recipes.NAME] tables), not in the top-level 'recipe'")
        if axis is None and "recipe" not in raw:
            self.fail("recipe", "missing (a named recipe such as 'seed', or a table with 'base' and overrides)")
        if "recipe" in raw:
            self.check_recipe("recipe", raw["recipe"])
        for name, table in raw.get("recipes", {}).items():
            if not isinstance(table, dict):
                self.fail(f"recipes.{name}", f"expected a table with 'base' and overrides, got {table!r}")
            if name in recipes.RECIPES:
                self.fail(f"recipes.{name}", "is a built-in recipe: give the variant a name of its own")
            if not isinstance(axis, list) or name not in axis:
                self.fail(f"recipes.{name}", "not used: name it in matrix.recipe")
            self.check_recipe(f"recipes.{name}", table)

    def check_recipe(self, key: str, recipe: str | dict[str, Any]) -> None:
        table = {"base": recipe} if isinstance(recipe, str) else dict(recipe)
        base = table.pop("base", "default")
        if base not in recipes.RECIPES:
            self.fail(f"{key}.base" if isinstance(recipe, dict) else key,
                      f"unknown recipe {base!r}; allowed: {', '.join(recipes.RECIPES)}")
        for field_name, value in table.items():
            if field_name not in recipes.KINDS:
                self.fail(f"{key}.{field_name}", f"unknown key; allowed: base, {', '.join(recipes.KINDS)}")
            try:
                recipes.coerce(field_name, value)
            except (TypeError, ValueError) as exc:
                self.fail(f"{key}.{field_name}", str(exc))

    def check_count(self, key: str, value: Any) -> None:
        """``key``'s value against its :data:`COUNTS` minimum and :data:`MAXIMA` maximum (by its last part)."""
        name = key.rsplit(".", 1)[-1]
        try:
            check_count(value, COUNTS[name], MAXIMA.get(name))
        except ValueError as exc:
            self.fail(key, str(exc))

    def check_variants(self, raw: dict[str, Any], section: str, registered: dict[str, Any]) -> None:
        for name, table in raw.get(section, {}).items():
            if not isinstance(table, dict):
                self.fail(f"{section}.{name}", f"expected a table, got {table!r}")
            plugin = table.get("use", name)
            if plugin not in registered:
                self.fail(f"{section}.{name}.use", f"unknown {section[:-1]} {plugin!r}; allowed: {_names(registered)}"
                                                   f"{self.manager.broken_hint(section, plugin)}")
            for key in ("nproc", "workers"):
                if key in table:
                    self.check_count(f"{section}.{name}.{key}", table[key])
            if "environment" in table:
                try:
                    environment = variant_environment(table, name, self.path.parent)
                except ValueError as exc:
                    self.fail(f"{section}.{name}.environment", str(exc))
                if environment is not None:
                    self.check_constraints(f"{section}.{name}.environment", environment)
            check = getattr(registered[plugin].impl, "check_params", None)  # optional plugin method
            params = {k: v for k, v in table.items() if k not in ("use", "nproc", "environment")}
            problem = check and capability.ask(registered[plugin], partial(check, params), "check_params")
            if problem:
                self.fail(f"{section}.{name}", problem)

    def check_models(self, raw: dict[str, Any]) -> None:
        for name, table in raw.get("models", {}).items():
            if not isinstance(table, dict):
                self.fail(f"models.{name}", f"expected a table of model arguments, got {table!r}")
            pin = table.get(FAMILY)
            if pin is not None and not isinstance(pin, str):
                self.fail(f"models.{name}.{FAMILY}", f"expected the name of a model family, got {pin!r}")
            try:
                family = self.manager.model_family(name, pin)
            except PluginError as exc:
                self.fail(f"models.{name}.{FAMILY}" if pin else f"models.{name}", str(exc))
            arguments = model_arguments(raw, name)
            problem = family and capability.model_arguments_problem(family, name, raw["image_size"], arguments)
            if problem:
                self.fail(f"models.{name}", problem)

    def check_environments(self, raw: dict[str, Any]) -> None:
        for name, table in raw.get("environments", {}).items():
            key = f"environments.{name}"
            if not isinstance(table, dict):
                self.fail(key, f"expected a table with requires (and constraints), got {table!r}")
            if name == DEFAULT or "name" in table:
                self.fail(key, "'default' is the harness's own environment" if "name" not in table else
                               "unknown key 'name' (the table's name is the environment's)")
            if not table.get("requires"):
                self.fail(key, "missing 'requires', a list of pip requirements such as 'torch==2.5.1'")
            try:
                environment = Environment.parse({"name": name, **table}, self.path.parent)
            except ValueError as exc:
                self.fail(key, str(exc))
            self.check_constraints(key, environment)

    def check_constraints(self, key: str, environment: Environment) -> None:
        for path in environment.constraints:
            if not Path(path).is_file():
                self.fail(f"{key}.constraints", f"file {path} not found (relative paths start at the suite file)")

    def check_matrix(self, raw: dict[str, Any]) -> None:
        matrix = raw["matrix"]
        for key in matrix:
            if key not in (*AXES, *OPTIONAL_AXES, "exclude"):
                self.fail(f"matrix.{key}", f"unknown key; allowed: {', '.join((*AXES, *OPTIONAL_AXES, 'exclude'))}")
        allowed = {
            "loader": set(self.manager.loaders()) | set(raw.get("loaders", {})),
            "backend": set(self.manager.backends()) | set(raw.get("backends", {})),
            "precision": {p for r in self.manager.backends().values() for p in r.impl.precisions},
            RECIPE: {*recipes.RECIPES, *raw.get("recipes", {})},
            ENVIRONMENT: {DEFAULT, *raw.get("environments", {})},
        }
        axes = axes_of(matrix)
        for axis in axes:
            values = matrix.get(axis)
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                self.fail(f"matrix.{axis}", f"expected a non-empty list of strings, got {values!r}")
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                self.fail(f"matrix.{axis}", f"{twice[0]!r} is listed twice")
            for value in values:
                if axis == "model":
                    try:
                        family = self.manager.model_family(value, pinned(raw, value))
                    except PluginError as exc:
                        self.fail("matrix.model", str(exc))
                    if family is None:
                        families = ", ".join(sorted(self.manager.models()))
                        self.fail("matrix.model", f"unknown model {value!r}; no model family knows it ({families})"
                                                  f"{self.manager.broken_hint('models', value)}")
                elif value not in allowed[axis]:
                    names = ", ".join(sorted(allowed[axis]))
                    hint = "" if axis in OPTIONAL_AXES else self.manager.broken_hint(axis + "s", value)
                    self.fail(f"matrix.{axis}", f"unknown {axis} {value!r}; allowed: {names}{hint}")
        self.check_exclude(matrix, axes)

    def check_exclude(self, matrix: dict[str, Any], axes: list[str]) -> None:
        """``matrix.exclude`` tables name a value (or a list of values) on one or more axes; cells matching all of
        them are left out (as in GitHub Actions). A value the axis does not list is an error, not a silent no-op."""
        exclude = matrix.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(t, dict) and t for t in exclude):
            self.fail("matrix.exclude", f"expected a list of tables such as {{ loader = 'dali', backend = 'torch' }}, "
                                        f"got {exclude!r}")
        for i, table in enumerate(exclude):
            for axis, value in table.items():
                if axis not in axes:
                    self.fail(f"matrix.exclude[{i}].{axis}", f"not an axis of this matrix; axes: {', '.join(axes)}")
                for one in value if isinstance(value, list) else [value]:
                    if one not in matrix[axis]:
                        self.fail(f"matrix.exclude[{i}].{axis}", f"{one!r} is not in matrix.{axis} {matrix[axis]!r}")


def pinned(raw: dict[str, Any], model: str) -> str | None:
    """The model family the suite pins for ``model`` (``[models.NAME] family``), or None."""
    return raw.get("models", {}).get(model, {}).get(FAMILY)


def model_arguments(raw: dict[str, Any], model: str) -> dict[str, Any]:
    """The suite's arguments for building ``model``: its ``[models.NAME]`` table without ``family``."""
    return {k: v for k, v in raw.get("models", {}).get(model, {}).items() if k != FAMILY}


def axes_of(matrix: dict[str, Any]) -> list[str]:
    """The matrix's axes in cell-id order: model, loader, backend, precision, then recipe and environment if
    present."""
    return [*AXES, *(a for a in OPTIONAL_AXES if a in matrix)]


def variant_environment(table: dict[str, Any], name: str, base: Path) -> Environment | None:
    """The environment a loader or backend variant declares (``environment = {requires = [...]}``; named after the
    variant unless it says otherwise); ValueError says what is wrong."""
    value = table.get("environment")
    if value is None:
        return None
    if not isinstance(value, dict) or not value.get("requires"):
        raise ValueError(f"expected a table with requires (and constraints, name), got {value!r}")
    return Environment.parse({"name": name, **value}, base)


def _names(registered: dict[str, Any]) -> str:
    return ", ".join(sorted(registered)) or "none registered"


def cell_id(model: str, loader: str, backend: str, precision: str, *optional: str | None) -> str:
    """A stable, readable, filesystem-safe id: ``model-loader-backend-precision``, then the recipe and the
    environment when the suite has those axes."""
    parts = (model, loader, backend, precision, *(o for o in optional if o))
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))


def expand(path: Path, manager: Manager, **overrides: Any) -> Suite:
    """Validate ``path`` and expand its matrix into cells.

    ``overrides``: data, epochs, device, nproc, seed, repeat, tensorboard, allow_emulated, timeout_s, target_acc
    (None means the suite's value). With ``repeat`` N > 1 every cell runs N times, with seeds seed, seed + 1, ...
    and ids ``ID``, ``ID-r2``, ... (all cells' first repeat first, so each repeat samples the machine at another
    time).
    """
    raw = load(path, manager)
    _check_overrides(overrides)
    named = {name: _recipe(table) for name, table in raw.get("recipes", {}).items()}
    options: dict[str, Any] = {k: raw.get(k, False) for k in ("tensorboard", "save_best", "strict")}
    options["target_acc"] = _pick(overrides.get("target_acc"), raw.get("target_acc"))  # read back by the report
    if overrides.get("tensorboard") is not None:
        options["tensorboard"] = overrides["tensorboard"]
    chosen = {name: Environment.parse({"name": name, **table}, path.parent)
              for name, table in raw.get("environments", {}).items()}
    declarers: dict[str, list[str]] = {}
    matrix = raw["matrix"]
    axes = axes_of(matrix)
    cells = []
    for values in itertools.product(*(matrix[a] for a in axes)):
        point = dict(zip(axes, values, strict=True))
        if any(all(point[k] in (v if isinstance(v, list) else [v]) for k, v in table.items())
               for table in matrix.get("exclude", [])):
            continue
        model, loader, backend, precision = (point[a] for a in AXES)
        recipe_name, env_name = point.get(RECIPE, ""), point.get(ENVIRONMENT)
        recipe = named.get(recipe_name) or _recipe(recipe_name or raw["recipe"])
        loader_table = dict(raw.get("loaders", {}).get(loader, {}))
        backend_table = dict(raw.get("backends", {}).get(backend, {}))
        nproc = backend_table.pop("nproc", raw.get("nproc", 1))
        loader_plugin, backend_plugin = loader_table.pop("use", loader), backend_table.pop("use", backend)
        plugins = (manager.loaders()[loader_plugin], manager.model_family(model, pinned(raw, model)),
                   manager.backends()[backend_plugin])
        suite_env = chosen.get(env_name or "", Environment())
        declared = [(f"suite [environments.{suite_env.name}]", suite_env),
                    (f"loader variant [loaders.{loader}]", variant_environment(loader_table, loader, path.parent)),
                    (f"backend variant [backends.{backend}]", variant_environment(backend_table, backend, path.parent)),
                    *((f"{kind} {reg.name}", declared_by(reg, manager))
                      for kind, reg in zip(("loader", "model family", "backend"), plugins, strict=True) if reg)]
        loader_table.pop("environment", None)
        backend_table.pop("environment", None)
        environment = for_cell(suite_env, [e for _, e in declared[1:]])
        for who, declaration in declared:
            if declaration and not declaration.is_default and declaration.name in environment.parts:
                declarers.setdefault(declaration.name, [])
                declarers[declaration.name] += [who] if who not in declarers[declaration.name] else []
        cells.append(
            CellSpec(
                id=cell_id(model, loader, backend, precision, recipe_name, env_name),
                suite=raw["name"],
                model=model,
                loader=loader,
                backend=backend,
                precision=precision,
                loader_plugin=loader_plugin,
                backend_plugin=backend_plugin,
                model_plugin=getattr(plugins[1], "name", ""),  # validated above
                epochs=_pick(overrides.get("epochs"), raw["epochs"]),
                image_size=raw["image_size"],
                data=str(overrides.get("data") or ""),
                seed=_pick(overrides.get("seed"), raw.get("seed", 0)),
                recipe=recipe,
                recipe_name=recipe_name,
                nproc=_pick(overrides.get("nproc"), nproc),
                subset=raw.get("subset"),
                device=overrides.get("device") or raw.get("device", "auto"),
                model_params=model_arguments(raw, model),
                loader_params=loader_table,
                backend_params=backend_table,
                options=options,
                allow_emulated=bool(overrides.get("allow_emulated") or raw.get("allow_emulated", False)),
                timeout_s=_pick(overrides.get("timeout_s"), raw.get("timeout_s")),
                environment=environment.describe(),
            )
        )
    if not cells:
        raise SuiteError(f"{path}: key 'matrix.exclude': excludes every cell of the matrix")
    _check_ids(path, cells)
    repeats = _pick(overrides.get("repeat"), raw.get("repeat", 1))
    last_seed = max(c.seed for c in cells) + repeats - 1
    if last_seed > MAXIMA["seed"]:
        raise SuiteError(f"{path}: key 'repeat': the repeats' seeds run to {last_seed}, past the largest seed "
                         f"{MAXIMA['seed']}; lower the seed or the repeat count")
    cells = [replace(c, id=f"{c.id}-r{r + 1}" if r else c.id, seed=c.seed + r) for r in range(repeats) for c in cells]
    return Suite(raw["name"], path, cells, raw.get("description", ""), declarers, raw.get("strategy", "full"),
                 race_settings(raw.get("race", {})))


def race_settings(table: dict[str, Any]) -> RaceSettings:
    """A suite's ``[race]`` table as settings (defaults for what it leaves out)."""
    defaults = RaceSettings()
    return RaceSettings(table.get("first", defaults.first), table.get("factor", defaults.factor),
                        table.get("margin", defaults.margin), tuple(table.get("keep", ())))


def _pick(override: Any, value: Any) -> Any:
    """The override unless it is None (0 is a value, never 'not given')."""
    return value if override is None else override


def _check_overrides(overrides: dict[str, Any]) -> None:
    for key in ("epochs", "nproc", "seed", "repeat"):
        if overrides.get(key) is not None:
            try:
                check_count(overrides[key], COUNTS[key], MAXIMA.get(key))
            except ValueError as exc:
                raise SuiteError(f"--{key}: {exc}") from None
    timeout = overrides.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SuiteError(f"timeout: expected a positive number of seconds, got {timeout!r}")


def _check_ids(path: Path, cells: list[CellSpec]) -> None:
    """Two cells must never share an id (they would overwrite each other's results)."""
    seen: dict[str, CellSpec] = {}
    for cell in cells:
        other = seen.setdefault(cell.id, cell)
        if other is not cell:
            diff = [k for k in (*AXES, RECIPE) if _axis_value(other, k) != _axis_value(cell, k)]
            key = f"matrix.{diff[0]}" if len(diff) == 1 else "matrix"
            a, b = (", ".join(f"{k} {_axis_value(c, k)!r}" for k in diff) for c in (other, cell))
            raise SuiteError(f"{path}: key {key!r}: {a} and {b} both give the cell id {cell.id!r} "
                             "(ids keep only letters, digits and _ . + -); rename one")


def _axis_value(cell: CellSpec, axis: str) -> str:
    return cell.recipe_name if axis == RECIPE else str(getattr(cell, axis))


def _recipe(value: str | dict[str, Any]) -> Recipe:
    table = {"base": value} if isinstance(value, str) else dict(value)
    base = table.pop("base", "default")
    return recipes.resolve(base, {k: recipes.coerce(k, v) for k, v in table.items()})


def registered_models(manager: Manager) -> set[str]:
    """The model names the registered suites' matrices list (suites that do not parse are passed over)."""
    names: set[str] = set()
    for registration in manager.suites().values():
        try:
            models = tomllib.loads(Path(registration.impl).read_text()).get("matrix", {}).get("model", [])
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
            continue
        if isinstance(models, list):
            names.update(m for m in models if isinstance(m, str))
    return names


def shared_names(cells: list[CellSpec], manager: Manager) -> list[str]:
    """One line per model of ``cells`` that more than one model family knows: which builds it, which others
    know it (docs/plugins.md, ``register_models``)."""
    pairs = dict.fromkeys((c.model, c.model_plugin) for c in cells)
    return [line for model, family in pairs if (line := manager.shared_name(model, family))]


def select(cells: list[CellSpec], only: list[str]) -> list[CellSpec]:
    """Keep cells matching the ``key=value`` filters: every key given, and one of the values given for a key
    (``--only model=a --only model=b --only precision=fp32``: a or b, in fp32). Keys: id, the matrix axes, and
    environment, which matches the cell's environment or one part of a combined one such as
    ``torch-2.5+colossalai``."""
    keys = ("id", *AXES, *OPTIONAL_AXES)
    wanted: dict[str, set[str]] = {}
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise SuiteError(f"--only {item!r}: expected KEY=VALUE with KEY one of {', '.join(keys)}")
        wanted.setdefault(key, set()).add(value)
    return [c for c in cells if all(values & _values(c, key) for key, values in wanted.items())]


def _values(cell: CellSpec, key: str) -> set[str]:
    if key == ENVIRONMENT:
        name = of_cell(cell).name
        return {name, *name.split("+")}
    if key == RECIPE:
        return {cell.recipe_name}
    return {getattr(cell, key)}

