"""Third-party plugin authoring: the guide, the example package installed for real, isolation, versioning.

The example package (plugins/examples/harness-synthetic) is installed with pip into a folder
of this session (``pip install --target``) that subprocesses see through PYTHONPATH, so the
shared test environment is left as it was; docs/plugins.md gives the ordinary install.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import api, hookspecs
from harness.hookspecs import hookimpl
from harness.plugins import ALLOW_LIST_ENV, MODULES_ENV, PluginError, build_manager, hook_names
from harness.testing import results, run_harness

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "plugins" / "examples" / "harness-synthetic"
HOOK_HEADING = re.compile(r"^#{3,4} `(?P<name>(?:register|harness)_\w+)\((?P<args>.*)\)(?: -> (?P<returns>.+))?`\s*$",
                          re.MULTILINE)
CELL = "tinycnn-synthetic-torch-fp32"


# -- the guide -------------------------------------------------------------------------------------
def split_arguments(text: str) -> list[str]:
    """Split ``a: X, b: Callable[..., None]`` at top-level commas."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def documented_hooks() -> dict[str, tuple[list[tuple[str, str]], str | None]]:
    """Hook name -> ([(argument, annotation)], return annotation) from the guide's hook headings."""
    found = {}
    for match in HOOK_HEADING.finditer(GUIDE.read_text()):
        arguments = [tuple(part.strip() for part in a.split(":", 1)) for a in split_arguments(match["args"])]
        found[match["name"]] = (arguments, match["returns"])
    return found


def test_every_hook_is_documented_with_its_arguments() -> None:
    documented = documented_hooks()
    assert sorted(documented) == hook_names(), "docs/plugins.md must document exactly the hooks in hookspecs.py"
    for name in hook_names():
        signature = inspect.signature(getattr(hookspecs, name))
        expected = [(p.name, p.annotation) for p in signature.parameters.values()]
        arguments, returns = documented[name]
        assert arguments == expected, f"docs/plugins.md documents {name} with {arguments}, hookspecs.py has {expected}"
        assert returns == signature.return_annotation, f"{name}: return documented as {returns}"


@pytest.mark.parametrize("protocol", [api.LoaderPlugin, api.ModelPlugin, api.BackendPlugin, api.Backend])
def test_every_protocol_method_is_documented(protocol: type) -> None:
    guide = GUIDE.read_text()
    section = guide.split(f"### `{protocol.__name__}`", 1)
    assert len(section) == 2, f"docs/plugins.md has no '### `{protocol.__name__}`' section"
    body = section[1].split("\n### ", 1)[0]
    for name, method in vars(protocol).items():
        if name.startswith("_") or not inspect.isfunction(method):
            continue
        kinds = {inspect.Parameter.VAR_KEYWORD: "**", inspect.Parameter.VAR_POSITIONAL: "*"}
        args = [kinds.get(p.kind, "") + p.name for p in inspect.signature(method).parameters.values()][1:]
        assert f"`{name}({', '.join(args)})" in body, f"{protocol.__name__}.{name}({', '.join(args)}) not in the guide"


# -- the example package, installed for real ------------------------------------------------------------
@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example package into a fresh folder; yield the folder to put on PYTHONPATH."""
    work = tmp_path_factory.mktemp("example")
    source = shutil.copytree(EXAMPLE, work / "source", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "harness_synthetic" / "suites" / "synthetic-smoke.toml").exists()
    yield target


@pytest.fixture
def photos_dir(tmp_path: Path) -> Path:
    """``harness run`` wants a --data folder even for a loader that reads none."""
    from harness.testing import make_photos

    return make_photos(tmp_path / "photos", classes=2, per_class=5, size=16)


def small_suite(path: Path, models: str = '["tinycnn"]', precisions: str = '["fp32"]') -> Path:
    path.write_text(f"""
name = "plugin-isolation"
epochs = 1
image_size = 16
recipe = {{ base = "default", batch_size = 16 }}
device = "cpu"

[matrix]
model = {models}
loader = ["synthetic"]
backend = ["torch"]
precision = {precisions}

