"""The shape of the package: no import circles among harness's modules, and HARNESS_* settings read in one place."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import harness.paths

ROOT = Path(harness.paths.__file__).parent  # the harness package folder
SETTING = re.compile(r"HARNESS_[A-Z0-9_]+")
NOT_VARIABLES = {"HARNESS_API"}  # a plugin module's attribute (the hook API range it supports), not a variable


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The harness modules ``path`` imports, anywhere in it (function-level imports count: they are circles too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def test_the_import_graph_of_harness_has_no_circle() -> None:
    edges = graph()
    assert edges["harness.suite"] >= {"harness.envs.spec"} and "harness.compare" in edges["harness.ab"]  # it reads
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_harness_settings_are_named_only_in_harness_paths() -> None:
    """Every HARNESS_* variable is named (hence read) in harness/paths.py alone, and each there has its meaning."""
    named = {}
    for path in [*ROOT.rglob("*.py"), *(ROOT.parent / "plugins").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING.fullmatch(node.value):
                named.setdefault(node.value, set()).add(path.name)
    elsewhere = {k: v - {"paths.py"} for k, v in named.items() if k not in NOT_VARIABLES and v - {"paths.py"}}
    assert not elsewhere, f"HARNESS_* variables named outside harness/paths.py: {elsewhere}"
    assert set(harness.paths.SETTINGS) == set(named) - NOT_VARIABLES


def test_the_cache_follows_xdg_unless_harness_cache_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(harness.paths.CACHE, raising=False)
    monkeypatch.delenv(harness.paths.ENVS, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert harness.paths.cache_dir() == tmp_path / "xdg" / "harness"
    assert harness.paths.envs_dir() == tmp_path / "xdg" / "harness" / "envs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the spec: a relative path is ignored
    assert harness.paths.cache_dir() == Path.home() / ".cache" / "harness"
    monkeypatch.setenv(harness.paths.CACHE, str(tmp_path / "mine"))
    assert harness.paths.fleet_cache() == tmp_path / "mine" / "fleet-data"
