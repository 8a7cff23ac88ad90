"""Environments cells run in: declared by plugins and suites, built for real with uv, cached, locked, and the
same answer from ``harness env``, ``harness run`` and ``harness run --no-build``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest
from helpers import harness, write_suite

from harness import paths
from harness.envs import build, installer, layers, placement
from harness.envs.spec import (
    BuildError,
    Environment,
    Spec,
    declared_by,
    for_cell,
    harness_requirements,
    of_cell,
    satisfied,
)
from harness.plugins import get_manager
from harness.redact import redact
from harness.suite import SuiteError, expand, select

OLD_TIMM = "1.0.9"  # an older timm than the main environment's: the small environment built for real
TORCH = {name: metadata.version(name) for name in ("torch", "torchvision")}  # reused: the build stays small and fast
#: One tiny cell per environment: the harness's own, one with an older timm, one whose requirement cannot exist.
SUITE = f"""
name = "envs"
epochs = 1
image_size = 32
subset = 20
recipe = {{ base = "default", batch_size = 8 }}
[matrix]
model = ["resnet10t"]
loader = ["torchvision"]
backend = ["torch"]
precision = ["fp32"]
environment = ["default", "old-timm", "broken"]
[loaders.torchvision]
workers = 0
[environments.old-timm]
requires = ["timm=={OLD_TIMM}", "torch=={TORCH['torch']}", "torchvision=={TORCH['torchvision']}"]
[environments.broken]
requires = ["harness-test-no-such-distribution==0.0.1"]
"""


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}


@pytest.fixture(scope="session")
def envs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's environments are built (uv's own cache stays the user's: builds hard-link from it)."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session")
def suite_with_envs(tmp_path_factory: pytest.TempPathFactory, envs_dir: Path) -> Path:
    """The suite, with ``old-timm`` built for real once per session by ``harness envs build``."""
    suite = write_suite(tmp_path_factory.mktemp("suite") / "envs.toml", SUITE)
    done = harness("envs", "build", "--suite", suite, "old-timm", env={paths.ENVS: str(envs_dir)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "built environment old-timm in" in done.stderr  # the build's messages are log messages (-q hides them)
    return suite


# -- declaring and resolving ----------------------------------------------------------------------------------
def test_a_plugin_environment_is_used_only_where_this_interpreter_lacks_it() -> None:
    manager = get_manager()
    colossalai = manager.backends()["colossalai-ddp"]
    have = Environment("mine", ("pluggy>=1",))
    torch25 = Environment("torch-2.5", ("torch==2.5.1",))
    needed = for_cell(Environment(), [declared_by(colossalai, manager)])
    assert needed.name == ("default" if satisfied(needed) else "colossalai")
    if needed.name == "colossalai":
        assert needed.requires == ("colossalai==0.5.0",) and needed.constraints[0].endswith("colossalai.txt")
        assert Path(needed.constraints[0]).is_file()  # shipped as package data
    assert satisfied(have) and not satisfied(torch25)
    combined = for_cell(torch25, [declared_by(r, manager) for r in (colossalai, manager.backends()["torch"])])
    assert combined.name == "torch-2.5+colossalai"
    assert combined.requires == ("torch==2.5.1", "colossalai==0.5.0")


def test_environment_declarations_are_checked() -> None:
    assert Environment.parse({"name": "x", "requires": "timm"}).requires == ("timm",)
    for bad, message in (({"name": "a b"}, "name"), ({"name": "x", "requires": ["timm>>1"]}, "not a requirement"),
                         ({"name": "x", "pins": []}, "unknown key 'pins'"),
                         ({"name": "default", "requires": ["timm"]}, "harness's own")):
        with pytest.raises(ValueError, match=message):
            Environment.parse(bad)


def test_suite_environments_axis_ids_and_only(tmp_path: Path) -> None:
    suite = expand(write_suite(tmp_path / "s.toml", SUITE), get_manager())
    ids = [c.id for c in suite.cells]
    assert ids == ["resnet10t-torchvision-torch-fp32-default", "resnet10t-torchvision-torch-fp32-old-timm",
                   "resnet10t-torchvision-torch-fp32-broken"]
    old = select(suite.cells, ["environment=old-timm"])
    assert [c.environment["requires"][0] for c in old] == [f"timm=={OLD_TIMM}"]
    for text, message in ((SUITE.replace('"broken"]', '"missing"]'), "unknown environment 'missing'"),
                          (SUITE + '[environments.x]\nconstraints = "none.txt"\n', "missing 'requires'"),
                          (SUITE + '[environments.y]\nrequires = ["timm"]\nconstraints = "none.txt"\n', "not found")):
        with pytest.raises(SuiteError, match=message):
            expand(write_suite(tmp_path / "bad.toml", text), get_manager())


def test_pip_index_settings_become_uv_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple\nextra-index-url = file:///a file:///b\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels")
    monkeypatch.setenv("PIP_CONSTRAINT", str(tmp_path / "c.txt"))
    monkeypatch.delenv("UV_INDEX_STRATEGY", raising=False)
    options = " ".join(installer.uv_options(installer.pip_settings()))
    assert "--index-url https://mirror.example/simple" in options
    assert "--extra-index-url file:///a --extra-index-url file:///b" in options
    assert "--find-links /wheels" in options and f"--constraint {tmp_path / 'c.txt'}" in options
    assert "--index-strategy unsafe-best-match" in options  # pip's: the best version across every index


def test_concurrent_builds_of_one_environment_build_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.ENVS, str(tmp_path))
    spec = Spec.of(Environment("locked", ("timm",)))
    made: list[int] = []

    def steps(spec: Spec, uv: str | None,
              layer: list[str] | None = None) -> tuple[list[list[str]], dict[str, str]]:
        made.append(1)
        python = str(spec.python)  # a build whose interpreter is missing is not finished: link this one
        return [[sys.executable, "-c", f"import os, sys, time; os.makedirs(os.path.dirname({python!r})); "
                                       f"os.symlink(sys.executable, {python!r}); time.sleep(1)"]], {}

    monkeypatch.setattr(build, "steps", steps)
    monkeypatch.setattr(build, "uv_binary", lambda: None)  # a whole build: no layer to link
    logs: list[str] = []
    threads = [threading.Thread(target=build.build, args=(spec, logs.append)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [1] and layers.ready(spec.path)
    assert any(line.startswith("waiting for another process building") for line in logs)


def test_uv_dry_run_lines_read_as_pins() -> None:
    """The lines of ``uv pip install --dry-run`` (uv 0.13) a layer is made of: a version, a cached direct reference,
    an uncached one."""
    lines = {" + timm==1.0.9": ("+", "timm", "1.0.9", None), " - timm==1.0.31": ("-", "timm", "1.0.31", None),
             " + mylib==2.0 (from file:///src/mylib)": ("+", "mylib", "2.0", "file:///src/mylib"),
             " + mylib @ file:///src/mylib": ("+", "mylib", None, "file:///src/mylib")}
    for line, (sign, name, version, url) in lines.items():
        m = layers.PLANNED.match(line)
        assert m and (m["sign"], m["name"], m["version"], m["url"] or m["from_url"]) == (sign, name, version, url)
    assert not layers.PLANNED.match("Would install 1 package")


@pytest.mark.slow
def test_a_layer_that_would_break_the_default_environment_is_found(tmp_path: Path) -> None:
    """A layer's pins are checked against every distribution it would be seen with: pytest (not among the harness's
    requirements, so not in uv's resolution) needs a newer pluggy than one an environment could pin."""
    uv = installer.uv_binary()
    assert uv, "uv is a dependency of the harness"
    layer = tmp_path / "site-packages"
    settings = installer.pip_settings()
    subprocess.run([uv, "pip", "install", "--target", str(layer), "--no-deps", "pluggy==1.3.0",
                    *installer.uv_options(settings)], check=True, env=installer.uv_variables(settings))
    base = layers.default_site_dirs()
    broken = layers.conflicts([str(layer), *base]) - layers.conflicts(base)
    assert any(b.startswith("pytest ") and "requires pluggy" in b and b.endswith("not 1.3.0") for b in broken), broken


