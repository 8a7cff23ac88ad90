"""The plugin API contract (issue 19): precedence, name clashes, the public API, and one-line errors at every
plugin boundary, each with inline plugins, as docs/plugins.md describes them."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import one_cell_suite

from harness import api
from harness.api import DataSplits
from harness.cell import run
from harness.hookspecs import hookimpl
from harness.plugins import MODULES_ENV, PluginError, build_manager
from harness.suite import SuiteError, expand
from harness.testing import ContractError, check_loader, data_spec, results, run_harness, suite_cells

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "plugins" / "examples" / "harness-synthetic"
PUBLIC = {"harness.api", "harness.hookspecs", "harness.testing"}
Register = Callable[..., Any]


def guide() -> str:
    return " ".join(GUIDE.read_text().split())  # sentences may wrap


# -- inline plugins ----------------------------------------------------------------------------------
class Loader:
    """Two classes of random 16 px images; ``bad`` breaks one rule of the batch contract."""

    reads_data = False

    def __init__(self, bad: str | None = None) -> None:
        self.bad = bad

    def can_run(self, device: object, params: object) -> str | None:
        return None

    def build(self, spec: api.DataSpec) -> DataSplits:
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
        labels = torch.arange(8) % 2
        batch: Any = {
            "nhwc": (images.permute(0, 2, 3, 1), labels),
            "int32-labels": (images, labels.int()),
            "label-out-of-range": (images, labels + 1),
            "dict": {"image": images, "label": labels},
            "float-0-255": (images.float(), labels),
        }.get(self.bad, (images, labels))
        return DataSplits([batch], [batch], ["a", "b"], train_size=0 if self.bad == "empty" else 8, validation_size=8)


class Family:
    """Builds ``tiny``; ``bad`` breaks one rule of the model contract."""

    def __init__(self, known: tuple[str, ...] = ("tiny",), bad: str | None = None) -> None:
        self.known, self.bad = known, bad

    def knows(self, name: str) -> bool:
        return name in self.known

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> Any:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_size**2, num_classes + (
            self.bad == "wrong-output")))
        return {"tuple": (model, {}), "not-a-module": "model"}.get(self.bad, model)


def plugin(loader: Loader | None = None, family: Family | None = None) -> SimpleNamespace:
    hooks = {}
    if loader is not None:
        hooks["register_loaders"] = hookimpl(lambda register: register("squares", loader))
    if family is not None:
        hooks["register_models"] = hookimpl(lambda register: register("tiny-family", family))
    return SimpleNamespace(**hooks)


def suite(path: Path, model: str = "tiny", loader: str = "squares") -> Path:
    return one_cell_suite(path, model, loader)


def module(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text("from harness.hookspecs import hookimpl\n" + body)


def distribution(site: Path, name: str, entry_points: dict[str, str], installed: float) -> None:
    """A fake installed distribution: a ``.dist-info`` folder with ``entry_points``, installed at ``installed``."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    os.utime(info, (installed, installed))


LOADER_MODULE = """
class Loader:
    def can_run(self, device, params):
        return None

    def build(self, spec):
        raise NotImplementedError

@hookimpl
def register_loaders(register):
    register({name!r}, Loader())
"""


# -- 1 precedence --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["extras", "zz-extras"])
def test_a_builtin_family_keeps_a_name_it_knows_whatever_the_plugins_name(
        harness_plugin: Register, name: str) -> None:
    """Guide: "a built-in family first" (not entry-point name order); names only the plugin knows are its own."""
    assert "a built-in family first" in guide()
    manager = harness_plugin(plugin(family=Family(("efficientnet_b0", "my_net"))), name=name)
    assert manager.model_family("efficientnet_b0").plugin == "timm"
    assert manager.model_family("efficientnet_b0", "tiny-family").plugin == name  # a suite may pin it
    assert manager.model_family("my_net").plugin == name


def test_two_third_party_families_knowing_a_model_is_an_error_naming_both(harness_plugin: Register) -> None:
    """Guide: a name only third-party families know refuses the suite, "naming both"."""
    assert "refuse the suite, naming both" in guide()
    harness_plugin(plugin(family=Family(("my_net",))), name="extras")
    other = SimpleNamespace(register_models=hookimpl(lambda register: register("more", Family(("my_net",)))))
    manager = harness_plugin(other, name="more-extras")
    with pytest.raises(PluginError, match=r"'my_net' is known to 2 model families: model family "
                                          r"'tiny-family' of plugin 'extras' .* and model family 'more' of plugin"):
        manager.model_family("my_net")
    assert manager.model_family("my_net", "more").plugin == "more-extras"


