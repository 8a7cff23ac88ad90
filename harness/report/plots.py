"""Report plots (matplotlib, Agg backend, SVG): small multiples that stay readable at phone width.

One image per panel: training throughput per model, and validation accuracy vs wall time per model and
backend (and device, when there are several). Within a panel every factor in which its lines differ (recipe,
loader, backend, precision, device, environment, settings) gets its own channel: colour, then line style, then
marker, then marker fill, so no two lines look alike; each is named in the legend. Axes leave headroom past the
largest value, turn logarithmic when the values span more than 10x, and the accuracy panels share one y range.
Repeats are drawn as their mean with the min-max band; an interval is drawn only where one exists. One font size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.render import SEP
from harness.report.summary import describe

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#999999")  # Okabe-Ito
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P")
FILLS = ("full", "none", "left", "bottom")
#: What tells lines apart, in the order the channels (colour, line style, marker, fill) are handed out.
FACTORS = ("loader", "recipe", "precision", "device_short", "environment", "backend", "settings")
WIDTH = 5.0  # inches: shown ~400-650 px wide
FONT = 11
STYLE = {"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT, "xtick.labelsize": FONT,
         "ytick.labelsize": FONT, "legend.fontsize": FONT, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none", "svg.hashsalt": "harness"}
SETTINGS = ("epochs", "image_size", "subset", "nproc")
LOG_SPAN = 10.0
HEADROOM = 1.08


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _legend_below(ax: Any, count: int, label_lines: int = 1) -> None:
    """The legend under the x-axis label (``label_lines`` lines of it), whatever the panel's height."""
    height = ax.get_position().height * ax.figure.get_figheight()
    below = (0.42 + 0.2 * label_lines) / height
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), ncol=1, frameon=False)


def _value(row: Mapping[str, Any], factor: str) -> str:
    if factor == "precision" and row.get("precision_support") == "emulated":
        return f"{row['precision']} (emulated)"
    return str(row[factor])


def _settings(records: list[dict[str, Any]]) -> None:
    """Each record's ``settings``: the work settings (epochs, image size, subset, processes) in which the records
    differ, short (``image_size 64``); a recipe counts by its name, plugin parameters by the plugin's."""
    cells = [r.get("cell") or {} for r in records]
    keys = [k for k in SETTINGS if len({describe(c.get(k)) for c in cells}) > 1]
    for record, cell in zip(records, cells, strict=True):
        record["settings"] = ", ".join(f"{k} {describe(cell.get(k))}" for k in keys)


def styles(rows: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    """Per row a matplotlib style and a legend label such that rows differing in any factor look different:
    the differing factors take colour, line style, marker and marker fill in turn (colour takes any left over)."""
    records = rows.to_dict("records")
    _settings(records)
    differing = [f for f in FACTORS if len({_value(r, f) for r in records}) > 1]
    channels = [differing[:1] + differing[4:], differing[1:2], differing[2:3], differing[3:4]]
    out, labels = [], []
    for row in records:
        index = []
        for factors in channels:
            values = [tuple(_value(r, f) for f in factors) for r in records]
            levels = list(dict.fromkeys(values))
            index.append(levels.index(tuple(_value(row, f) for f in factors)))
        out.append({"color": PALETTE[index[0] % len(PALETTE)], "linestyle": LINESTYLES[index[1] % len(LINESTYLES)],
                    "marker": MARKERS[index[2] % len(MARKERS)], "fillstyle": FILLS[index[3] % len(FILLS)]})
        labels.append(SEP.join(v for v in (_value(row, f) for f in differing) if v) or _value(row, "loader"))
    return out, labels


def _scale(ax: Any, axis: str, values: Sequence[float], floor: float | None = 0.0) -> None:
    """Headroom past the largest value; a log scale when the positive values span more than 10x."""
    positive = [float(v) for v in values if pd.notna(v) and v > 0]
    if not positive:
        return
    low, high = min(positive), max(positive)
    limits = getattr(ax, f"set_{axis}lim")
    if high / low > LOG_SPAN:
        getattr(ax, f"set_{axis}scale")("log")
        limits(low / 1.3, high * 1.3)
    else:
        limits(floor if floor is not None else low / HEADROOM, high * HEADROOM)


def _reference(ax: Any, references: Sequence[Mapping[str, Any]], model: str) -> str:
    """Draw the published accuracy where it falls inside the panel's range; else return a note for the caption."""
    low, high = ax.get_ylim()
    notes = []
    for ref in (r for r in references if r["model"] == model):
        value = 100 * ref["best_val_acc"]
        text = f"published: {value:.1f} % ({ref['device']}, {ref['epochs']} epochs)"
        if low <= value <= high:
            ax.axhline(value, color="grey", linestyle="--", linewidth=1)
            ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), va="bottom", fontsize=FONT,
                        color="grey")
        else:
            notes.append(f"{text}, off this scale")
    return "".join(f"\n{note}" for note in notes)