#: A loader variant declaring its own environment, beside a backend whose plugin declares one.
VARIANTS = """
name = "variants"
epochs = 1
image_size = 32
recipe = "default"
[matrix]
model = ["resnet10t"]
loader = ["torchvision", "fastjpeg"]
backend = ["torch", "colossalai-ddp"]
precision = ["fp32"]
[loaders.fastjpeg]
use = "torchvision"
environment = { requires = ["harness-test-no-such-distribution==0.0.1"] }
"""


def test_a_suite_variant_declares_an_environment_and_each_is_attributed_to_its_declarer(tmp_path: Path) -> None:
    manager = get_manager()
    suite = expand(write_suite(tmp_path / "v.toml", VARIANTS), manager)
    colossalai = "" if satisfied(Environment("c", ("colossalai==0.5.0",))) else "colossalai"
    names = {c.id: of_cell(c).name for c in suite.cells}
    assert names == {"resnet10t-torchvision-torch-fp32": "default", "resnet10t-fastjpeg-torch-fp32": "fastjpeg",
                     "resnet10t-torchvision-colossalai-ddp-fp32": colossalai or "default",
                     "resnet10t-fastjpeg-colossalai-ddp-fp32": "+".join(filter(None, ("fastjpeg", colossalai)))}
    assert all(c.loader_params == {} for c in suite.cells)  # the declaration is not a loader parameter
    rows = {r["name"]: r["declared_by"] for r in placement.overview(suite.cells, manager, suite.environments)}
    assert rows["fastjpeg"] == ["loader variant [loaders.fastjpeg]"]
    if colossalai:
        assert rows["colossalai"] == ["backend colossalai-ddp"]  # the backend's, not a loader's
        assert rows["fastjpeg+colossalai"] == ["loader variant [loaders.fastjpeg]", "backend colossalai-ddp"]
    bad = VARIANTS.replace('requires = ["harness-test', 'requires = ["x>>1", "harness-test')
    with pytest.raises(SuiteError, match=r"loaders\.fastjpeg\.environment.*not a requirement"):
        expand(write_suite(tmp_path / "bad.toml", bad), manager)