def test_the_family_that_built_the_model_is_recorded_with_the_result(harness_plugin: Register, tmp_path: Path) -> None:
    harness_plugin(plugin(Loader(), Family()), name="inline")
    [cell] = suite_cells(suite(tmp_path / "suite.toml"))
    assert (cell.loader_plugin, cell.backend_plugin, cell.model_plugin) == ("squares", "torch", "tiny-family")
    assert run(cell, tmp_path / "out", resume=False) == 0
    result = results(tmp_path / "out")[cell.id]
    assert result["status"] == "ok" and result["cell"]["model_plugin"] == "tiny-family"


# -- 2 name clashes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["harness-extras", "throwaway"])
def test_an_entry_point_clash_breaks_the_later_install_never_a_builtin(site: Path, first: str) -> None:
    """Guide: "a built-in plugin or the distribution installed first keeps the name"."""
    assert "a built-in plugin or the distribution installed first keeps the name" in guide()
    module(site, "extras_mod", LOADER_MODULE.format(name="extra-loader"))
    module(site, "throwaway_mod", LOADER_MODULE.format(name="throwaway-loader"))
    installed = {"harness-extras": 1_000_000, "throwaway": 2_000_000}
    if first == "throwaway":
        installed = {"harness-extras": 2_000_000, "throwaway": 1_000_000}
    distribution(site, "harness-extras", {"extras": "extras_mod"}, installed["harness-extras"])
    distribution(site, "throwaway", {"torch": "throwaway_mod", "extras": "throwaway_mod"}, installed["throwaway"])
    manager = build_manager()
    broken = {(p.name, p.distribution): p.error for p in manager.plugins if p.error}
    assert broken.pop(("torch", "throwaway")).startswith("entry point name 'torch' is taken by distribution "
                                                         "harness (built-in)")
    second = "throwaway" if first == "harness-extras" else "harness-extras"
    assert broken == {("extras", second): f"entry point name 'extras' is taken by distribution {first} "
                                          "(installed first); rename one of them in its "
                                          "[project.entry-points.harness] table"}
    assert "torch" in manager.backends()
    assert set(manager.loaders()) >= {"extra-loader" if first == "harness-extras" else "throwaway-loader"}
    flowers = expand(Path(manager.suites()["flowers-smoke"].impl), manager)  # its backends are all there
    assert {c.backend_plugin for c in flowers.cells} >= {"torch"}


def test_a_registered_name_clash_keeps_the_first_installed_and_harness_plugins_shows_it(site: Path) -> None:
    """Guide: the plugin installed later "is listed broken, naming both"; `harness plugins` always works."""
    assert "is listed broken, naming both" in guide()
    module(site, "extras_mod", LOADER_MODULE.format(name="shared"))
    module(site, "copy_mod", LOADER_MODULE.format(name="shared"))
    module(site, "no_hooks", "def register_loaders(register):\n    pass\n")
    module(site, "broken_on_import", "raise RuntimeError('deliberately broken')\n")
    distribution(site, "harness-extras", {"extras": "extras_mod"}, 1_000_000)
    distribution(site, "copycat", {"copy": "copy_mod"}, 2_000_000)
    done = run_harness("plugins", plugin_modules=["no_hooks", "broken_on_import"], pythonpath=[site])
    assert done.returncode == 0, done.stderr
    assert re.search(r"^copy +copycat 0\.1  BROKEN: loader 'shared' is registered twice: by plugin 'extras' "
                     r"\(distribution harness-extras 0\.1\) and by plugin 'copy' \(distribution copycat 0\.1\); "
                     r"'extras' keeps it \(installed first\)$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^extras +harness-extras 0\.1\n +hooks: register_loaders\n +provides: loader shared$",
                     done.stdout, re.MULTILINE), done.stdout
    assert ("warning: register_loaders looks like a hook but has no @hookimpl, so it is never called "
            "(decorate it with harness.hookspecs.hookimpl)") in done.stdout
    assert "warning: no @hookimpl functions: it adds nothing" in done.stdout
    assert "BROKEN: RuntimeError: deliberately broken" in done.stdout
    assert re.search(r"^ +environment: dali=", done.stdout, re.MULTILINE)  # labelled, under its plugin
    assert not re.search(r"^\S+: ", done.stdout, re.MULTILINE), "every line starts with a plugin or a label"


def test_an_in_process_plugin_reusing_a_name_raises_naming_both(harness_plugin: Register) -> None:
    mine = SimpleNamespace(register_loaders=hookimpl(lambda register: register("torchvision", Loader())))
    with pytest.raises(PluginError, match=r"loader 'torchvision' is registered twice: by plugin 'torchvision' "
                                          r"\(distribution harness 0.1.0\) and by plugin 'mine'.*"
                                          r"keeps it \(built-in\)"):
        harness_plugin(mine, name="mine")