[loaders.synthetic]
train_size = 64
classes = 2
""")
    return path


def test_harness_plugins_lists_the_installed_example(installed: Path) -> None:
    done = run_harness("plugins", pythonpath=[installed])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    line = next(i for i, text in enumerate(lines) if text.startswith("synthetic "))
    assert "harness-synthetic 0.1.0" in lines[line] and "BROKEN" not in lines[line]
    assert "provides: loader synthetic, model family tinycnn, suite synthetic-smoke" in lines[line + 2]
    assert lines[line + 3].split() == ["environment:", "harness_synthetic=0.1.0"]


@pytest.mark.slow
def test_example_suite_cell_runs_and_learns(installed: Path, tmp_path: Path) -> None:
    done = run_harness("run", "--suite", "synthetic-smoke", "--out", tmp_path / "out",  # reads_data = False: no --data
                       "--only", f"id={CELL}", "--device", "cpu", pythonpath=[installed])
    assert done.returncode == 0, done.stdout + done.stderr
    result = results(tmp_path / "out")[CELL]
    assert result["status"] == "ok", result["reason"]
    assert result["env"]["harness_synthetic"] == "0.1.0"
    assert result["summary"]["epochs"] == 2 and result["summary"]["best_val_acc"] > 0.5  # 4 classes: chance 0.25
    provenance = (tmp_path / "out" / "cells" / CELL / "synthetic.json").read_text()
    assert '"train_size": 512' in provenance
    epochs = (tmp_path / "out" / "cells" / CELL / "epochs.jsonl").read_text().splitlines()
    assert [sorted(json.loads(line)["extra"]) for line in epochs] == [["synthetic.cpu_util"]] * 2  # its observer
    assert result["summary"]["extra"]["synthetic.cpu_s"] > 0


@pytest.mark.slow
def test_example_package_tests_pass_with_the_harness_fixtures(installed: Path) -> None:
    """The example's own tests use the ``harness.testing`` helpers, as an external package would."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(installed), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           str(EXAMPLE / "tests")], capture_output=True, text=True, cwd=EXAMPLE, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d+ passed", done.stdout)


# -- isolation --------------------------------------------------------------------------------------
def plugin_module(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text("from harness.hookspecs import hookimpl\n" + body)
    return folder


@pytest.mark.slow
def test_plugin_raising_on_import_is_listed_broken_and_the_harness_runs(
        installed: Path, photos_dir: Path, tmp_path: Path) -> None:
    mods = plugin_module(tmp_path / "mods", "broken_on_import", "raise RuntimeError('deliberately broken')\n")
    kwargs = {"plugin_modules": ["broken_on_import"], "pythonpath": [mods, installed]}
    listed = run_harness("plugins", **kwargs)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"broken_on_import .*BROKEN: RuntimeError: deliberately broken", listed.stdout), listed.stdout
    suites = run_harness("suites", **kwargs)
    assert suites.returncode == 0 and "synthetic-smoke" in suites.stdout, suites.stderr
    done = run_harness("run", "--suite", small_suite(tmp_path / "suite.toml"), "--data", photos_dir,
                       "--out", tmp_path / "out", **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert results(tmp_path / "out")[CELL]["status"] == "ok"


@pytest.mark.slow
def test_plugin_raising_in_a_lifecycle_hook_fails_that_cell_and_the_suite_goes_on(
        installed: Path, photos_dir: Path, tmp_path: Path) -> None:
    # Takes fewer arguments than the spec (no ``context``): pluggy passes only the ones named.
    mods = plugin_module(tmp_path / "mods", "explodes", """
@hookimpl
def harness_epoch_end(cell, record):
    if cell.precision == "fp32":
        raise RuntimeError(f"exploded after epoch {record.epoch}")
""")
    done = run_harness("run", "--suite", small_suite(tmp_path / "suite.toml", precisions='["fp32", "bf16"]'),
                       "--data", photos_dir, "--out", tmp_path / "out", "--allow-emulated",  # bf16 runs on any CPU
                       plugin_modules=["explodes"], pythonpath=[mods, installed])
    assert done.returncode == 1, done.stdout + done.stderr
    cells = results(tmp_path / "out")
    failed, passed = cells["tinycnn-synthetic-torch-fp32"], cells["tinycnn-synthetic-torch-bf16"]
    assert failed["status"] == "failed"
    assert "plugin 'explodes'" in failed["reason"] and "harness_epoch_end" in failed["reason"]
    assert "exploded after epoch 1" in failed["reason"]
    assert passed["status"] == "ok", passed["reason"]
    assert "1 ok, 0 skipped, 1 failed" in done.stdout


PluginModules = Callable[[dict[str, str]], None]


@pytest.fixture
def plugin_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginModules]:
    """``plugin_modules({name: body})``: importable plugin modules, loaded through HARNESS_PLUGIN_MODULES."""

    def make(modules: dict[str, str]) -> None:
        """Write ``{module name: source}`` (``hookimpl`` is imported for them) and load them all."""
        for name, body in modules.items():
            plugin_module(tmp_path / "mods", name, body)
            sys.modules.pop(name, None)
        monkeypatch.syspath_prepend(str(tmp_path / "mods"))
        monkeypatch.setenv(MODULES_ENV, ",".join(modules))

    yield make
    for name in list(sys.modules):
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


