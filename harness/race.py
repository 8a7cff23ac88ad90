"""Races: the fastest configuration, with confidence, without training every cell to the end.

Every runnable cell trains to the first rung (:attr:`RaceSettings.first` epochs: the warm-up epoch and then at least
:data:`harness.report.stats.MIN_SAMPLES` timed ones, so no comparison ever rests on the warm-up epoch); each rung
after is :attr:`RaceSettings.factor` times the one before, the last being the full training. After each rung the
cells of one board (suite, device, model: what the report ranks together) are compared, and a configuration is
eliminated only when another one beats it at 95 % with the report's own intervals
(:mod:`harness.report.stats`) and is not worse on the other axis:

- **slower**: its throughput over its timed epochs (all repeats pooled; timed images over timed seconds, as the
  report's, so the interval is over the epochs' seconds per image), as a ratio to the other's, has an
  interval entirely below ``1 - margin`` (a Welch t interval on its log, or the bootstrap from 10 samples a side; the
  margin, 5 % by default, because cells run one after another and the machine's drift between them is not in
  any one cell's samples), and its best validation accuracy so far is not significantly above the other's; or
- **less accurate**: its best validation accuracy so far has a Wilson interval (on the validation images, all
  repeats pooled) entirely below the other's, and its throughput is not significantly above the other's; or
- **never pickable**: a failed sanity check or an emulated precision (the report never picks those).

Configurations that tie stay in; cells the user keeps (``--keep``) are never eliminated. Eliminated cells are
recorded ``eliminated`` with the rung and the evidence; the survivors run to the end and are reported as usual.
Each rung runs its cells in the reverse order of the rung before, so drift between cells run one after another
does not always favour the same ones.
A race can be wrong where a configuration starts slow and ends fast (compilation, a cache that fills, an LR
warm-up that holds accuracy back): docs/race.md says how the rung sizes guard against it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import harmonic_mean
from typing import Any, Protocol

from tqdm import tqdm

from harness.api import CellSpec, Outcome
from harness.results import WARMUP_EPOCHS, iter_epochs, latest_per_epoch, read_json, timed_epochs
from harness.store import CellStore, write_json

#: At least this many timed epochs a side before any ratio has an interval (:data:`harness.report.stats.MIN_SAMPLES`).
TIMED_EPOCHS = 3
#: The first rung: the warm-up epoch, then the fewest timed epochs an interval is computed from.
FIRST = WARMUP_EPOCHS + TIMED_EPOCHS
FACTOR = 2.0
#: A configuration is eliminated as slower only when surely more than this share slower than another.
MARGIN = 0.05


class Runner(Protocol):
    """What a race asks of the runner (:class:`harness.runner.Runner`): run cells to a rung, record outcomes."""

    cells: list[CellSpec]
    out: Path
    resume: bool

    def run_cells(self, cells: Sequence[CellSpec], until: int | None = None, resume: bool | None = None
                  ) -> list[Outcome]: ...

    def outcome(self, outcome: Outcome) -> None: ...


class RaceError(ValueError):
    """Race settings that cannot work; the message names the setting (exit code 2)."""


@dataclass(frozen=True)
class RaceSettings:
    """How a race runs: its first rung, the factor between rungs, the margin a slower configuration must be
    surely beyond, and the cells kept to the end (``keep``: ``--keep`` filters, as ``--only`` takes them;
    ``kept``: the ids of the cells they select, resolved by the caller with :func:`harness.suite.select`)."""

    first: int = FIRST
    factor: float = FACTOR
    margin: float = MARGIN
    keep: tuple[str, ...] = ()
    kept: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.first, int) or self.first < FIRST:
            raise RaceError(f"race.first: expected an integer of at least {FIRST} (the warm-up epoch and "
                            f"{TIMED_EPOCHS} timed ones, the fewest an interval is computed from), got {self.first!r}")
        if not isinstance(self.factor, int | float) or not self.factor > 1:
            raise RaceError(f"race.factor: expected a number above 1 (each rung's epochs are the previous one's "
                            f"times it), got {self.factor!r}")
        if not isinstance(self.margin, int | float) or not 0 <= self.margin < 1:
            raise RaceError(f"race.margin: expected a share from 0 to below 1 (0.05: eliminated only when surely "
                            f"more than 5 % slower), got {self.margin!r}")

    def describe(self) -> dict[str, Any]:
        return {"first": self.first, "factor": self.factor, "margin": self.margin, "keep": list(self.keep)}

    @classmethod
    def recorded(cls, out: Path) -> RaceSettings | None:
        """The race an output directory's run was (its ``run.json``), if it was one."""
        race = (read_json(out / "run.json") or {}).get("race")
        if not isinstance(race, dict):
            return None
        return cls(race["first"], race["factor"], race.get("margin", MARGIN), tuple(race.get("keep", ())))