# -- 3 the public API --------------------------------------------------------------------------------------
def test_harness_api_is_the_documented_surface() -> None:
    defined = {n for n, v in vars(api).items()
               if not n.startswith("_") and getattr(v, "__module__", None) in ("harness.api", "harness.datasets")}
    assert defined <= set(api.__all__), f"{defined - set(api.__all__)} not in harness.api.__all__"
    text = GUIDE.read_text()
    missing = [name for name in api.__all__ if not re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", text)]
    assert not missing, f"docs/plugins.md does not mention {missing}"
    assert "every other module of `harness` is internal" in guide()


def test_discover_and_select_apply_a_subset_as_the_builtin_loaders_do(tiny_photos: Path) -> None:
    from harness_plugins.torchvision_loader import TorchvisionLoader

    dataset = api.discover(tiny_photos)
    assert dataset.classes == ["class_0", "class_1", "class_2"] and not dataset.prepared
    assert all(isinstance(s, api.Sample) for s in dataset.splits["train"])
    chosen = api.select(dataset, 6, seed=0)
    assert len(chosen["train"]) == 6 and {s.label for s in chosen["train"]} == {0, 1, 2}
    built = check_loader(TorchvisionLoader(), data_spec(tiny_photos, subset=6, params={"workers": 0}))
    assert built.train_size == 6  # and the built-in loader's batches meet the contract
    with pytest.raises(api.DataError, match="does not exist"):
        api.discover(tiny_photos / "nowhere")


def imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "harness"}


def test_the_example_and_the_guide_use_only_the_public_api() -> None:
    for path in EXAMPLE.rglob("*.py"):
        assert imports(path.read_text()) <= PUBLIC, f"{path} imports internals"
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    used = set().union(*(re.findall(r"(?:from|import) (harness(?:\.\w+)*)\b", block) for block in blocks))
    assert used <= PUBLIC, f"docs/plugins.md's examples import {used - PUBLIC}"


# -- 4 one-line errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "error"), [
    ("@hookimpl\ndef register_loaders(registry):\n    pass\n",
     "ContractError: hook register_loaders: unknown argument 'registry'; did you mean 'register'? "
     "(the spec is register_loaders(register))"),
    ("@hookimpl\ndef harness_epoch_ends(record):\n    pass\n",
     "ContractError: unknown hook 'harness_epoch_ends'; did you mean 'harness_epoch_end'?"),
    ("class Loader:\n    def can_run(self, device, params):\n        return None\n"
     "@hookimpl\ndef register_loaders(register):\n    register('half', Loader())\n",
     "register_loaders: loader 'half' (Loader) does not implement harness.api.LoaderPlugin: "
     "missing method build(spec)"),
    ("class Loader:\n    def can_run(self, device, params):\n        return None\n"
     "    def build(self, spec):\n        pass\n"
     "@hookimpl\ndef register_loaders(register):\n    register('cls', Loader)\n",
     "register_loaders: loader 'cls': registered the class Loader; expected an instance: "
     "register('cls', Loader())"),
    ("class Backend:\n    def can_run(self, *a, **k):\n        return None\n"
     "    def create(self, *a, **k):\n        pass\n"
     "@hookimpl\ndef register_backends(register):\n    register('b', Backend())\n",
     "register_backends: backend 'b' (Backend) does not implement harness.api.BackendPlugin: missing attribute "
     "precisions"),
], ids=["misspelt-argument", "misspelt-hook", "missing-method", "class-not-instance", "missing-attribute"])
def test_a_broken_registration_is_one_line_saying_what_to_do(
        site: Path, monkeypatch: pytest.MonkeyPatch, body: str, error: str) -> None:
    module(site, "faulty", body)
    monkeypatch.setenv(MODULES_ENV, "faulty")
    [info] = [p for p in build_manager().plugins if p.name == "faulty"]
    assert info.error == error


def test_a_hook_named_function_without_hookimpl_warns(harness_plugin: Register) -> None:
    with pytest.warns(UserWarning) as caught:
        manager = harness_plugin(SimpleNamespace(register_loaders=lambda register: None), name="plain")
    assert [str(w.message) for w in caught] == [
        "plugin 'plain': register_loaders looks like a hook but has no @hookimpl, so it is never called (decorate "
        "it with harness.hookspecs.hookimpl)", "plugin 'plain': no @hookimpl functions: it adds nothing"]
    assert next(p for p in manager.plugins if p.name == "plain").hooks == []