LOADER = """
class Loader:
    def can_run(self, device, params):
        return None

    def build(self, spec):
        raise NotImplementedError
"""


def test_two_plugins_registering_one_name_break_the_second_naming_both(plugin_modules: PluginModules) -> None:
    body = LOADER + "\n@hookimpl\ndef register_loaders(register):\n    register('twice', Loader())\n"
    plugin_modules({"first_dist": body, "second_dist": body})
    manager = build_manager()
    errors = {p.name: p.error for p in manager.plugins if p.error}
    assert errors == {"second_dist": "loader 'twice' is registered twice: by plugin 'first_dist' (distribution "
                                     "(module first_dist)) and by plugin 'second_dist' (distribution (module "
                                     "second_dist)); 'first_dist' keeps it (loaded first)"}
    assert manager.loaders()["twice"].plugin == "first_dist"


def test_a_name_taken_by_an_installed_distribution_names_it(installed: Path, tmp_path: Path) -> None:
    mods = plugin_module(tmp_path / "mods", "copycat", LOADER + """
@hookimpl
def register_loaders(register):
    register("synthetic", Loader())
""")
    done = run_harness("plugins", plugin_modules=["copycat"], pythonpath=[mods, installed])
    assert done.returncode == 0, done.stderr
    assert ("copycat        (module copycat)  BROKEN: loader 'synthetic' is registered twice: by plugin 'synthetic' "
            "(distribution harness-synthetic 0.1.0) and by plugin 'copycat' (distribution (module copycat)); "
            "'synthetic' keeps it (installed first)") in done.stdout


def test_in_process_duplicate_names_the_builtin_distribution(harness_plugin: Callable[..., object]) -> None:
    plugin = SimpleNamespace(register_loaders=hookimpl(lambda register: register("torchvision", object())))
    with pytest.raises(PluginError, match=r"plugin 'mine'.*does not implement harness.api.LoaderPlugin"):
        harness_plugin(plugin, name="mine")
    loader = SimpleNamespace(can_run=lambda device, params: None, build=lambda spec: None)
    plugin = SimpleNamespace(register_loaders=hookimpl(lambda register: register("torchvision", loader)))
    with pytest.raises(PluginError, match="loader 'torchvision' is registered twice") as error:
        harness_plugin(plugin, name="mine")
    assert "plugin 'torchvision' (distribution harness " in str(error.value)
    assert "plugin 'mine' (distribution (registered in-process))" in str(error.value)