def rungs(epochs: int, first: int = FIRST, factor: float = FACTOR) -> list[int]:
    """The epochs after which a race compares its cells: ``first``, then each ``factor`` times the one before,
    and last ``epochs``, the full training (one rung, the full training, when ``epochs <= first``)."""
    found: list[int] = []
    rung = float(first)
    while math.ceil(rung) < epochs:
        if not found or math.ceil(rung) > found[-1]:
            found.append(math.ceil(rung))
        rung *= factor
    return [*found, epochs]


@dataclass
class Racer:
    """One configuration on one device in a race: its cells (the repeats) and what they recorded up to a rung."""

    label: str
    board: tuple[str, str, str]  # suite, device, model: what the report ranks together
    cells: list[CellSpec]
    throughputs: list[float]  # the timed epochs' throughputs, all repeats pooled
    accuracy: float  # the best validation accuracy so far, mean over repeats
    accuracy_low: float  # its 95 % interval
    accuracy_high: float
    unpickable: str | None  # why the report could never pick it
    kept: bool

    @property
    def throughput(self) -> float:
        """Training images over training seconds (the epochs' harmonic mean: an epoch weighs by its time)."""
        return harmonic_mean(self.throughputs) if self.throughputs else math.nan


@dataclass
class Evidence:
    """Why a configuration was eliminated at a rung."""

    epochs: int
    text: str
    against: str | None = None  # the configuration that beat it
    metric: str | None = None  # "throughput_img_s" or "best_val_acc"
    ratio: float = math.nan  # its throughput / the other's, with the 95 % interval
    low: float = math.nan
    high: float = math.nan
    accuracy: float = math.nan  # its best validation accuracy so far, and the other's
    rival_accuracy: float = math.nan

    def as_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _pct(value: float, low: float, high: float) -> str:
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if math.isfinite(low) else ""
    return f"{100 * value:.1f} %{interval}"


def verdicts(racers: Sequence[Racer], epochs: int, margin: float = MARGIN) -> dict[int, Evidence]:
    """The racers (by index) eliminated after ``epochs``, with the evidence (see the module docstring)."""
    from harness.report.stats import throughput_ratio_interval

    out: dict[int, Evidence] = {}
    for i, racer in enumerate(racers):
        if racer.kept:
            continue
        if racer.unpickable:
            out[i] = Evidence(epochs, f"{racer.unpickable}: the report never picks it (after {epochs} epochs)")
            continue
        rivals = sorted((r for r in racers if r is not racer and r.board == racer.board and not r.unpickable),
                        key=lambda r: -r.throughput if math.isfinite(r.throughput) else math.inf)
        for rival in rivals:
            ratio, low, high = throughput_ratio_interval(racer.throughputs, rival.throughputs)
            more_accurate = racer.accuracy_low > rival.accuracy_high
            less_accurate = racer.accuracy_high < rival.accuracy_low
            accuracies = (f"{_pct(racer.accuracy, racer.accuracy_low, racer.accuracy_high)} vs "
                          f"{_pct(rival.accuracy, rival.accuracy_low, rival.accuracy_high)}")
            evidence = Evidence(epochs, "", rival.label, None, ratio, low, high, racer.accuracy, rival.accuracy)
            if high < 1 - margin and not more_accurate:
                evidence.metric = "throughput_img_s"
                evidence.text = (f"{ratio:.2f}x the throughput of {rival.label}, 95 % interval [{low:.2f}, "
                                 f"{high:.2f}] (entirely below {1 - margin:g}: the race's margin), and not more "
                                 f"accurate (best validation accuracy {accuracies}), after {epochs} epochs")
            elif less_accurate and not low > 1:
                evidence.metric = "best_val_acc"
                speed = f"{ratio:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) else "")
                evidence.text = (f"less accurate than {rival.label} (best validation accuracy {accuracies}) and not "
                                 f"faster ({speed} its throughput), after {epochs} epochs")
            else:
                continue
            out[i] = evidence
            break
    return out


