"""Per-run summary: timings, throughput, accuracy, time-to-accuracy, memory, MFU, warnings."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness import devices
from harness.devices import match_device
from harness.report.load import Results
from harness.report.mfu import mfu
from harness.results import timed_epochs

#: Columns of ``runs.csv``: one row per cell run (every repeat, every directory), in order.
RUN_COLUMNS = [
    "suite", "model", "recipe", "loader", "backend", "precision", "precision_support", "device", "environment", "seed",
    "status", "reason", "epochs", "timed_epochs", "epoch_time_s", "throughput_img_s", "best_val_acc", "best_epoch",
    "time_to_acc_s", "peak_mem_gb", "optimizer_steps_per_epoch", "data_wait_pct", "train_flops_per_image", "mfu",
    "warnings", "host", "nproc", "cell_id", "run", "finished_at",
]  # fmt: skip

MIN_OPTIMIZER_STEPS = 10
#: Cell fields that set the work done (not where it runs; repeats differ only in seed): runs that differ in one
#: are different experiments, never repeats of one.
SPEC_KEYS = ("epochs", "image_size", "subset", "nproc", "recipe", "model_params", "loader_params", "backend_params")


def describe(value: Any) -> str:
    """A value as text (objects as sorted JSON), for comparing and showing."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def installed(value: Any) -> str:
    """A library version as text: ``not installed`` where the fingerprint recorded none."""
    return "not installed" if value is None else describe(value)


def device_name(env: Mapping[str, Any]) -> str:
    """The device a run used, as recorded: the GPU's torch name, else the CPU model, with the device kind the Ray
    executor placed it by (``fleet_kind``, docs/many-machines.md) when that is not the GPU itself."""
    if env.get("device_type") == "cuda" and env.get("device_name"):
        return str(env["device_name"])
    if env.get("cpu_model"):
        name = f"CPU: {env['cpu_model']}"
    else:
        name = "cpu" if env.get("device_type") == "cpu" else "unknown"
    return f"{name} ({env['fleet_kind']})" if env.get("fleet_kind") else name


def device_short(name: str) -> str:
    """A short label for column headers: the device table's key (``T4``), ``CPU Intel Xeon ...``, or the name."""
    if name.startswith("CPU: "):
        model = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|@.*$", " ", name[5:], flags=re.IGNORECASE)
        return " ".join(["CPU", *model.split()])
    facts = match_device(name)
    return facts["key"] if facts else name


def epoch_stats(epochs: pd.DataFrame, target_acc: float | None) -> dict[str, Any]:
    """Statistics of one run's epochs (sorted by epoch). Timings leave out the warm-up (:func:`timed_epochs`);
    ``epoch_throughputs`` lists each timed epoch's, ``extra`` the mean of each observer field over the epochs."""
    nan = math.nan
    if epochs.empty:
        return {"epochs": 0, "timed_epochs": 0, "epoch_throughputs": [], "extra": {}}
    steady = timed_epochs(epochs)
    train_time = steady["train_time_s"].sum()
    best = epochs["val_acc"].idxmax() if epochs["val_acc"].notna().any() else None
    reached = epochs[epochs["val_acc"] >= target_acc] if target_acc is not None else epochs.iloc[0:0]
    return {
        "epochs": len(epochs),
        "timed_epochs": len(steady),
        "epoch_time_s": steady["epoch_time_s"].median(),
        "throughput_img_s": steady["train_images"].sum() / train_time if train_time > 0 else nan,
        "best_val_acc": epochs["val_acc"].max(),
        "best_epoch": epochs.at[best, "epoch"] if best is not None else nan,
        "time_to_acc_s": reached["wall_time_s"].iloc[0] if len(reached) else nan,
        "peak_mem_gb": epochs["peak_mem_gb"].max(),
        "optimizer_steps_per_epoch": epochs["optimizer_steps"].median(),
        "data_wait_pct": 100 * steady["data_wait_s"].sum() / train_time if train_time > 0 else nan,
        "epoch_throughputs": list(steady["train_images"] / steady["train_time_s"]),
        "extra": pd.DataFrame(list(epochs["extra"])).mean().to_dict() if "extra" in epochs else {},
    }