def test_the_harness_goes_in_with_dali_only_where_the_cells_load_with_dali(tmp_path: Path) -> None:
    manager = get_manager()
    text = SUITE.replace('loader = ["torchvision"]', 'loader = ["torchvision", "dali"]')
    cells = [c for c in expand(write_suite(tmp_path / "s.toml", text), manager).cells if c.id.endswith("-old-timm")]
    specs = {c.loader: Spec.for_cells(of_cell(c), [c], manager) for c in cells}
    assert specs["dali"].extras == ("dali",) and specs["dali"].installs[-1].endswith("[dali]")
    assert specs["torchvision"].extras == () and not any("dali" in a for a in specs["torchvision"].installs)
    assert specs["dali"].key != specs["torchvision"].key
    assert not any("dali" in r for r in harness_requirements())
    assert any(r.startswith("nvidia-dali") for r in harness_requirements(["dali"]))


def test_a_layer_holds_every_default_version_but_those_it_names() -> None:
    """The dry run of a layer is constrained to the default environment's versions: only what it names moves."""
    pins = layers.held(Spec.of(Environment("old-timm", (f"timm=={OLD_TIMM}",))))
    assert f"torch=={TORCH['torch']}" in pins and not any(p.startswith("timm==") for p in pins)
    dali = [p for p in pins if p.startswith("nvidia-dali")]  # the installed DALI stays, never re-resolved
    assert dali == [f"{name}=={metadata.version(name)}" for name in ("nvidia-dali-cuda120",)
                    if name in {p.split("==")[0] for p in pins}]


def test_an_environment_whose_interpreter_is_gone_is_not_taken_as_built(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.ENVS, str(tmp_path))
    manager = get_manager()
    (cell,) = select(expand(write_suite(tmp_path / "s.toml", SUITE), manager).cells, ["environment=old-timm"])
    spec = Spec.for_cells(of_cell(cell), [cell], manager)
    spec.path.mkdir()
    (spec.path / "harness-env.json").write_text(json.dumps({"name": "old-timm", "layer_over": None}))
    assert layers.problem(spec.path) == f"broken (its interpreter {spec.python} is missing)"
    blocker = placement.Placer([cell], manager, build=False, hint="harness envs build").place(cell).blocker
    assert blocker == (f"environment old-timm is broken (its interpreter {spec.python} is missing); build it with: "
                       "harness envs build old-timm")