@dataclass
class Race:
    """A run as a race: the runner runs the racing cells to each rung; after it, :func:`verdicts` eliminates."""

    runner: Runner
    settings: RaceSettings
    schedule: list[int] = field(default_factory=list)

    def run(self) -> None:
        cells, kept = self.runner.cells, set(self.settings.kept)
        self.schedule = rungs(max(c.epochs for c in cells), self.settings.first, self.settings.factor)
        tqdm.write(f"harness: racing {len(cells)} cells: rungs at {', '.join(map(str, self.schedule))} epochs"
                   + (f"; {len(kept)} kept to the end" if kept else ""))
        racing = list(cells)
        for rung, until in enumerate(self.schedule, 1):
            last = rung == len(self.schedule)
            ended = self.runner.run_cells(racing, None if last else until, self.runner.resume or rung > 1)
            paused = [o.cell for o in ended if o.status == "paused"]
            if last:
                break
            eliminated = self.eliminate(paused, until, rung, kept)
            # each rung in the reverse order of the one before (A B, then B A): the machine's drift over a rung
            # lands on early and late cells alike, instead of always on the same ones
            racing = [c for c in reversed(paused) if c.id not in eliminated]
            tqdm.write(f"harness: race rung {rung} ({until} epochs): {len(eliminated)} eliminated, "
                       f"{len(racing)} go on")
        for cell in cells:  # every raced cell's result says it was raced, and how far it went
            self.annotate(cell, kept)

    def eliminate(self, paused: list[CellSpec], epochs: int, rung: int, kept: set[str]) -> set[str]:
        """Compare the paused cells after ``epochs``; record the eliminated ones. Their ids."""
        racers = self.racers(paused, epochs, kept)
        eliminated: set[str] = set()
        for index, evidence in verdicts(racers, epochs, self.settings.margin).items():
            for cell in racers[index].cells:
                store = CellStore(self.runner.out, cell.id)
                paused_result = store.result() or {}
                store.write_result(cell, paused_result.get("env", {}), "eliminated", evidence.text,
                                   summary=paused_result.get("summary"), started_at=paused_result.get("started_at"),
                                   race=self.race_block(cell, rung, evidence, kept))
                tqdm.write(f"[{cell.id}] eliminated at rung {rung}: {evidence.text}")
                self.runner.outcome(Outcome(cell, "eliminated", evidence.text))
                eliminated.add(cell.id)
        return eliminated

    def racers(self, cells: Iterable[CellSpec], epochs: int, kept: set[str]) -> list[Racer]:
        """The paused cells as racers: one per configuration and device, repeats together."""
        from harness.report.decision import accuracy_step, images, label
        from harness.report.summary import device_name, device_short

        grouped: dict[tuple[str, str], list[tuple[CellSpec, list[dict[str, float]], dict[str, Any]]]] = {}
        for cell in cells:
            store = CellStore(self.runner.out, cell.id)
            records = [e.metrics for e in latest_per_epoch(iter_epochs(store.epochs_path)) if e.epoch <= epochs]
            result = store.result() or {}
            device = device_short(device_name(result.get("env") or {}))
            config = {k: v for k, v in cell.describe().items() if k not in ("id", "seed")}
            grouped.setdefault((json.dumps(config, sort_keys=True, default=str), device), []).append(
                (cell, records, result))
        step = accuracy_step(r["val_acc"] for runs in grouped.values() for _, records, _ in runs for r in records)
        racers = []
        for (_, device), runs in grouped.items():
            cell = runs[0][0]
            best = [max((r["val_acc"] for r in records if math.isfinite(r["val_acc"])), default=math.nan)
                    for _, records, _ in runs]
            counted = [r.get("val_images", math.nan) for _, records, _ in runs for r in records[-1:]]
            val_images = int(min(counted)) if counted and all(math.isfinite(v) and v > 0 for v in counted) else (
                images(step))
            accuracy, low, high = self.accuracy(best, val_images)
            warnings = [w for _, _, result in runs for w in (result.get("summary") or {}).get("warnings", [])
                        if isinstance(w, dict)]
            unpickable = next((f"failed a sanity check ({w['code']}): {w['message']}" for w in warnings
                               if w.get("disqualifies")), None) or next(
                (f"emulated precision ({w['message']})" for w in warnings if w.get("code") == "emulated-precision"),
                None)
            racers.append(Racer(
                label(cell.describe() | {"recipe": cell.recipe_name, "environment": cell.environment.get("name")
                                         or "default"}),
                (cell.suite, device, cell.model), [c for c, _, _ in runs],
                [r["throughput_img_s"] for _, records, _ in runs for r in timed_epochs(records)
                 if math.isfinite(r["throughput_img_s"]) and r["throughput_img_s"] > 0],
                accuracy, low, high, unpickable, any(c.id in kept for c, _, _ in runs)))
        return racers

    @staticmethod
    def accuracy(best: list[float], val_images: int | None) -> tuple[float, float, float]:
        """The mean best accuracy over repeats and its interval (:func:`harness.report.stats.accuracy_interval`)."""
        from harness.report.aggregate import interval
        from harness.report.stats import accuracy_interval

        mean, low, high = interval(best)
        if not math.isfinite(mean):
            return math.nan, math.nan, math.nan
        return (mean, *accuracy_interval(mean, low, high, len(best), val_images))

    def race_block(self, cell: CellSpec, stopped_at: int | None, evidence: Evidence | None,
                   kept: set[str]) -> dict[str, Any]:
        return {"rungs": [min(r, cell.epochs) for r in self.schedule], "first": self.settings.first,
                "factor": self.settings.factor, "margin": self.settings.margin, "stopped_at": stopped_at,
                "kept": cell.id in kept, **({"evidence": evidence.as_json()} if evidence else {})}

    def annotate(self, cell: CellSpec, kept: set[str]) -> None:
        """Add the race to a cell's result that does not say it yet (a survivor's, a failure's)."""
        store = CellStore(self.runner.out, cell.id)
        result = store.result()
        if result and "race" not in result and result["status"] != "skipped":
            result["race"] = self.race_block(cell, None, None, kept)
            write_json(store.result_path, result)
