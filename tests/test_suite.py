"""Suite validation (one-line errors naming file, key and allowed values) and matrix expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plugins import get_manager, suite_path
from harness.suite import SuiteError, cell_id, expand, select
from harness.testing import run_harness

VALID = """
name = "s"
epochs = 1
image_size = 32
recipe = { base = "seed", batch_size = 8 }
[matrix]
model = ["resnet10t", "vit_tiny_patch16_224"]
loader = ["torchvision"]
backend = ["torch", "torch-ddp2"]
precision = ["fp32", "bf16"]
[backends.torch-ddp2]
use = "torch"
nproc = 2
[models.vit_tiny_patch16_224]
drop_rate = 0.1
"""


def suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_matrix_expands_into_stable_readable_cells(tmp_path: Path) -> None:
    suite = expand(suite_file(tmp_path, VALID), get_manager(), data="/data")
    ids = [c.id for c in suite.cells]
    assert len(ids) == 8 == len(set(ids))
    assert ids[0] == "resnet10t-torchvision-torch-fp32"
    ddp = next(c for c in suite.cells if c.id == "vit_tiny_patch16_224-torchvision-torch-ddp2-bf16")
    assert (ddp.backend_plugin, ddp.nproc, ddp.backend_params) == ("torch", 2, {})
    assert ddp.model_params == {"drop_rate": 0.1}
    assert ddp.recipe.batch_size == 8 and ddp.recipe.accumulation == 16 and ddp.recipe.mixup_alpha == 0.2
    again = expand(suite_file(tmp_path, VALID), get_manager(), data="/data")
    assert [c.describe() for c in again.cells] == [c.describe() for c in suite.cells]


def test_overrides_and_only_filter(tmp_path: Path) -> None:
    suite = expand(suite_file(tmp_path, VALID), get_manager(), data="/d", epochs=3, device="cpu")
    assert {(c.epochs, c.device, c.data) for c in suite.cells} == {(3, "cpu", "/d")}
    chosen = select(suite.cells, ["model=resnet10t", "precision=bf16"])
    assert [c.id for c in chosen] == ["resnet10t-torchvision-torch-bf16", "resnet10t-torchvision-torch-ddp2-bf16"]
    either = select(suite.cells, ["model=resnet10t", "model=vit_tiny_patch16_224", "precision=bf16", "backend=torch"])
    assert [c.id for c in either] == ["resnet10t-torchvision-torch-bf16",  # one value of a repeated key, every key
                                      "vit_tiny_patch16_224-torchvision-torch-bf16"]
    with pytest.raises(SuiteError, match="expected KEY=VALUE with KEY one of id, model"):
        select(suite.cells, ["colour=red"])
    forced = expand(suite_file(tmp_path, VALID), get_manager(), nproc=3).cells
    assert {(c.nproc, tuple(c.backend_params)) for c in forced} == {(3, ())}  # the table's nproc is not a param


def test_cell_ids_are_filesystem_safe() -> None:
    assert cell_id("hf-hub:org/model", "a", "b", "fp32") == "hf-hub_org_model-a-b-fp32"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('loader = ["torchvision"]', 'loader = ["nope"]'),
         "key 'matrix.loader': unknown loader 'nope'; allowed: dali, torchvision"),
        (('backend = ["torch", "torch-ddp2"]', 'backend = ["warp"]'), "key 'matrix.backend': unknown backend 'warp'"),
        (('precision = ["fp32", "bf16"]', 'precision = ["fp8"]'), "key 'matrix.precision': unknown precision 'fp8'"),
        (('model = ["resnet10t", "vit_tiny_patch16_224"]', 'model = ["no_such_net"]'),
         "key 'matrix.model': unknown model 'no_such_net'"),
        (("epochs = 1", 'epochs = "ten"'), "key 'epochs': expected int, got 'ten'"),
        (("epochs = 1", ""), "key 'epochs': missing"),
        (("image_size = 32", "image_size = 32\ncolour = 1"), "key 'colour': unknown key; allowed: name, description"),
        (("batch_size = 8", "batch_size = 8, optimizer = 'lion'"),
         "key 'recipe.optimizer': got 'lion'; allowed: sgd, adamw"),
        (("batch_size = 8", "batch_size = 8.5"), "key 'recipe.batch_size': expected int, got float 8.5"),
        (('use = "torch"', 'use = "jax"'), "key 'backends.torch-ddp2.use': unknown backend 'jax'"),
        (("nproc = 2", "nproc = 2\nbucket_mb = 25"),
         "key 'backends.torch-ddp2': torch backend takes no parameters besides nproc and nnodes, got bucket_mb"),
        (("drop_rate = 0.1", "drop_rat = 0.1"),
         "key 'models.vit_tiny_patch16_224': VisionTransformer.__init__() got an unexpected keyword argument "
         "'drop_rat'"),
        (("[models.vit_tiny_patch16_224]\ndrop_rate = 0.1", "[models]\nvit_tiny_patch16_224 = 3"),
         "key 'models.vit_tiny_patch16_224': expected a table of model arguments, got 3"),
        (("[models.vit_tiny_patch16_224]", "[loaders.torchvision]\nworkrs = 2\n[models.vit_tiny_patch16_224]"),
         "key 'loaders.torchvision': unknown torchvision loader parameter 'workrs'; allowed: cache, workers"),
    ],
)
def test_bad_suites_name_file_key_and_allowed_values(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = suite_file(tmp_path, VALID.replace(*change))
    with pytest.raises(SuiteError) as info:
        expand(path, get_manager())
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_cli_rejects_a_bad_suite_with_exit_2_and_runs_nothing(tmp_path: Path, tiny_photos: Path) -> None:
    path = suite_file(tmp_path, VALID.replace('loader = ["torchvision"]', 'loader = ["nope"]'))
    result = run_harness("run", "--suite", path, "--data", tiny_photos, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown loader 'nope'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_missing_or_empty_data_before_any_cell(tmp_path: Path) -> None:
    path = suite_file(tmp_path, VALID)
    missing = run_harness("run", "--suite", path, "--data", tmp_path / "absent", "--out", tmp_path / "out")
    assert missing.returncode == 2 and "absent: data directory does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_harness("run", "--suite", path, "--data", tmp_path / "empty", "--out", tmp_path / "out")
    assert empty.returncode == 2 and "needs at least 2 class folders" in empty.stderr
    absent = run_harness("run", "--suite", path, "--out", tmp_path / "out")
    assert absent.returncode == 2
    assert "--data is required: the cells' loaders read photos (torchvision)" in absent.stderr
    assert not (tmp_path / "out").exists()


def test_builtin_suites_are_valid_and_listed() -> None:
    manager = get_manager()
    flowers = expand(suite_path("flowers"), manager)
    assert flowers.cells[0].recipe.accumulation == 16 and flowers.cells[0].epochs == 200
    result = run_harness("suites")
    assert result.returncode == 0
    assert f"flowers {len(flowers.cells):>4} cells".replace(" ", "") in result.stdout.replace(" ", "")
    assert "flowers-smoke" in result.stdout


RECIPES = """
name = "r"
epochs = 1
image_size = 32
target_acc = 0.6
[matrix]
model = ["resnet10t"]
loader = ["torchvision", "tv1"]
backend = ["torch", "torch-ddp2"]
precision = ["fp32"]
recipe = ["seed", "fast"]
exclude = [{ recipe = "seed", loader = "tv1" }, { loader = "tv1", backend = ["torch-ddp2"] }]
[recipes.fast]
base = "tuned"
lr = 2e-3
[loaders.tv1]
use = "torchvision"
workers = 1
[backends.torch-ddp2]
use = "torch"
nproc = 2
"""


def test_recipe_axis_names_recipes_and_exclude_leaves_out_matching_cells(tmp_path: Path) -> None:
    suite = expand(suite_file(tmp_path, RECIPES), get_manager())
    assert [c.id for c in suite.cells] == [
        "resnet10t-torchvision-torch-fp32-seed", "resnet10t-torchvision-torch-fp32-fast",
        "resnet10t-torchvision-torch-ddp2-fp32-seed", "resnet10t-torchvision-torch-ddp2-fp32-fast",
        "resnet10t-tv1-torch-fp32-fast",
    ]
    by_id = {c.id: c for c in suite.cells}
    seed, fast = by_id["resnet10t-torchvision-torch-fp32-seed"], by_id["resnet10t-tv1-torch-fp32-fast"]
    assert (seed.recipe_name, seed.recipe.accumulation, seed.recipe.optimizer) == ("seed", 16, "sgd")
    assert (fast.recipe_name, fast.recipe.lr, fast.recipe.optimizer, fast.recipe.warmup_epochs) == (
        "fast", 2e-3, "adamw", 0.5)  # the built-in tuned recipe with one override
    assert [c.id for c in select(suite.cells, ["recipe=fast", "backend=torch"])] == [
        "resnet10t-torchvision-torch-fp32-fast", "resnet10t-tv1-torch-fp32-fast"]
    assert {c.options["target_acc"] for c in suite.cells} == {0.6}
    assert expand(suite_file(tmp_path, RECIPES), get_manager(), target_acc=0.5).cells[0].options["target_acc"] == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('recipe = ["seed", "fast"]', 'recipe = ["seed", "fast", "slow"]'),
         "key 'matrix.recipe': unknown recipe 'slow'; allowed: default, fast, seed, tuned"),
        (('recipe = ["seed", "fast"]', 'recipe = ["seed", "fast"]\n'), None),
        (("lr = 2e-3", "lr = 'high'"), "key 'recipes.fast.lr': expected float, got str 'high'"),
        (("[recipes.fast]", "[recipes.tuned]"), "key 'recipes.tuned': is a built-in recipe"),
        (("[recipes.fast]", "[recipes.faster]"), "key 'recipes.faster': not used: name it in matrix.recipe"),
        (("lr = 2e-3", "min_crop_area = 1.5"),
         "key 'recipes.fast.min_crop_area': expected a fraction in (0, 1], got 1.5"),
        (('base = "tuned"', 'base = "best"'), "key 'recipes.fast.base': unknown recipe 'best'"),
        (("{ recipe = \"seed\", loader = \"tv1\" }", "{ recipe = \"seed\", loader = \"tv2\" }"),
         "key 'matrix.exclude[0].loader': 'tv2' is not in matrix.loader ['torchvision', 'tv1']"),
        (("{ recipe = \"seed\", loader = \"tv1\" }", "{ colour = \"red\" }"),
         "key 'matrix.exclude[0].colour': not an axis of this matrix; axes: model, loader, backend, precision, "
         "recipe"),
        (("{ recipe = \"seed\", loader = \"tv1\" }", "{ recipe = [\"seed\", \"fast\"] }"),
         "key 'matrix.exclude': excludes every cell of the matrix"),
        (("target_acc = 0.6", "target_acc = 60"), "key 'target_acc': expected a validation accuracy in (0, 1]"),
        (("target_acc = 0.6", 'target_acc = 0.6\nrecipe = "seed"'),
         "key 'recipe': the matrix has a recipe axis: name the recipes there"),
        (('recipe = ["seed", "fast"]\n', ""), "key 'recipe': missing"),
    ],
)
def test_bad_recipe_axes_name_the_key(tmp_path: Path, change: tuple[str, str], message: str | None) -> None:
    path = suite_file(tmp_path, RECIPES.replace(*change))
    if message is None:  # the unchanged suite is valid
        expand(path, get_manager())
        return
    with pytest.raises(SuiteError) as info:
        expand(path, get_manager())
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_flowers_cpu_varies_one_factor_at_a_time_around_its_core_cells() -> None:
    suite = expand(suite_path("flowers-cpu"), get_manager())
    assert {(c.epochs, c.image_size, c.subset, c.options["target_acc"]) for c in suite.cells} == {(4, 64, None, 0.55)}
    vit = "vit_tiny_patch16_224"
    assert sorted(c.id for c in suite.cells) == sorted([
        f"{vit}-torchvision-torch-fp32-tuned", f"{vit}-torchvision-torch-fp32-seed",
        f"{vit}-torchvision-torch-bf16-tuned", f"{vit}-dali-file-torch-fp32-tuned",
        f"{vit}-torchvision-colossalai-ddp-fp32-tuned",
        "resnet18-torchvision-torch-fp32-tuned", "resnet18-torchvision-torch-fp32-seed",
        "resnet18-torchvision-torch-bf16-tuned",
    ])
    seed = next(c for c in suite.cells if c.recipe_name == "seed")
    assert (seed.recipe.batch_size, seed.recipe.accumulation) == (128, 16)  # the tutorial's, exactly


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("batch_size = 8", "batch_size = 8, lr = nan"), "key 'recipe.lr': expected a positive learning rate, got nan"),
        (("batch_size = 8", "batch_size = 8, lr = inf"), "key 'recipe.lr': expected a positive learning rate, got inf"),
        (("batch_size = 8", "batch_size = 8, lr = -0.5"), "key 'recipe.lr': expected a positive learning rate"),
        (("batch_size = 8", "batch_size = 8, lr = 0"), "key 'recipe.lr': expected a positive learning rate, got 0"),
        (("batch_size = 8", "batch_size = 8, momentum = -2"), "key 'recipe.momentum': expected a momentum in [0, 1)"),
        (("batch_size = 8", "batch_size = 8, momentum = 1"), "key 'recipe.momentum': expected a momentum in [0, 1)"),
        (("batch_size = 8", "batch_size = 8, weight_decay = -1e-4"),
         "key 'recipe.weight_decay': expected a non-negative weight decay, got -0.0001"),
        (("batch_size = 8", "batch_size = 8, clip_grad_norm = -1"),
         "key 'recipe.clip_grad_norm': expected a positive gradient norm, or 0 for no clipping, got -1.0"),
        (("batch_size = 8", "batch_size = 8, clip_grad_norm = inf"), "key 'recipe.clip_grad_norm': expected"),
        (("batch_size = 8", "batch_size = 8, warmup_epochs = -1"),
         "key 'recipe.warmup_epochs': expected a non-negative number of epochs"),
        (("batch_size = 8", "batch_size = 8, label_smoothing = 5"),
         "key 'recipe.label_smoothing': expected a label smoothing in [0, 1), got 5.0"),
        (("batch_size = 8", "batch_size = 8, mixup_alpha = -0.2"), "key 'recipe.mixup_alpha': expected a non-negative"),
        (("batch_size = 8", "batch_size = 8, min_crop_area = 0"), "key 'recipe.min_crop_area': expected a fraction"),
        (("batch_size = 8", "batch_size = 0"), "key 'recipe.batch_size': expected a positive integer, got 0"),
        (("batch_size = 8", "batch_size = 8, accumulation = 0"), "key 'recipe.accumulation': expected a positive"),
        (("image_size = 32", "image_size = 32\nseed = 9223372036854775807"),
         "key 'seed': expected an integer from 0 to 4294967295, got 9223372036854775807"),
        (("image_size = 32", "image_size = 32\nseed = 4294967295\nrepeat = 2"),
         "key 'repeat': the repeats' seeds run to 4294967296, past the largest seed 4294967295"),
        (("image_size = 32", "image_size = 100000"), "key 'image_size': expected an integer from 1 to 4096"),
    ],
)
def test_recipe_and_run_values_the_optimizer_and_loader_refuse_are_named(tmp_path: Path, change: tuple[str, str],
                                                                          message: str) -> None:
    path = suite_file(tmp_path, VALID.replace(*change))
    with pytest.raises(SuiteError) as info:
        expand(path, get_manager())
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert message in str(info.value)


def test_values_at_the_limits_are_accepted_and_an_out_of_range_seed_override_refused(tmp_path: Path) -> None:
    edge = "batch_size = 8, lr = 1e-9, momentum = 0.0, weight_decay = 0.0, clip_grad_norm = 0.0, mixup_alpha = 0.0"
    text = VALID.replace("batch_size = 8", edge).replace("image_size = 32", "image_size = 4096\nseed = 4294967295")
    assert expand(suite_file(tmp_path, text), get_manager()).cells[0].seed == 4294967295
    with pytest.raises(SuiteError, match=r"^--seed: expected an integer from 0 to 4294967295, got 4294967296$"):
        expand(suite_file(tmp_path, VALID), get_manager(), seed=2**32)