LOADER_FAULTS = {
    "nhwc": "build(spec).train, first batch: images have shape [8, 16, 16, 3] (NHWC? permute(0, 3, 1, 2)); "
            "expected NCHW [batch, 3, height, width]",
    "int32-labels": "build(spec).train, first batch: labels are torch.int32 [8]; expected int64 [8]",
    "label-out-of-range": "build(spec).train, first batch: labels span 1..2; expected class indices in [0, 2) "
                          "(len(DataSplits.classes))",
    "dict": "build(spec).train, first batch: got dict; expected an (images, labels) pair",
    "float-0-255": "build(spec).train, first batch: float images reach 255: not normalised; expected uint8 0..255 "
                   "(the engine normalises) or float (x / 255 - mean) / std",
    "empty": "build(spec) returned an empty training split (train_size 0, 2 classes); expected training images",
}
MODEL_FAULTS = {
    "tuple": "model family 'tiny-family' of plugin 'inline' (distribution (registered in-process)): "
             "build('tiny', ...) returned tuple (return the model alone); expected a torch.nn.Module",
    "not-a-module": "model family 'tiny-family' of plugin 'inline' (distribution (registered in-process)): "
                    "build('tiny', ...) returned str; expected a torch.nn.Module",
    "wrong-output": "model 'tiny' built by model family 'tiny-family' of plugin 'inline' (distribution (registered "
                    "in-process)): forward returned shape [8, 3] for 8 images; expected logits [batch, num_classes] "
                    "= [8, 2]",
}


@pytest.mark.parametrize("fault", [*LOADER_FAULTS, *MODEL_FAULTS])
def test_a_contract_breach_fails_the_cell_with_one_line_naming_the_plugin(
        harness_plugin: Register, tmp_path: Path, fault: str) -> None:
    loader, family = (Loader(fault), Family()) if fault in LOADER_FAULTS else (Loader(), Family(bad=fault))
    harness_plugin(plugin(loader, family), name="inline")
    [cell] = suite_cells(suite(tmp_path / "suite.toml"))
    assert run(cell, tmp_path / "out", resume=False) == 1
    result = results(tmp_path / "out")[cell.id]
    owner = "loader 'squares' of plugin 'inline' (distribution (registered in-process)): "
    expected = owner + LOADER_FAULTS[fault] if fault in LOADER_FAULTS else MODEL_FAULTS[fault]
    assert (result["status"], result["reason"]) == ("failed", f"ContractError: {expected}")


def test_check_loader_applies_the_cells_checks_in_a_unit_test() -> None:
    assert check_loader(Loader(), data_spec()).classes == ["a", "b"]
    with pytest.raises(ContractError, match=r"loader Loader: build\(spec\).train, first batch: got dict"):
        check_loader(Loader("dict"), data_spec())


def test_an_unknown_loader_names_the_broken_plugin_that_may_provide_it(site: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    module(site, "squares_plugin", "raise ImportError('no module named squarelib')\n")
    monkeypatch.setenv(MODULES_ENV, "squares_plugin")
    with pytest.raises(SuiteError, match=r"unknown loader 'squares'; allowed: .*; plugin 'squares_plugin' that may "
                                         r"provide it is broken: ImportError: no module named squarelib$"):
        expand(suite(tmp_path / "suite.toml", model="resnet18"), build_manager())


# -- 5 what the command line and the docs promise ----------------------------------------------------------------
def test_a_run_whose_cells_are_all_skipped_exits_0_and_env_lists_broken_plugins(tmp_path: Path) -> None:
    """README: `harness run` exits 0 "when no cell failed"; `harness env` lists broken plugins in its text."""
    assert "exit 0 when no cell failed" in (REPO / "README.md").read_text()
    module(tmp_path / "mods", "refusing", """
import torch
class Loader:
    reads_data = False
    def can_run(self, device, params):
        return "refused on purpose"
    def build(self, spec):
        raise AssertionError("skipped cells are never built")
class Family:
    def knows(self, name):
        return name == "tiny"
    def build(self, name, num_classes, image_size):
        return torch.nn.Linear(2, num_classes)
@hookimpl
def register_loaders(register):
    register("squares", Loader())
@hookimpl
def register_models(register):
    register("tiny-family", Family())
""")
    module(tmp_path / "mods", "broken_on_import", "raise RuntimeError('deliberately broken')\n")
    kwargs = {"plugin_modules": ["refusing", "broken_on_import"], "pythonpath": [tmp_path / "mods"]}
    done = run_harness("run", "--suite", suite(tmp_path / "suite.toml"), "--out", tmp_path / "out", **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 cell: 0 ok, 1 skipped, 0 failed" in done.stdout
    assert results(tmp_path / "out")["tiny-squares-torch-fp32"]["reason"] == "refused on purpose"
    env = run_harness("env", "--device", "cpu", **kwargs)
    assert "BROKEN plugin broken_on_import: RuntimeError: deliberately broken" in env.stdout, env.stdout + env.stderr


def test_the_guide_documents_recipes_and_what_testing_needs() -> None:
    from harness import recipes

    text = guide()
    assert "`base`" in text and all(f"`{name}`" in text for name in recipes.RECIPES)
    assert "The fixtures need pytest" in text
