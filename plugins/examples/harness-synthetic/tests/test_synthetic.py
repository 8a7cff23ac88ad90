"""Tests of harness-synthetic, written the way docs/plugins.md suggests for any plugin.

Run them after installing the plugin (``pip install -e .``) in an environment with the harness;
the fixtures ``tiny_photos`` and ``harness_plugin`` come from the harness's pytest plugin.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from harness_synthetic import hooks
from harness_synthetic.data import SyntheticLoader
from harness_synthetic.models import TinyCNNFamily

from harness.api import CellSpec, LoaderPlugin, ModelPlugin, Recipe
from harness.testing import check_loader, data_spec, plugin_manager, results, run_harness, suite_cells

PARAMS = {"train_size": 64, "classes": 4}


def batches(iterable: object) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*iterable, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_installed_plugin_registers_everything() -> None:
    manager = plugin_manager()
    plugin = next(p for p in manager.plugins if p.distribution == "harness-synthetic")
    assert plugin.error is None and plugin.warnings == []
    assert manager.loaders()["synthetic"].distribution == "harness-synthetic"
    assert manager.model_family("tinycnn-wide").distribution == "harness-synthetic"
    cells = suite_cells("synthetic-smoke")
    assert len(cells) == 4 and {c.model_plugin for c in cells} == {"tinycnn"}


def test_implements_the_protocols() -> None:
    assert isinstance(SyntheticLoader(), LoaderPlugin)
    assert isinstance(TinyCNNFamily(), ModelPlugin)


def test_batches_are_uint8_nchw_with_balanced_labels() -> None:
    data = check_loader(SyntheticLoader(), data_spec(params=PARAMS, image_size=24, batch_size=16))  # as a cell checks
    images, labels = batches(data.train)
    assert images.shape == (64, 3, 24, 24) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.bincount().tolist() == [16, 16, 16, 16]
    assert data.classes == ["pattern_0", "pattern_1", "pattern_2", "pattern_3"]
    assert (data.train_size, data.validation_size, len(data.train), len(data.validation)) == (64, 16, 4, 1)


def test_same_seed_same_images_other_seed_other_images() -> None:
    first, again, other = (SyntheticLoader().build(data_spec(params=PARAMS, seed=s)) for s in (0, 0, 1))
    assert torch.equal(batches(first.validation)[0], batches(again.validation)[0])
    assert not torch.equal(batches(first.validation)[0], batches(other.validation)[0])


def test_training_order_is_a_function_of_the_epoch() -> None:
    data = SyntheticLoader().build(data_spec(params=PARAMS))
    orders = []
    for epoch in (1, 2, 1):
        data.train.set_epoch(epoch)
        orders.append(batches(data.train)[1])
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0], orders[1])


def test_ranks_get_disjoint_equal_shards() -> None:
    ranks = [SyntheticLoader().build(data_spec(params={**PARAMS, "train_size": 66}, rank=r, world_size=2))
             for r in (0, 1)]
    shards = [batches(d.train)[0].flatten(1) for d in ranks]
    assert len(ranks[0].train) == len(ranks[1].train) and ranks[0].train_size == ranks[1].train_size == 33
    assert not (shards[0][:, None] == shards[1][None]).all(-1).any()  # no image on both ranks


def test_subset_caps_the_training_images() -> None:
    data = SyntheticLoader().build(data_spec(params=PARAMS, subset=32))
    assert (data.train_size, data.validation_size) == (32, 8)


@pytest.mark.parametrize(("params", "reason"), [
    ({"size": 3}, "unknown synthetic loader parameter 'size'"),
    ({"classes": "4"}, "'classes' must be int"),
    ({"classes": 1}, "at least 2"),
    ({"train_size": 3, "classes": 4}, "must be at least classes"),
])
def test_bad_params_give_the_reason(params: dict, reason: str) -> None:
    assert reason in SyntheticLoader().can_run(data_spec().device, params)


def test_models_build_for_any_image_size() -> None:
    family = TinyCNNFamily()
    assert family.knows("tinycnn") and family.knows("tinycnn-wide") and not family.knows("resnet18")
    for size in (16, 40):
        assert family.build("tinycnn", num_classes=3, image_size=size)(torch.zeros(2, 3, size, size)).shape == (2, 3)
    wide = family.build("tinycnn-wide", num_classes=3, image_size=32, depth=2, drop_rate=0.1)
    assert wide.head[-1].in_features == 128
    with pytest.raises(TypeError, match="unknown parameter"):
        family.build("tinycnn", num_classes=3, image_size=32, pretrained=True)


def test_run_start_records_the_generator_settings(tmp_path: Path) -> None:
    cell = CellSpec(id="c", suite="s", model="tinycnn", loader="synthetic", backend="torch", precision="fp32",
                    loader_plugin="synthetic", backend_plugin="torch", epochs=1, image_size=32, data="", seed=3,
                    recipe=Recipe(), loader_params={"classes": 3})
    hooks.harness_run_start(cell, SimpleNamespace(out_dir=tmp_path, rank=0))
    written = json.loads((tmp_path / "synthetic.json").read_text())
    assert (written["seed"], written["classes"], written["train_size"]) == (3, 3, 1024)


def test_the_observer_measures_cpu_use_per_epoch(tmp_path: Path) -> None:
    cell = CellSpec(id="c", suite="s", model="tinycnn", loader="synthetic", backend="torch", precision="fp32",
                    loader_plugin="synthetic", backend_plugin="torch", epochs=1, image_size=32, data="", seed=3,
                    recipe=Recipe())
    hooks.harness_run_start(cell, SimpleNamespace(out_dir=tmp_path, rank=0))
    before = time.process_time()
    sum(i * i for i in range(300_000))  # an epoch's work: one thread busy (as busy as the machine lets it be)
    worked = time.process_time() - before
    assert 0 < hooks.harness_epoch_metrics(cell)["cpu_util"] <= 1.1 * (os.cpu_count() or 1)
    assert hooks.harness_run_metrics(cell)["cpu_s"] >= worked
    assert hooks.harness_epoch_metrics(SimpleNamespace(loader_plugin="other")) is None  # not its cell


@pytest.mark.slow
def test_suite_cell_runs_end_to_end(tmp_path: Path) -> None:
    cell = "tinycnn-synthetic-torch-fp32"
    # No --data: the synthetic loader declares reads_data = False.
    done = run_harness("run", "--suite", "synthetic-smoke", "--out", tmp_path / "out",
                       "--only", f"id={cell}", "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    result = results(tmp_path / "out")[cell]
    assert result["status"] == "ok" and result["env"]["harness_synthetic"] == "0.1.0"
    assert result["summary"]["best_val_acc"] > 0.5  # 4 classes: chance is 0.25
    assert (tmp_path / "out" / "cells" / cell / "synthetic.json").exists()
    epochs = (tmp_path / "out" / "cells" / cell / "epochs.jsonl").read_text().splitlines()
    assert all(json.loads(line)["extra"]["synthetic.cpu_util"] > 0 for line in epochs)  # the observer's field
    assert result["summary"]["extra"]["synthetic.cpu_s"] > 0