def test_a_hung_interpreter_skips_its_environments_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment whose interpreter never answers ``harness.cell --check``: past the time limit it is killed
    and its cells get a one-line reason naming it (the run goes on), instead of hanging ``harness run``."""
    monkeypatch.setenv(paths.ENVS, str(tmp_path))
    monkeypatch.setattr(build, "CHECK_TIMEOUT_S", 0.5)
    manager = get_manager()
    (cell,) = select(expand(write_suite(tmp_path / "s.toml", SUITE), manager).cells, ["environment=old-timm"])
    spec = Spec.for_cells(of_cell(cell), [cell], manager)
    (spec.path / "bin").mkdir(parents=True)
    (spec.path / "harness-env.json").write_text(json.dumps({"name": "old-timm", "layer_over": None}))
    pid = tmp_path / "pid"
    spec.python.write_text(f"#!/bin/sh\necho $$ > {pid}\nexec sleep 60\n")  # a real process that never answers
    spec.python.chmod(0o755)
    assert layers.ready(spec.path)
    blocker = placement.Placer([cell], manager, build=False).place(cell).blocker
    assert blocker == (f"environment old-timm: its interpreter {spec.python} did not say within 0.5 s whether its "
                       "cells can run (harness.cell --check hung)")
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(int(pid.read_text()), 0)

# -- secrets ------------------------------------------------------------------------------------------------
def test_redact_hides_url_credentials_and_secret_variables() -> None:
    text = "uv pip install --extra-index-url https://me:pa55word@pkgs.example/simple x; token=abcd1234efgh"
    said = redact(text, {"MY_INDEX_TOKEN": "abcd1234efgh", "HOME": "/home/me"})
    assert said == "uv pip install --extra-index-url https://****@pkgs.example/simple x; token=****"
    assert redact("see https://pkgs.example/simple and /home/me", {"HOME": "/home/me"}) == (
        "see https://pkgs.example/simple and /home/me")


def test_a_credentialed_index_never_appears_in_a_builds_output_or_files(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A real uv build (offline, so it fails fast) with an index URL carrying a password and a token variable."""
    secret, token = "s3cr3t-pa55", "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"https://user:{secret}@127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_INDEX_URL", f"https://__token__:{token}@127.0.0.1:9/simple")
    monkeypatch.setenv("MY_INDEX_TOKEN", token)
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv(paths.ENVS, str(tmp_path / "envs"))
    spec = Spec.of(Environment("broken", ("harness-test-no-such-distribution==0.0.1",)))
    logs: list[str] = []
    with pytest.raises(BuildError) as failed:
        build.build(spec, logs.append)
    said = "\n".join([*logs, str(failed.value), *capfd.readouterr()])
    assert "https://user:****@127.0.0.1:9/simple" not in said and "https://****@127.0.0.1:9/simple" in said
    assert secret not in said and token not in said, said
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(secret.encode() in b or token.encode() in b for b in stored)


# -- for real ------------------------------------------------------------------------------------------------
def test_no_build_skips_cells_of_missing_environments_as_harness_env_says(photos: Path, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "envs.toml", SUITE)
    variables = {paths.ENVS: str(tmp_path / "no-envs")}
    done = harness("run", "--suite", suite, "--data", photos, "--out", tmp_path / "out", "--no-build",
                   "--only", "environment=old-timm", env=variables)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = results(tmp_path / "out").values()
    assert result["status"] == "skipped"
    assert result["reason"] == (f"environment old-timm is not built; build it with: harness envs build --suite {suite} "
                                "--only=environment=old-timm old-timm")
    assert result["env"]["environment"] == "old-timm" and result["env"]["timm"] is None
    planned = json.loads(harness("env", "--suite", suite, "--json", env=variables).stdout)["suite"]
    assert planned["statuses"]["resnet10t-torchvision-torch-fp32-old-timm"] == "skipped"
    assert planned["reasons"][result["reason"].replace(" --only=environment=old-timm", "")] == 1
    assert [(e["name"], e["built"]) for e in planned["environments"]] == [
        ("default", True), ("old-timm", False), ("broken", False)]
    assert not (tmp_path / "no-envs").exists()


