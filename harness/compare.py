"""``harness compare BASELINE CANDIDATE``: a noise-aware performance-regression gate.

Each side is a harness output directory (``OUT/cells/<cell_id>/epochs.jsonl``, schema
version 1) or a pytest-benchmark JSON file (``--benchmark-json``, or ``--benchmark-save``
with ``--benchmark-save-data``). Measurements are paired by id; a pair's verdict uses its
raw samples (per-epoch values, per-round times) and needs BOTH a significant difference
(two-sided Mann-Whitney U, ``p < alpha``) AND an effect of at least the threshold on the
ratio of medians. Paired harness cells must have equal settings (:data:`SETTINGS`), else the
comparison is refused naming the fields (``--allow-different FIELD`` to compare them on purpose).
Exit status: 0 nothing regressed, 1 a regression, 2 a usage error (settings that differ included).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from harness import results
from harness.exitcode import ExitCode, unforeseen_input
from harness.store import spec_changes

logger = logging.getLogger(__name__)

#: Harness per-epoch metrics compared by default, with their good direction.
HARNESS_METRICS: dict[str, bool] = {"throughput_img_s": True, "epoch_time_s": False}
#: The metric name given to pytest-benchmark's per-round times.
BENCH_METRIC = "time_s"
#: Environment keys that are expected to differ between a baseline and a candidate.
ENV_IGNORED = frozenset({"git_commit", "harness", "cpu.hz_actual", "cpu.hz_actual_friendly"})
#: pytest-benchmark's ``machine_info`` keys (flattened) read under the fingerprint's names.
BENCH_MACHINE_NAMES = {"node": "hostname", "cpu.brand_raw": results.CPU_MODEL, "cpu.count": "cpu_count",
                       "cpu.arch": "machine"}
#: Keys that say which machine ran (a difference there means "different machines").
MACHINE_KEYS = frozenset({"hostname", results.CPU_MODEL, "cpu_count", "memory_gb", "device_name", "device_type",
                          "device_count", "device_capability", "processor", "machine"})
#: Cell settings that make two cells different experiments; paired cells must agree on them (``--allow-different``).
SETTINGS = ("suite", "image_size", "recipe", "epochs", "subset", "data", "data_fingerprint")
VERDICTS = ("regressed", "improved", "unchanged", "new", "missing")
Value = TypeVar("Value")


class CompareError(ValueError):
    """An input cannot be compared; the message names the file or option."""


@dataclass
class Series:
    """The raw samples of one measurement on one side."""

    key: str  # what pairs a baseline with a candidate: "<cell_id>/<metric>" or a benchmark fullname
    id: str  # cell id or benchmark fullname
    metric: str
    samples: list[float]
    higher_is_better: bool
    note: str = ""


@dataclass
class Side:
    """Everything read from one side of the comparison."""

    path: Path
    kind: str  # "harness" or "pytest-benchmark"
    series: dict[str, Series]
    env: dict[str, set[str]] = field(default_factory=dict)  # flattened fingerprint key -> values seen
    absent: dict[str, str] = field(default_factory=dict)  # id -> why it has no samples (skipped/failed)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> its cell.json (harness inputs)


@dataclass(frozen=True)
class Options:
    """How pairs are judged."""

    threshold: float = 0.10
    alpha: float = 0.05
    thresholds_for: tuple[tuple[str, float], ...] = ()
    directions: tuple[tuple[str, bool], ...] = ()  # (pattern, higher_is_better); last match wins
    metrics: tuple[str, ...] = tuple(HARNESS_METRICS)
    keep_warmup: bool = False
    select: tuple[str, ...] = ()  # glob patterns; empty: compare everything
    allow_different: tuple[str, ...] = ()  # SETTINGS (or ``recipe.FIELD``) paired cells may differ in


# ---------------------------------------------------------------- reading inputs


def load_side(path: Path | str, options: Options = Options()) -> Side:
    """Read a harness output directory or a pytest-benchmark JSON file."""
    path = Path(path)
    if path.is_dir():
        return _load_harness(path, options)
    if path.is_file():
        return _load_benchmark_json(path)
    raise CompareError(f"{path}: no such file or directory")


def _load_harness(path: Path, options: Options) -> Side:
    """Every cell under ``path`` (the directory trees ``harness report`` reads); cells of one id are pooled."""
    try:
        cell_dirs = results.find_cells(path)
    except results.StoreError as exc:
        raise CompareError(f"{exc}; not a harness result directory nor a pytest-benchmark JSON file") from None
    side = Side(path, "harness", {})
    for cell_dir in cell_dirs:
        _load_cell(results.read_cell(cell_dir), side, options)
    return side


def _load_cell(cell: results.Cell, side: Side, options: Options) -> None:
    """Stream one cell's epochs (linear time, the last record of each epoch kept) into ``side``'s series."""
    side.settings.setdefault(cell.cell_id, cell.spec)
    by_epoch: dict[int, list[float]] = {}
    in_process: dict[int, float] = {}
    last_env: dict[str, Any] | None = None
    for record in cell.epochs():
        by_epoch[record.epoch] = [record.metrics.get(m, record.extra.get(m, math.nan)) for m in options.metrics]
        in_process[record.epoch] = record.metrics.get("epoch_in_process", math.nan)
        if record.env is not None and record.env != last_env:
            _add_env(side.env, record.env)
            last_env = record.env
    if cell.status in ("skipped", "failed") or not by_epoch:
        side.absent[cell.cell_id] = f"{cell.status}{': ' + cell.reason if cell.reason else ''}"
        return
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    timed = rows if options.keep_warmup else results.timed_epochs(rows, [in_process[e] for e in sorted(by_epoch)])
    for i, metric in enumerate(options.metrics):
        values = [row[i] for row in timed if math.isfinite(row[i])]
        if len(values) < len(timed):
            results.warn(f"{cell.epochs_path}: field {metric!r} missing or not a finite number in "
                         f"{len(timed) - len(values)} of {len(timed)} epoch(s); those samples skipped")
        if not values:
            continue
        key = f"{cell.cell_id}/{metric}"
        if key in side.series:  # the same cell again (another directory of the tree): pooled as repeats
            side.series[key].samples.extend(values)
            continue
        default = HARNESS_METRICS.get(metric, _guess_higher_is_better(metric))
        side.series[key] = Series(key, cell.cell_id, metric, values, default)


def setting_differences(baseline: Side, candidate: Side) -> dict[str, list[str]]:
    """Cell id -> ``"field old -> new"`` for each of :data:`SETTINGS` that differs between its two sides' cells
    (a field one side does not record, written by an older harness, is not compared)."""
    out = {}
    for cell_id in baseline.settings.keys() & candidate.settings.keys():
        base, cand = baseline.settings[cell_id], candidate.settings[cell_id]
        keys = tuple(k for k in SETTINGS if k in base and k in cand)
        changes = spec_changes(base, cand, keys)
        if changes:
            out[cell_id] = changes
    return out


def check_settings(baseline: Side, candidate: Side, options: Options) -> dict[str, str]:
    """Refuse (:class:`CompareError`) paired cells whose settings differ outside ``--allow-different``; return the
    allowed differences per cell id (for the rows' notes)."""
    refused: dict[str, list[str]] = {}
    allowed = {}
    for cell_id, changes in sorted(setting_differences(baseline, candidate).items()):
        names = [change.split(" ", 1)[0] for change in changes]
        bad = [c for c, n in zip(changes, names, strict=True)
               if not any(n == a or n.startswith(a + ".") for a in options.allow_different)]
        if bad:
            refused[cell_id] = bad
        else:
            allowed[cell_id] = "settings differ (allowed): " + ", ".join(changes)
    if refused:
        listed = [f"{cell_id}: {', '.join(bad)}" for cell_id, bad in refused.items()]
        more = f"; and {len(listed) - 5} more cell(s)" if len(listed) > 5 else ""
        fields = sorted({c.split(" ", 1)[0] for bad in refused.values() for c in bad})
        raise CompareError(f"paired cells differ in settings, so their timings are not comparable: "
                           f"{'; '.join(listed[:5])}{more} (to compare them anyway: "
                           f"{' '.join(f'--allow-different {f}' for f in fields)})")
    return allowed


def _load_benchmark_json(path: Path) -> Side:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise CompareError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    side = Side(path, "pytest-benchmark", {})
    _add_env(side.env, data.get("machine_info") or {}, names=BENCH_MACHINE_NAMES)
    for i, bench in enumerate(data["benchmarks"]):
        for series in _benchmark_series(path, i, bench):
            side.series[series.key] = series
        _add_env(side.env, (bench.get("extra_info") or {}).get("env") or {})
    return side


def _benchmark_series(path: Path, index: int, bench: Any) -> list[Series]:
    """The per-round times (key: the fullname) plus any ``extra_info["samples"]`` series (key: fullname/metric).

    ``extra_info["higher_is_better"]`` is a bool for the times or a ``{metric: bool}`` mapping.
    """
    where = f"{path}: benchmarks[{index}]"
    if not isinstance(bench, dict) or not isinstance(bench.get("fullname"), str):
        raise CompareError(f"{where}: missing 'fullname'")
    name, extra = bench["fullname"], bench.get("extra_info") or {}
    where = f"{where} ({name})"
    data = (bench.get("stats") or {}).get("data")
    if not data:
        raise CompareError(
            f"{where}: no raw timings in stats.data; write the file with --benchmark-json, "
            "or --benchmark-save together with --benchmark-save-data"
        )
    higher = extra.get("higher_is_better", False)
    directions = higher if isinstance(higher, Mapping) else {BENCH_METRIC: bool(higher)}
    series = [
        Series(
            name, name, BENCH_METRIC, _numbers(data, f"{where}: stats.data"), bool(directions.get(BENCH_METRIC, False))
        )
    ]
    samples = extra.get("samples") or {}
    if not isinstance(samples, Mapping):
        raise CompareError(f"{where}: extra_info.samples must map a metric name to a list of numbers")
    for metric, values in samples.items():
        values = _numbers(values, f"{where}: extra_info.samples.{metric}")
        higher_metric = bool(directions.get(metric, _guess_higher_is_better(metric)))
        series.append(Series(f"{name}/{metric}", name, metric, values, higher_metric))
    return series


def _numbers(values: Any, where: str) -> list[float]:
    """The finite numbers of a non-empty list; NaN and inf are dropped with a warning (read as missing)."""
    if not isinstance(values, list) or not values:
        raise CompareError(f"{where}: expected a non-empty list of numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise CompareError(f"{where}: holds something other than numbers")
    finite = [float(v) for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        results.warn(f"{where}: {len(values) - len(finite)} of {len(values)} values not finite; those samples skipped")
    if not finite:
        raise CompareError(f"{where}: no finite numbers")
    return finite


def _add_env(env: dict[str, set[str]], fingerprint: Mapping[str, Any], prefix: str = "",
             names: Mapping[str, str] | None = None) -> None:
    for key, value in fingerprint.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _add_env(env, value, f"{name}.", names)
        elif name not in ENV_IGNORED:
            name = (names or {}).get(name, name)
            env.setdefault(name, set()).add(json.dumps(value, sort_keys=True, default=str))


def _guess_higher_is_better(metric: str) -> bool:
    """Throughputs and accuracies go up when things improve; times, losses and memory go down."""
    return "throughput" in metric or metric == "ops" or metric.endswith(("_per_s", "img_s", "_acc"))


# ---------------------------------------------------------------- judging pairs


@dataclass
class Row:
    """One line of the comparison table."""

    key: str
    metric: str
    direction: str  # "higher" or "lower" is better
    n_base: int
    n_cand: int
    base_median: float
    cand_median: float
    ratio: float  # candidate median / baseline median
    p_value: float
    threshold: float
    verdict: str
    note: str = ""

    @property
    def badness(self) -> float:
        """Ratio oriented so that above 1 is worse: the table's sort key."""
        if math.isnan(self.ratio):
            return -math.inf
        if self.direction == "higher":
            return 1 / self.ratio if self.ratio else math.inf
        return self.ratio


def parse_fraction(text: str, option: str = "--threshold") -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise CompareError(f"{option} {text!r}: expected a percentage such as 10% or a fraction such as 0.1") from None
    if not raw.endswith("%") and value >= 1:
        raise CompareError(f"{option} {text!r}: ambiguous; write {raw}% or {value / 100:g}")
    if not 0 <= value < 10:
        raise CompareError(f"{option} {text!r}: must be between 0% and 1000%")
    return value


def min_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided exact Mann-Whitney U p-value samples of these sizes can reach."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return min(1.0, 2 / math.comb(n1 + n2, n1))


def judge(base: Series | None, cand: Series | None, options: Options) -> Row:
    """The verdict for one pair (either side may be absent)."""
    ref = cand or base
    assert ref is not None
    higher = _last_match(ref, options.directions, ref.higher_is_better)
    threshold = _last_match(ref, options.thresholds_for, options.threshold)
    direction = "higher" if higher else "lower"
    if base is None or cand is None:
        present = ref.samples
        median = statistics.median(present)
        verdict = "new" if base is None else "missing"
        return Row(
            ref.key,
            ref.metric,
            direction,
            len(base.samples) if base else 0,
            len(cand.samples) if cand else 0,
            median if base else math.nan,
            median if cand else math.nan,
            math.nan,
            math.nan,
            threshold,
            verdict,
            ref.note,
        )
    from scipy.stats import mannwhitneyu

    b_med, c_med = statistics.median(base.samples), statistics.median(cand.samples)
    ratio = c_med / b_med if b_med and math.isfinite(b_med) and math.isfinite(c_med) else math.nan
    n1, n2 = len(base.samples), len(cand.samples)
    p = float(mannwhitneyu(base.samples, cand.samples, alternative="two-sided").pvalue)
    if math.isnan(p):  # all samples identical
        p = 1.0
    verdict, note = _verdict(ratio, p, higher, threshold, options.alpha, min_p_value(n1, n2))
    return Row(ref.key, ref.metric, direction, n1, n2, b_med, c_med, ratio, p, threshold, verdict, note)


def _verdict(ratio: float, p: float, higher: bool, threshold: float, alpha: float, best_p: float) -> tuple[str, str]:
    if not math.isfinite(ratio):
        return "unchanged", "no ratio: a median is 0 or out of range"
    if best_p >= alpha:
        return "unchanged", f"too few samples (p can never be < {alpha:g})"
    big, significant = abs(ratio - 1) >= threshold, p < alpha
    if big and significant:
        return ("improved" if (ratio > 1) == higher else "regressed"), ""
    if big:
        return "unchanged", "not significant (noise)"
    return "unchanged", "significant but below threshold" if significant else ""


def _last_match(series: Series, rules: Sequence[tuple[str, Value]], default: Value) -> Value:
    """The value of the last ``(pattern, value)`` rule whose pattern matches ``series``, else ``default``."""
    return next((value for pattern, value in reversed(rules) if _matches(pattern, series)), default)


def _matches(pattern: str, series: Series) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in (series.key, series.id, series.metric))


def compare_sides(baseline: Side, candidate: Side, options: Options) -> list[Row]:
    """Judge every pair; rows sorted worst first (by the oriented ratio), then new and missing."""
    keys = [
        k for k in dict.fromkeys([*baseline.series, *candidate.series]) if _selected(k, baseline, candidate, options)
    ]
    allowed = check_settings(baseline, candidate, options)
    rows = [judge(baseline.series.get(k), candidate.series.get(k), options) for k in keys]
    for row in rows:
        cell = row.key.rsplit("/", 1)[0] if baseline.kind == "harness" else row.key
        if row.verdict == "missing" and cell in candidate.absent:
            row.note = f"candidate: {candidate.absent[cell]}"
        elif row.verdict == "new" and cell in baseline.absent:
            row.note = f"baseline: {baseline.absent[cell]}"
        elif cell in allowed:
            row.note = "; ".join(filter(None, [row.note, allowed[cell]]))
    order = {v: i for i, v in enumerate(VERDICTS)}
    return sorted(rows, key=lambda r: (r.verdict in ("new", "missing"), -r.badness, order[r.verdict], r.key))


def _selected(key: str, baseline: Side, candidate: Side, options: Options) -> bool:
    series = baseline.series.get(key) or candidate.series[key]
    return not options.select or any(_matches(p, series) for p in options.select)


def env_differences(baseline: Side, candidate: Side) -> list[tuple[str, str, str]]:
    """``(key, baseline value, candidate value)`` for fingerprint keys that differ."""
    diffs = []
    for key in sorted(set(baseline.env) | set(candidate.env)):
        b, c = baseline.env.get(key, set()), candidate.env.get(key, set())
        if b != c:
            diffs.append((key, _show(b), _show(c)))
    return diffs


def _show(values: set[str]) -> str:
    return ", ".join(sorted(str(json.loads(v)) for v in values)) or "(absent)"


# ---------------------------------------------------------------- output


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    import pandas as pd

    if not rows:
        return "(nothing to compare)"
    frame = pd.DataFrame(
        {
            "benchmark": [r.key for r in rows],
            "better": [r.direction for r in rows],
            "n": [f"{r.n_base}/{r.n_cand}" for r in rows],
            "baseline": [_num(r.base_median) for r in rows],
            "candidate": [_num(r.cand_median) for r in rows],
            "ratio": ["" if math.isnan(r.ratio) else f"{r.ratio:.3f}" if r.ratio < 1000 else f"{r.ratio:.3g}"
                      for r in rows],
            "change": [_change(r) for r in rows],
            "p": ["" if math.isnan(r.p_value) else f"{r.p_value:.3g}" for r in rows],
            "threshold": [f"{r.threshold:.0%}" for r in rows],
            "verdict": [r.verdict for r in rows],
            "note": [r.note for r in rows],
        }
    )
    left = {c: _left(frame[c]) for c in ("benchmark", "verdict", "note")}
    return frame.to_string(index=False, justify="left", formatters=left)


def _left(column: Any) -> Any:
    width = max(len(str(v)) for v in column)
    return lambda value: f"{value:<{width}}"


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4g}" if math.isfinite(value) else "overflow"


def _change(row: Row) -> str:
    if math.isnan(row.ratio):
        return ""
    return f"{row.ratio - 1:+.1%}" if row.ratio < 100 else f"x{row.ratio:.3g}"


def summary(rows: Iterable[Row]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for row in rows:
        counts[row.verdict] += 1
    return counts


def to_json(rows: Sequence[Row], baseline: Side, candidate: Side, options: Options) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if math.isnan(value) or math.isinf(value) else value

    return {
        "baseline": str(baseline.path),
        "candidate": str(candidate.path),
        "alpha": options.alpha,
        "threshold": options.threshold,
        "summary": summary(rows),
        "env_differences": [
            {"key": k, "baseline": b, "candidate": c} for k, b, c in env_differences(baseline, candidate)
        ],
        "rows": [
            {
                "key": r.key,
                "metric": r.metric,
                "better": r.direction,
                "n_baseline": r.n_base,
                "n_candidate": r.n_cand,
                "baseline_median": clean(r.base_median),
                "candidate_median": clean(r.cand_median),
                "ratio": clean(r.ratio),
                "p_value": clean(r.p_value),
                "threshold": r.threshold,
                "verdict": r.verdict,
                "note": r.note,
            }
            for r in rows
        ],
    }


# ---------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``harness compare``'s arguments."""
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument("baseline", type=Path, help="harness output directory or pytest-benchmark JSON file")
    parser.add_argument("candidate", type=Path, help="same kind as BASELINE")
    parser.add_argument(
        "--threshold", default="10%", help="minimum change of the median to call a difference (default 10%%)"
    )
    parser.add_argument(
        "--threshold-for",
        action="append",
        default=[],
        metavar="PATTERN=PCT",
        help="threshold for benchmarks whose id, key or metric matches the glob PATTERN (repeatable; "
        "last match wins), e.g. 'test_loader*=20%%'",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="significance level of the Mann-Whitney U test (default 0.05)"
    )
    parser.add_argument(
        "--higher-is-better",
        action="append",
        dest="directions",
        type=lambda p: (p, True),
        metavar="PATTERN",
        help="treat matching metrics/benchmarks as higher-is-better (repeatable; "
        "with --lower-is-better the last match wins)",
    )
    parser.add_argument(
        "--lower-is-better",
        action="append",
        dest="directions",
        type=lambda p: (p, False),
        metavar="PATTERN",
        help="treat matching metrics/benchmarks as lower-is-better (repeatable)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="FIELD",
        help="epochs.jsonl field to compare for harness directories (repeatable; default "
        f"{' and '.join(HARNESS_METRICS)})",
    )
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="PATTERN",
        help="compare only benchmarks whose key, id or metric matches the glob PATTERN (repeatable)",
    )
    parser.add_argument(
        "--keep-warmup", action="store_true", help="keep epoch 1 (dropped by default when there are more)"
    )
    parser.add_argument(
        "--allow-different",
        action="append",
        default=[],
        metavar="FIELD",
        help=f"compare paired cells that differ in this setting (repeatable; one of {', '.join(SETTINGS)}, or "
        "recipe.NAME such as recipe.batch_size); without it such a comparison is refused (exit 2)",
    )
    parser.add_argument(
        "--fail-on-missing", action="store_true", help="exit 1 also when a baseline benchmark is missing"
    )
    parser.add_argument("--json", action="store_true",
                        help="print the comparison as JSON on stdout (the table and summary then go to stderr)")
    parser.add_argument(  # calibration: the last section of this module
        "--reference",
        metavar="NAME",
        help="pytest-benchmark files: gate on each time divided by this benchmark's median time in the same file",
    )


def options_from(args: argparse.Namespace) -> Options:
    """Validated :class:`Options` from parsed arguments."""
    thresholds = []
    for item in args.threshold_for:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern:
            raise CompareError(f"--threshold-for {item!r}: expected PATTERN=PERCENT, e.g. 'test_loader*=20%'")
        thresholds.append((pattern, parse_fraction(value, "--threshold-for")))
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha {args.alpha}: must be between 0 and 1")
    for name in args.allow_different:
        if name.split(".", 1)[0] not in SETTINGS or (name.count(".") and not name.startswith("recipe.")):
            raise CompareError(f"--allow-different {name!r}: not a compared setting (one of {', '.join(SETTINGS)}, "
                               "or recipe.NAME)")
    return Options(
        threshold=parse_fraction(args.threshold),
        alpha=args.alpha,
        thresholds_for=tuple(thresholds),
        directions=tuple(args.directions or ()),
        metrics=tuple(args.metric or HARNESS_METRICS),
        keep_warmup=args.keep_warmup,
        select=tuple(args.select),
        allow_different=tuple(args.allow_different),
    )


def command(args: argparse.Namespace) -> int:
    """Run the comparison; 0 nothing regressed, 1 regressed, 2 usage error (a one-line message, never a traceback)."""
    try:
        return _command(args)
    except Exception as exc:  # any input this module does not foresee is still an input error, not a crash
        return unforeseen_input("harness compare", exc, args)


def _command(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        baseline, candidate = load_side(args.baseline, options), load_side(args.candidate, options)
        for side in (baseline, candidate):
            logger.debug("%s: %s, %d series", side.path, side.kind, len(side.series))
        if baseline.kind != candidate.kind:
            raise CompareError(
                f"cannot compare a {baseline.kind} input ({baseline.path}) with a "
                f"{candidate.kind} input ({candidate.path})"
            )
        if getattr(args, "reference", None):  # calibration (harness ab measures the reference)
            baseline, candidate = calibrate_pair(baseline, candidate, args.reference)
        rows = compare_sides(baseline, candidate, options)
    except (CompareError, results.StoreError, OSError, UnicodeError) as exc:
        print(f"harness compare: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    _warn_env(baseline, candidate)
    counts = summary(rows)
    human = sys.stderr if args.json else sys.stdout  # --json: the JSON alone on stdout
    print(table(rows), file=human)
    print(
        "\n"
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + f" (threshold {options.threshold:.0%}, alpha {options.alpha:g}, Mann-Whitney U on raw samples)",
        file=human,
    )
    if args.json:
        print(json.dumps(to_json(rows, baseline, candidate, options), indent=2))
    failed = counts["regressed"] or (args.fail_on_missing and counts["missing"])
    return ExitCode.FAILED if failed else ExitCode.OK


def _warn_env(baseline: Side, candidate: Side) -> None:
    diffs = env_differences(baseline, candidate)
    if not diffs:
        return
    machine = [d for d in diffs if d[0] in MACHINE_KEYS or d[0].split(".")[0] in ("cpu",)]
    what = "different machines" if machine else "different environments"
    logger.warning("baseline and candidate ran on %s; timings may not be comparable:", what)
    for key, b, c in diffs:
        logger.warning("  %s: %s -> %s", key, b, c)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.compare``: the same as ``harness compare``."""
    from harness.cli import configure_logging

    parser = argparse.ArgumentParser(prog="harness compare")
    configure(parser)
    configure_logging(0)
    results.show_warnings_briefly()
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- calibration (--reference; harness ab)

#: The metric of a calibrated time series: seconds per round / the reference's median seconds per round.
CALIBRATED = "time_vs_reference"


def find_reference(side: Side, name: str) -> Series:
    """The one per-round time series named ``name``: a fullname, a test name (``test_x[param]``) or a glob."""
    found = [s for s in side.series.values() if s.metric == BENCH_METRIC and is_named(s.key, name)]
    if len(found) != 1:
        names = ", ".join(s.key for s in (found or side.series.values()) if s.metric == BENCH_METRIC)
        what = "matches several benchmarks" if found else "names no benchmark"
        raise CompareError(f"{side.path}: --reference {name!r} {what} (benchmarks: {names or 'none'})")
    if statistics.median(found[0].samples) <= 0:
        raise CompareError(f"{side.path}: --reference {name!r}: its median time is not positive")
    return found[0]


def is_named(key: str, name: str) -> bool:
    """Whether ``name`` is the benchmark ``key`` (a fullname), its test name, or a glob matching it."""
    return key == name or key.endswith(f"::{name}") or fnmatch.fnmatchcase(key, name)


def calibrate(side: Side, name: str) -> Side:
    """``side`` (one run) with each per-round time divided by the reference's median time in that run.

    The series are renamed ``FULLNAME/time_vs_reference``; a benchmark that has its own ``time_vs_reference``
    series keeps that one instead. The reference and other series (``extra_info["samples"]``) are kept as they
    are, the reference under its own key, so that :func:`drop_reference` can take it out of the verdicts.
    """
    reference = find_reference(side, name)
    scale = statistics.median(reference.samples)
    series: dict[str, Series] = {}
    for key, s in side.series.items():
        if s is reference or s.metric != BENCH_METRIC:
            series[key] = s
        elif f"{key}/{CALIBRATED}" not in side.series:
            new_key = f"{key}/{CALIBRATED}"
            series[new_key] = replace(s, key=new_key, metric=CALIBRATED, samples=[v / scale for v in s.samples])
    return replace(side, series=series)


def drop_reference(side: Side, name: str) -> tuple[Side, Series]:
    """``side`` without the reference series, and that series."""
    reference = find_reference(side, name)
    return replace(side, series={k: s for k, s in side.series.items() if s is not reference}), reference


def calibrate_pair(baseline: Side, candidate: Side, name: str) -> tuple[Side, Side]:
    """``harness compare --reference NAME``: both sides calibrated; how far the reference moved is printed (stderr)."""
    if baseline.kind != "pytest-benchmark":
        raise CompareError(f"--reference: calibration is for pytest-benchmark files, not {baseline.path}")
    (baseline, b_ref), (candidate, c_ref) = (drop_reference(calibrate(s, name), name) for s in (baseline, candidate))
    logger.info("%s; calibrated: per-round times / its median in the same file", shift(b_ref, c_ref))
    return baseline, candidate


def shift(base: Series, cand: Series) -> str:
    """``reference KEY: median 2.1 ms -> 2.9 ms (+38.1 %)``: the machine speed difference between two sides."""
    b, c = statistics.median(base.samples), statistics.median(cand.samples)
    return f"reference {base.key}: median {b * 1e3:.4g} ms -> {c * 1e3:.4g} ms ({c / b - 1:+.1%})"