def test_broken_registration_hooks_and_misspelt_hooks_are_listed_broken(plugin_modules: PluginModules) -> None:
    plugin_modules({
        "raises_in_register": LOADER + """
@hookimpl
def register_loaders(register):
    register("half-registered", Loader())
    raise ValueError("no config file")

@hookimpl
def harness_run_end(summary):
    pass
""",
        "not_a_loader": "@hookimpl\ndef register_loaders(register):\n    register('nothing', 42)\n",
        "misspelt": "@hookimpl\ndef harness_epoch_ends(record):\n    pass\n",
        "wrong_argument": "@hookimpl\ndef harness_epoch_end(cell, epoch):\n    pass\n",
    })
    manager = build_manager()
    errors = {p.name: p.error for p in manager.plugins if p.error}
    assert errors["raises_in_register"] == "register_loaders raised ValueError: no config file"
    assert "'nothing' (int) does not implement harness.api.LoaderPlugin" in errors["not_a_loader"]
    assert "unknown hook 'harness_epoch_ends'; did you mean 'harness_epoch_end'?" in errors["misspelt"]
    assert "unknown argument 'epoch'" in errors["wrong_argument"]
    assert "half-registered" not in manager.loaders() and "nothing" not in manager.loaders()
    assert not manager.pm.has_plugin("raises_in_register")  # its lifecycle hooks are gone too
    assert "torchvision" in manager.loaders()  # the rest still works


def test_entry_point_name_taken_by_another_distribution_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODULES_ENV, "torch")  # "torch" is the built-in backend's entry-point name
    manager = build_manager()
    clash = [p for p in manager.plugins if p.name == "torch" and p.error]
    assert len(clash) == 1 and "taken by distribution harness" in clash[0].error
    assert "torch" in manager.backends()


def test_environment_hook_raising_is_skipped_with_a_warning(harness_plugin: Callable[..., object]) -> None:
    def boom() -> dict:
        raise OSError("no nvidia-smi")

    harness_plugin(SimpleNamespace(harness_environment=hookimpl(boom)), name="probe")
    manager = harness_plugin(SimpleNamespace(harness_environment=hookimpl(lambda: {"calm": 1})), name="calm")
    with pytest.warns(UserWarning, match=r"plugin 'probe' .* raised in harness_environment: OSError"):
        fields = manager.environment()
    assert {"calm": 1} in fields


# -- versioning ---------------------------------------------------------------------------------------
def test_incompatible_api_range_is_refused_with_a_clear_message(plugin_modules: PluginModules) -> None:
    plugin_modules({
        "from_the_future": 'HARNESS_API = ">=2"\n' + LOADER
        + "\n@hookimpl\ndef register_loaders(register):\n    register('future', Loader())\n",
        "compatible": 'HARNESS_API = ">=1,<2"\n' + LOADER
        + "\n@hookimpl\ndef register_loaders(register):\n    register('present', Loader())\n",
        "garbled": 'HARNESS_API = "version one"\n',
    })
    manager = build_manager()
    errors = {p.name: p.error for p in manager.plugins}
    assert errors["from_the_future"] == (
        f"PluginError: refused: supports hook API >=2, this harness provides {api.API_VERSION}")
    assert errors["compatible"] is None and "present" in manager.loaders() and "future" not in manager.loaders()
    assert "is not a version range" in errors["garbled"]


def test_in_process_plugin_with_incompatible_api_is_refused(harness_plugin: Callable[..., object]) -> None:
    with pytest.raises(PluginError, match="refused: supports hook API >=2"):
        harness_plugin(SimpleNamespace(HARNESS_API=">=2"), name="future")


def test_hooks_taking_fewer_arguments_than_the_spec_still_work(
        harness_plugin: Callable[..., object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_LIST_ENV, "suites")  # no built-in lifecycle hooks: the stand-in arguments are for ours
    seen = []
    plugin = SimpleNamespace(harness_epoch_end=hookimpl(lambda record: seen.append(("epoch", record))),
                             harness_run_end=hookimpl(lambda: seen.append(("end",))))
    manager = harness_plugin(plugin, name="minimal")
    manager.call("harness_epoch_end", cell="cell", record=3, context="context")
    manager.call("harness_run_end", cell="cell", summary={}, context="context")
    assert seen == [("epoch", 3), ("end",)]


def test_example_declares_a_supported_api_range() -> None:
    from packaging.specifiers import SpecifierSet

    source = (EXAMPLE / "src" / "harness_synthetic" / "hooks.py").read_text()
    declared = ast.literal_eval(re.search(r"^HARNESS_API = (.*)$", source, re.MULTILINE)[1])
    assert str(api.API_VERSION) in SpecifierSet(declared)
