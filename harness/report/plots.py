"""Report plots (matplotlib, Agg backend, PNG): small multiples that stay readable at phone width.

One image per panel: training throughput per model, and validation accuracy vs wall time per model and
backend (and device, when there are several). Colours are fixed per loader across every
plot, line styles per precision (per recipe where recipes differ), markers per device; titles and
axis labels are inside each image.
Repeats are drawn as their mean with the min-max band; an interval is drawn only where one exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.load import DEFAULT_ENVIRONMENT
from harness.report.render import SEP

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#999999")  # Okabe-Ito
LINESTYLES = {"fp32": "-", "bf16": "--", "fp16": ":"}
RECIPE_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))  # per (recipe, precision)
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 100
WIDTH = 5.0  # inches: ~500-650 px with labels, shown ~400 px wide on a phone: 11 pt text stays ~10 px
STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11,
         "legend.fontsize": 11, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def palette(values: Sequence[str]) -> dict[str, str]:
    """A fixed colour per value (sorted, so the same loader has the same colour in every report)."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(sorted(set(values)))}


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _legend_below(ax: Any, count: int, label_lines: int = 1) -> None:
    """The legend under the x-axis label (``label_lines`` lines of it), whatever the panel's height."""
    height = ax.get_position().height * ax.figure.get_figheight()
    below = (0.42 + 0.2 * label_lines) / height
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), ncol=2 if count > 3 else 1, frameon=False)


def _reference(ax: Any, references: Sequence[Mapping[str, Any]], model: str) -> str:
    """Draw the published accuracy where it falls inside the data's range; else return a note for the caption."""
    low, high = ax.get_ylim()
    notes = []
    for ref in (r for r in references if r["model"] == model):
        value = 100 * ref["best_val_acc"]
        text = f"published: {value:.1f} % ({ref['device']}, {ref['epochs']} epochs)"
        if low <= value <= high:
            ax.axhline(value, color="grey", linestyle="--", linewidth=1)
            ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), va="bottom", fontsize=9, color="grey")
        else:
            notes.append(f"{text}, off this scale")
    ax.set_ylim(low, high)
    return "".join(f"\n{note}" for note in notes)


def accuracy_panels(summary: pd.DataFrame, epochs: pd.DataFrame, references: Sequence[Mapping[str, Any]],
                    out: Path) -> list[tuple[str, Path]]:
    """Validation accuracy vs wall time, one image per model and backend (and device): time to accuracy."""
    plt = _pyplot()
    ok = summary[(summary["status"] == "ok") & (summary["epochs"] > 0)]
    colours = palette(summary["loader"].dropna())
    devices = list(dict.fromkeys(summary["device_short"]))
    keys = ["model", "backend", *(["device_short"] if ok["device_short"].nunique() > 1 else [])]
    environments = ok["environment"].nunique() > 1
    # Where recipes differ, each (recipe, precision) pair gets its own line style; else each precision does.
    pairs = list(dict.fromkeys(zip(ok["recipe"], ok["precision"], strict=True))) if ok["recipe"].nunique() > 1 else []
    plots = []
    for key, rows in ok.groupby(keys, sort=False):
        title = f"{SEP.join(map(str, key))}: validation accuracy"
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
            for row in rows.to_dict("records"):
                curve = _mean_curve(epochs, row["run"].split("; "))
                label = _label(row, ["recipe"] * bool(pairs) + ["loader", "precision"], environments)
                pair = (row["recipe"], row["precision"])
                dashes = RECIPE_LINESTYLES[pairs.index(pair) % len(RECIPE_LINESTYLES)] if pairs else (
                    LINESTYLES.get(row["precision"], "-."))
                style = {"color": colours[row["loader"]], "linestyle": dashes,
                         "marker": MARKERS[devices.index(row["device_short"]) % len(MARKERS)]}
                ax.plot(curve["x"], 100 * curve["mean"], markersize=4, label=label, **style)
                if row["runs"] > 1:
                    ax.fill_between(curve["x"], 100 * curve["min"], 100 * curve["max"], color=style["color"],
                                    alpha=0.12, linewidth=0)
            note = _reference(ax, references, key[0])
            ax.set(title=title, xlabel=f"wall time since training started (s){note}",
                   ylabel="validation accuracy (%)")
            _legend_below(ax, len(rows), 1 + note.count("\n"))
            plots.append((f"{title} vs wall time", _save(fig, out / f"val_acc-{_slug(*map(str, key))}.png")))
    return plots