@pytest.mark.slow
def test_a_small_environment_is_built_once_then_listed_and_reused(envs_dir: Path, suite_with_envs: Path) -> None:
    variables = {paths.ENVS: str(envs_dir)}
    again = harness("envs", "build", "--suite", suite_with_envs, "old-timm", env=variables)
    assert again.returncode == 0 and "environment old-timm is built: " in again.stdout, again.stderr[-3000:]
    listed = harness("envs", "list", env=variables).stdout
    (folder,) = envs_dir.glob("old-timm-*/")
    assert f"{folder.name} " in listed and f"timm=={OLD_TIMM}" in listed and " with uv, a layer over " in listed


@pytest.mark.slow
def test_an_environment_keeping_the_default_torch_is_a_small_layer_over_it(tmp_path: Path, envs_dir: Path,
                                                                            suite_with_envs: Path) -> None:
    (folder,) = envs_dir.glob("old-timm-*/")
    marker = json.loads((folder / "harness-env.json").read_text())
    assert marker["layer"] == [f"timm=={OLD_TIMM}"] and marker["layer_over"]["prefix"] == sys.prefix
    assert not any("[dali]" in a for a in marker["installs"])  # its cells load with torchvision: no DALI extra
    assert placement.disk_usage(folder) < 100 * 2**20  # the default's torch stack is seen, not copied
    seen = subprocess.run([str(folder / "bin" / "python"), "-c", "import timm, torch; print(timm.__version__, "
                           "torch.__version__, torch.__file__)"], capture_output=True, text=True, check=True).stdout
    assert seen.split()[0] == OLD_TIMM and seen.split()[2].startswith(sys.prefix)  # its own timm, the default torch
    stale = tmp_path / "stale"  # the same layer, as if the default environment had changed since
    (stale / "bin").mkdir(parents=True)
    (stale / "bin" / "python").symlink_to(folder / "bin" / "python")
    (stale / "harness-env.json").write_text(json.dumps({**marker, "layer_over": {**marker["layer_over"],
                                                                                 "packages": "changed"}}))
    assert layers.ready(folder) and not layers.ready(stale)
    assert layers.problem(stale) == "a stale layer (the default environment changed)"


@pytest.mark.slow
def test_a_two_environment_matrix_records_both_and_skips_a_failed_build(photos: Path, tmp_path: Path,
                                                                        envs_dir: Path, suite_with_envs: Path) -> None:
    variables = {paths.ENVS: str(envs_dir)}
    done = harness("run", "--suite", suite_with_envs, "--data", photos, "--out", tmp_path / "out", env=variables)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {cell_id.rsplit("-fp32-", 1)[1]: r for cell_id, r in results(tmp_path / "out").items()}
    assert {k: r["status"] for k, r in found.items()} == {"default": "ok", "old-timm": "ok", "broken": "skipped"}
    assert found["default"]["env"]["environment"] == "default" and found["default"]["env"]["environment_hash"] is None
    old = found["old-timm"]["env"]
    assert (old["environment"], old["timm"], old["torch"]) == ("old-timm", OLD_TIMM, TORCH["torch"])
    assert [p.name for p in envs_dir.glob("old-timm-*/")] == [f"old-timm-{old['environment_hash']}"]
    assert found["default"]["env"]["timm"] != OLD_TIMM
    reason = found["broken"]["reason"]
    assert reason.startswith("environment broken could not be built (uv): ") and "harness-test-no-such" in reason
    assert "building environment broken" in done.stdout + done.stderr
    assert not list(envs_dir.glob("broken-*/"))  # a failed build leaves no folder behind
    planned = json.loads(harness("env", "--suite", suite_with_envs, "--json", env=variables).stdout)["suite"]
    assert planned["statuses"] == {f"resnet10t-torchvision-torch-fp32-{k}": ("ok" if k != "broken" else "skipped")
                                   for k in found}


@pytest.mark.slow
def test_an_environment_whose_interpreter_was_deleted_is_rebuilt(envs_dir: Path, suite_with_envs: Path) -> None:
    variables = {paths.ENVS: str(envs_dir)}
    (folder,) = envs_dir.glob("old-timm-*/")
    (folder / "bin" / "python").unlink()  # the marker stays
    assert "broken (its interpreter" in harness("envs", "list", env=variables).stdout
    done = harness("envs", "build", "--suite", suite_with_envs, "old-timm", env=variables)
    assert done.returncode == 0 and "built environment old-timm in" in done.stderr, done.stderr[-3000:]
    assert "[Errno 2]" not in done.stdout + done.stderr and layers.ready(folder)
