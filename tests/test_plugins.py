"""The plugin manager: built-ins through entry points, in-process plugins, the allow-list."""

from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.plugins import build_manager, get_manager, registered
from harness.testing import run_harness

BUILTINS = {"torchvision", "timm", "torch", "dali", "colossalai", "suites", "tensorboard", "best-checkpoint",
            "local-executor", "ray-executor"}


def test_builtins_load_through_the_entry_point_group() -> None:
    manager = get_manager()
    assert {p.name for p in manager.plugins} >= BUILTINS
    assert {p.distribution for p in manager.plugins if p.name in BUILTINS} == {"harness"}
    assert {"torchvision", "dali"} <= set(manager.loaders())
    assert "torch" in manager.backends()
    assert manager.model_family("vit_tiny_patch16_224").plugin == "timm"
    assert manager.model_family("no_such_model") is None
    assert {"flowers", "flowers-smoke"} <= set(manager.suites())
    assert set(manager.executors()) >= {"local", "pool", "ray"}


class SquaresLoader:
    def can_run(self, device, params):
        return None if params.get("ok", True) else "squares refuse"

    def build(self, spec):
        raise NotImplementedError


class InlinePlugin:
    @hookimpl
    def register_loaders(self, register) -> None:
        register("squares", SquaresLoader())


def test_an_inline_plugin_registers_for_one_block() -> None:
    with registered(InlinePlugin(), "inline") as manager:
        assert manager.loaders()["squares"].plugin == "inline"
        assert manager.loaders()["squares"].impl.can_run(None, {"ok": False}) == "squares refuse"
    assert "squares" not in get_manager().loaders()


def test_allow_list_loads_only_named_plugins(monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_PLUGINS", "torch,timm")
    manager = build_manager()
    # and the built-in local executor, without which harness run cannot run anything
    assert {p.name for p in manager.plugins} == {"torch", "timm", "local-executor"}
    assert set(manager.loaders()) == set() and set(manager.executors()) == {"local", "pool"}


def test_harness_plugins_lists_distribution_version_and_hooks(tmp_path: Path) -> None:
    result = run_harness("plugins")
    assert result.returncode == 0
    assert "torchvision    harness 0.1.0" in result.stdout
    assert "hooks: register_loaders" in result.stdout
    assert "provides: loader torchvision" in result.stdout
