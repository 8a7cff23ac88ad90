"""Report plots (matplotlib, Agg backend, PNG): accuracy curves, throughput bars, epoch times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

LINESTYLES = ("-", "--", ":", "-.")
DPI = 110


def config_label(row: Mapping[str, Any], with_model: bool) -> str:
    """``"vit_tiny torchvision/torch/bf16"``: what distinguishes a cell, minus the device."""
    parts = f"{row['loader']}/{row['backend']}/{row['precision']}"
    return f"{row['model']} {parts}" if with_model else parts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _labels(summary: pd.DataFrame) -> pd.Series:
    with_model = summary["model"].nunique() > 1
    return summary.apply(lambda r: config_label(r, with_model), axis=1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def _legend_below(ax: Any, count: int) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2 if count > 6 else 1, fontsize=8, frameon=False)


def _accuracy_plot(
    summary: pd.DataFrame,
    epochs: pd.DataFrame,
    x: str,
    xlabel: str,
    references: Sequence[Mapping[str, Any]],
    path: Path,
) -> Path:
    plt = _pyplot()
    runs = summary[summary["epochs"] > 0]
    labels = _labels(runs)
    configs = list(dict.fromkeys(labels))
    devices = list(dict.fromkeys(runs["device_short"]))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 4.2 + 0.18 * len(runs)))
    for (_, run), label in zip(runs.iterrows(), labels, strict=True):
        ep = epochs[epochs["run"] == run["run"]]
        ax.plot(
            ep[x],
            100 * ep["val_acc"],
            marker="o",
            markersize=3,
            color=colors(configs.index(label) % 10),
            linestyle=LINESTYLES[devices.index(run["device_short"]) % len(LINESTYLES)],
            label=f"{label} @ {run['device_short']}",
        )
    for ref in references:
        ref_label = f"published reference: {ref['label']}, {ref['device']}, best {100 * ref['best_val_acc']:.2f} %"
        ax.axhline(100 * ref["best_val_acc"], color="grey", linestyle="--", linewidth=1, label=ref_label)
    if x == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    _legend_below(ax, len(runs) + len(references))
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    fig.clear()
    _pyplot().close(fig)
    return path


def throughput_bars(summary: pd.DataFrame, path: Path) -> Path | None:
    """Training throughput per configuration, one bar per device, with the 95 % interval."""
    plt = _pyplot()
    runs = summary[summary["throughput_img_s"].notna()]
    if runs.empty:
        return None
    runs = runs.assign(config=_labels(runs)).drop_duplicates(["config", "device_short"], keep="last")
    table = runs.pivot(index="config", columns="device_short", values="throughput_img_s")
    low = runs.pivot(index="config", columns="device_short", values="throughput_ci95_low")
    high = runs.pivot(index="config", columns="device_short", values="throughput_ci95_high")
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(table) * max(1, len(table.columns))))
    width = 0.8 / max(1, len(table.columns))
    for i, device in enumerate(table.columns):
        ys = [y + i * width for y in range(len(table))]
        below = (table[device] - low[device]).clip(lower=0).fillna(0)
        err = [below, (high[device] - table[device]).clip(lower=0).fillna(0)]
        ax.barh(ys, table[device], height=width, xerr=err, capsize=2, label=device)
    ax.set_yticks([y + 0.4 - width / 2 for y in range(len(table))], table.index, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training throughput (images/s, epochs after the first)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="device", fontsize=8)
    return _save(fig, path)


def epoch_time_boxes(summary: pd.DataFrame, epochs: pd.DataFrame, path: Path) -> Path:
    """Distribution of epoch times (after the first epoch) per cell run."""
    plt = _pyplot()
    runs = summary[summary["epochs"] > 0]
    labels = _labels(runs)
    data, names = [], []
    for (_, run), label in zip(runs.iterrows(), labels, strict=True):
        times = epochs.loc[epochs["run"] == run["run"], "epoch_time_s"]
        data.append((times.iloc[1:] if len(times) > 1 else times).to_numpy())
        names.append(f"{label} @ {run['device_short']}")
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(data)))
    import matplotlib

    horizontal = {"orientation": "horizontal"} if _version(matplotlib.__version__) >= (3, 10) else {"vert": False}
    ax.boxplot(data, showmeans=True, **horizontal)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("epoch time (s, train + validation, epochs after the first)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_plots(
    summary: pd.DataFrame, epochs: pd.DataFrame, out: Path, references: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[str, Path]]:
    """Write every plot as PNG under ``out``; returns ``(title, path)`` pairs (none without data)."""
    out.mkdir(parents=True, exist_ok=True)
    if summary.empty or epochs.empty:
        return []
    plots = [
        (
            "Validation accuracy vs epoch",
            _accuracy_plot(summary, epochs, "epoch", "epoch", references, out / "val_acc_vs_epoch.png"),
        ),
        (
            "Validation accuracy vs wall-clock time",
            _accuracy_plot(
                summary,
                epochs,
                "wall_time_s",
                "wall-clock time since training started (s)",
                references,
                out / "val_acc_vs_time.png",
            ),
        ),
        ("Training throughput by device", throughput_bars(summary, out / "throughput_by_device.png")),
        ("Epoch-time distribution", epoch_time_boxes(summary, epochs, out / "epoch_times.png")),
    ]
    return [(title, path) for title, path in plots if path is not None]