def accuracy_panels(summary: pd.DataFrame, epochs: pd.DataFrame, references: Sequence[Mapping[str, Any]],
                    out: Path) -> list[tuple[str, Path]]:
    """Validation accuracy vs wall time, one image per model and backend (and device): time to accuracy. Every
    panel has the same y range."""
    plt = _pyplot()
    ok = summary[(summary["status"] == "ok") & (summary["epochs"] > 0)]
    keys = ["model", "backend", *(["device_short"] if ok["device_short"].nunique() > 1 else [])]
    shown = epochs[epochs["run"].isin([r for runs in ok["run"] for r in runs.split("; ")])]["val_acc"].dropna()
    ylim = (max(0.0, 100 * shown.min() - 5), min(100.0, 100 * shown.max() + 5)) if len(shown) else (0.0, 100.0)
    plots = []
    for key, rows in ok.groupby(keys, sort=False):
        title = f"{SEP.join(map(str, key))}: validation accuracy"
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
            times = []
            for row, style, name in zip(rows.to_dict("records"), *styles(rows), strict=True):
                curve = _mean_curve(epochs, row["run"].split("; "))
                times += list(curve["x"])
                ax.plot(curve["x"], 100 * curve["mean"], markersize=5, label=name, **style)
                if row["runs"] > 1:
                    ax.fill_between(curve["x"], 100 * curve["min"], 100 * curve["max"], color=style["color"],
                                    alpha=0.12, linewidth=0)
            _scale(ax, "x", times)
            ax.set_ylim(*ylim)
            note = _reference(ax, references, key[0])
            ax.set(title=title, xlabel=f"wall time since training started (s){note}",
                   ylabel="validation accuracy (%)")
            _legend_below(ax, len(rows), 1 + note.count("\n"))
            plots.append((f"{title} vs wall time", _save(fig, out / f"val_acc-{_slug(*map(str, key))}.svg")))
    return plots


def _mean_curve(epochs: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """Per epoch: mean wall time and mean / min / max validation accuracy over the runs."""
    rows = epochs[epochs["run"].isin(runs)]
    return rows.groupby("epoch").agg(x=("wall_time_s", "mean"), mean=("val_acc", "mean"), min=("val_acc", "min"),
                                     max=("val_acc", "max")).reset_index()


def throughput_panels(summary: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Training throughput per model, one row per configuration: each run a small dot, the mean a large one, the
    95 % interval a line."""
    plt = _pyplot()
    ok = summary[(summary["status"] == "ok") & summary["throughput_img_s"].notna()]
    plots = []
    for model, rows in ok.groupby("model", sort=False):
        looks, labels = styles(rows)
        title = f"{model}: training throughput"
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(WIDTH, 1.2 + 0.32 * len(rows)))
            values = []
            for y, (row, style) in enumerate(zip(rows.to_dict("records"), looks, strict=True)):
                dot = {"color": style["color"], "marker": style["marker"], "zorder": 3}
                face = style["color"] if style["fillstyle"] == "full" else "none"
                ax.scatter([row["throughput_img_s"]], [y], s=45, facecolors=face, edgecolors=style["color"],
                           marker=style["marker"], zorder=3)
                each = runs.loc[runs["run"].isin(row["run"].split("; ")), "throughput_img_s"]
                values += [row["throughput_img_s"], *each]
                if row["runs"] > 1:
                    ax.scatter(each, [y] * len(each), s=12, alpha=0.4, **dot)
                if pd.notna(row["throughput_ci95_low"]):
                    low = max(row["throughput_ci95_low"], 0)
                    ax.plot([low, row["throughput_ci95_high"]], [y, y], color=style["color"], linewidth=2, alpha=0.7)
                    values += [low, row["throughput_ci95_high"]]
            ax.set_yticks(range(len(rows)), labels)
            ax.set_ylim(len(rows) - 0.5, -0.5)
            _scale(ax, "x", values)
            ax.grid(axis="y", alpha=0)
            ax.set(title=title, xlabel="training images / s (epochs after the first)")
            plots.append((title, _save(fig, out / f"throughput-{_slug(str(model))}.svg")))
    return plots


def write_plots(summary: pd.DataFrame, runs: pd.DataFrame, epochs: pd.DataFrame, out: Path,
                references: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, Path]]:
    """Write every plot as SVG under ``out`` (replacing earlier ones); returns ``(title, path)`` pairs."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.svg")]:
        old.unlink()
    if summary.empty or epochs.empty:
        return []
    return [
        *throughput_panels(summary, runs, out),
        *accuracy_panels(summary, epochs, references, out),
    ]