def derived_warnings(cell: Mapping[str, Any], env: Mapping[str, Any], stats: Mapping[str, float],
                     recorded: Sequence[str] = (), codes: Sequence[str] = ()) -> list[str]:
    """Warnings the report can see from the data: a precision the device only emulates, tiny step counts;
    each unless the engine recorded its own, more precise one (by warning ``codes``; results written before
    warnings had codes are matched by their ``recorded`` text)."""
    out = []
    device = devices.from_fingerprint(dict(env))
    support = devices.support(device, str(cell.get("precision"))) if device else None
    if support and support.level == devices.EMULATED and not _recorded("emulated-precision", " is emulated on ",
                                                                        recorded, codes):
        out.append(f"{support.reason}: {support.slowdown}")
    steps = stats.get("optimizer_steps_per_epoch", math.nan)
    if steps < MIN_OPTIMIZER_STEPS and not _recorded("few-steps", "optimizer steps per epoch", recorded, codes):
        out.append(f"only {steps:g} optimizer step(s) per epoch")
    if stats.get("epochs") == 1:
        out.append("one epoch only: timings include warm-up")
    return out


def _recorded(code: str, text: str, recorded: Sequence[str], codes: Sequence[str]) -> bool:
    return code in codes or any(text in w for w in recorded)


def precision_support(cell_row: Mapping[str, Any]) -> str | None:
    """native / emulated for the precision a cell ran in (recorded by the engine, or derivable), else None."""
    if "emulated-precision" in cell_row["warning_codes"]:
        return devices.EMULATED
    return devices.recorded_support(dict(cell_row["env"]), str(cell_row["precision"]))


def sanity_warnings(mfu_value: float) -> list[str]:
    """Checks a measurement must pass to be trusted (each disqualifies the run from being picked)."""
    if math.isfinite(mfu_value) and mfu_value > 1:
        return [f"MFU {100 * mfu_value:.0f} % is above the device's peak: the FLOP count, the throughput or the "
                "device's peak is wrong"]
    return []


def summarize(results: Results, target_acc: float | Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per cell run with :data:`RUN_COLUMNS` plus ``device_short``, ``source_index``, ``env``, ``cell``,
    ``epoch_throughputs``, ``extra`` and ``disqualified``. ``target_acc``: one for all, or per suite."""
    by_run = dict(tuple(results.epochs.groupby("run", sort=False)))
    rows = []
    for cell_row in results.cells.to_dict("records"):
        env, cell = cell_row["env"], cell_row["cell"]
        target = target_acc.get(str(cell_row["suite"])) if isinstance(target_acc, Mapping) else target_acc
        stats = epoch_stats(by_run.get(cell_row["run"], results.epochs.iloc[0:0]), target)
        if not math.isfinite(stats.get("optimizer_steps_per_epoch", math.nan)):
            stats["optimizer_steps_per_epoch"] = cell_row["optimizer_steps_per_epoch_recorded"]
        name = device_name(env)
        recorded = cell_row["recorded_warnings"]
        skipped = cell_row["status"] == "skipped"
        derived = [] if skipped else derived_warnings(cell, env, stats, recorded, cell_row["warning_codes"])
        warnings = list(dict.fromkeys([*recorded, *derived]))
        row = {**cell_row, **stats, "extra": {**stats.get("extra", {}), **cell_row["extra"]}, "device": name,
               "device_short": device_short(name), "host": env.get("hostname")}
        row["mfu"] = mfu(
            stats.get("throughput_img_s", math.nan),
            cell_row["train_flops_per_image"],
            env.get("device_name") if env.get("device_type") == "cuda" else None,
            cell_row["precision"] or "",
            cell_row["nproc"],
        )
        sanity = sanity_warnings(row["mfu"])
        row["disqualified"] = [*cell_row["disqualified"], *sanity]
        row["warnings"] = "; ".join(dict.fromkeys([*warnings, *sanity]))
        row["precision_support"] = precision_support(cell_row) if cell_row["status"] != "skipped" else None
        row["settings"] = describe({key: cell.get(key) for key in SPEC_KEYS})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "device_short", "source_index", "device_type", "settings", "env",
                                        "cell", "epoch_throughputs", "extra", "disqualified", "race"])
    frame["device_type"] = [env.get("device_type") for env in frame["env"]]
    frame[["epochs", "timed_epochs"]] = frame[["epochs", "timed_epochs"]].fillna(0).astype(int)
    frame["best_epoch"] = frame["best_epoch"].astype("Int64")
    return frame.sort_values(["suite", "model", "recipe", "loader", "backend", "precision", "device", "seed"],
                             ignore_index=True)