def _label(row: Mapping[str, Any], keys: list[str], environment: bool) -> str:
    """``torchvision · bf16 (emulated)``: the given keys, the precision labelled, the environment if several."""
    parts = [f"{row[k]} (emulated)" if k == "precision" and row["precision_support"] == "emulated" else str(row[k])
             for k in keys]
    named = environment and row["environment"] != DEFAULT_ENVIRONMENT
    return SEP.join(parts + ([str(row["environment"])] if named else []))


def _mean_curve(epochs: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """Per epoch: mean wall time and mean / min / max validation accuracy over the runs."""
    rows = epochs[epochs["run"].isin(runs)]
    return rows.groupby("epoch").agg(x=("wall_time_s", "mean"), mean=("val_acc", "mean"), min=("val_acc", "min"),
                                     max=("val_acc", "max")).reset_index()


def throughput_panels(summary: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Training throughput per model: each run a small dot, the mean a large one, the 95 % interval a line."""
    plt = _pyplot()
    ok = summary[(summary["status"] == "ok") & summary["throughput_img_s"].notna()]
    colours = palette(summary["loader"].dropna())
    devices = list(dict.fromkeys(summary["device_short"]))
    environments = ok["environment"].nunique() > 1
    plots = []
    for model, rows in ok.groupby("model", sort=False):
        labels = [_label(r, ["backend", "precision"], environments) for r in rows.to_dict("records")]
        categories = list(dict.fromkeys(labels))
        series = rows.assign(_label=labels).groupby(["loader", "device_short"], sort=False)
        title = f"{model}: training throughput"
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(WIDTH, 1.6 + 0.42 * len(categories)))
            for i, ((loader, device), group) in enumerate(series):
                offset = (i - (len(series) - 1) / 2) * min(0.6 / len(series), 0.2)
                ys = [categories.index(label) + offset for label in group["_label"]]
                marker = MARKERS[devices.index(device) % len(MARKERS)]
                name = f"{loader} @ {device}" if len(devices) > 1 else loader
                ax.scatter(group["throughput_img_s"], ys, color=colours[loader], marker=marker, s=45, label=name,
                           zorder=3)
                for y, row in zip(ys, group.to_dict("records"), strict=True):
                    each = runs.loc[runs["run"].isin(row["run"].split("; ")), "throughput_img_s"]
                    if row["runs"] > 1:
                        ax.scatter(each, [y] * len(each), color=colours[loader], marker=marker, s=12, alpha=0.4)
                    if pd.notna(row["throughput_ci95_low"]):
                        ax.plot([max(row["throughput_ci95_low"], 0), row["throughput_ci95_high"]], [y, y],
                                color=colours[loader], linewidth=2, alpha=0.7)
            ax.set_yticks(range(len(categories)), categories)
            ax.set_ylim(len(categories) - 0.5, -0.5)
            ax.set_xlim(left=0)
            ax.grid(axis="y", alpha=0)
            ax.set(title=title, xlabel="training images / s (epochs after the first)")
            _legend_below(ax, len(series))
            plots.append((title, _save(fig, out / f"throughput-{_slug(str(model))}.png")))
    return plots


def write_plots(summary: pd.DataFrame, runs: pd.DataFrame, epochs: pd.DataFrame, out: Path,
                references: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, Path]]:
    """Write every plot as PNG under ``out`` (replacing earlier ones); returns ``(title, path)`` pairs."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    if summary.empty or epochs.empty:
        return []
    return [
        *throughput_panels(summary, runs, out),
        *accuracy_panels(summary, epochs, references, out),
    ]
