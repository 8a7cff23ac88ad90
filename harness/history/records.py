"""The results history: each finished run filed under the commit it measured, append-only.

Layout of a history folder (one new file per recording, never rewritten: a CI job can keep it in a
git branch or an artifact store and two jobs' additions never conflict)::

    DIR/records/MACHINE/COMMIT/STAMP-PID.json   the record: commit, date, machine, environment, samples
    DIR/runs/MACHINE/COMMIT/STAMP-PID/...       a copy of the run's report (report.html or the benchmark JSON)
    DIR/.lock                                   held (filelock) while a record is written

A record holds every raw sample of every series of the run (``harness.compare``'s reading of a harness
output directory or a pytest-benchmark JSON file). Files are written atomically (temporary file,
fsync, rename: :func:`harness.store.write_json`), the record last, so a crash leaves either the whole
record or none of it, and the records already there are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness import compare, store
from harness.compare import CompareError, Side

SCHEMA_VERSION = 1
#: Fingerprint keys that name the machine: compare's, less the host name (a fresh CI runner of the same kind).
MACHINE_KEYS = sorted(compare.MACHINE_KEYS - {"hostname", "node"})
LOCK_TIMEOUT_S = 600


class HistoryError(CompareError):
    """Bad input to a history command (a missing run, an unknown commit, a corrupt record); exit status 2."""


@dataclass(frozen=True)
class Point:
    """One series of one record: the samples a run gave for a (machine, configuration, metric) at a commit."""

    machine: str
    key: str  # the series key: "<cell_id>/<metric>" or a benchmark fullname (plus "/<metric>")
    metric: str
    higher_is_better: bool
    commit: str
    commit_date: str
    commit_depth: int  # commits reachable from it (itself included): orders a branch's commits
    subject: str
    samples: tuple[float, ...]
    report: str | None  # a path inside the history folder or a URL


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode:
        raise HistoryError(f"git {' '.join(args)} in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def commit_info(repo: Path, revision: str) -> dict[str, Any]:
    """The full id, committer date (ISO 8601), subject and ancestor count (the order of commits) of a revision."""
    try:
        sha, date, subject = git(repo, "show", "-s", "--format=%H%n%cI%n%s", f"{revision}^{{commit}}").split("\n", 2)
    except (HistoryError, ValueError):
        raise HistoryError(f"{revision!r} is not a commit of the git repository {repo}") from None
    return {"commit": sha, "commit_date": date, "subject": subject,
            "commit_depth": int(git(repo, "rev-list", "--count", sha))}


def measured_commit(run: Path) -> str | None:
    """The commit a pytest-benchmark file says it measured (its ``commit_info.id``), if any."""
    if run.is_file():
        try:
            info = json.loads(run.read_text()).get("commit_info") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return info.get("id") if isinstance(info.get("id"), str) and not info.get("dirty") else None
    return None


def environment(side: Side) -> dict[str, Any]:
    """The run's environment fingerprint, flattened: one value per key, or the sorted list of those seen."""
    values = {key: [json.loads(v) for v in sorted(raw)] for key, raw in sorted(side.env.items())}
    return {key: seen[0] if len(seen) == 1 else seen for key, seen in values.items()}


def machine_of(env: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A short machine id (hash of :data:`MACHINE_KEYS`) and those fingerprint fields."""
    info = {key: env[key] for key in MACHINE_KEYS if key in env}
    digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"m-{digest}", info


def record(history: Path, run: Path, repo: Path = Path("."), revision: str | None = None,
           machine: str | None = None, report: str | None = None) -> Path:
    """File one finished run (a harness output directory or a pytest-benchmark JSON) under its commit.

    The commit is ``revision``, else the one a benchmark file names, else ``HEAD`` of ``repo``. Returns the
    record's path.
    """
    side = compare.load_side(run)
    if not side.series:
        raise HistoryError(f"{run}: no samples to record (every cell skipped or failed)")
    commit = commit_info(repo, revision or measured_commit(run) or "HEAD")
    env = environment(side)
    machine_id, machine_info = machine_of(env)
    machine_id = machine or machine_id
    if not machine_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise HistoryError(f"--machine {machine_id!r}: use letters, digits, '-', '_' and '.' only")
    history.mkdir(parents=True, exist_ok=True)
    with FileLock(str(history / ".lock"), timeout=LOCK_TIMEOUT_S):
        where = Path(machine_id) / commit["commit"]
        taken = {p.stem for p in (history / "records" / where).glob("*.json")}
        name = next(n for n in (f"{store.timestamp()}-{os.getpid()}-{i}" for i in range(len(taken) + 1))
                    if n not in taken)  # a new file per record: one never replaces another
        path = history / "records" / where / f"{name}.json"
        copied = copy_report(run, history / "runs" / where / name) if report is None else report
        store.write_json(path, {
            "schema_version": SCHEMA_VERSION, **commit, "machine": machine_id, "machine_info": machine_info,
            "environment": env, "recorded_at": store.now(), "source": str(run.resolve()), "kind": side.kind,
            "report": copied, "absent": side.absent,
            "series": [{"key": s.key, "id": s.id, "metric": s.metric, "higher_is_better": s.higher_is_better,
                        "samples": s.samples} for s in side.series.values()],
        })
    return path


def copy_report(run: Path, folder: Path) -> str | None:
    """Copy the run's report (``report.html`` of a harness run, or the benchmark JSON itself) into ``folder``;
    its path relative to the history folder (``runs/...``)."""
    source = run if run.is_file() else run / "report.html"
    if not source.is_file():
        return None
    target = folder / source.name
    store.write_bytes(target, source.read_bytes())
    return target.relative_to(folder.parents[3]).as_posix()


def record_files(history: Path) -> Iterator[Path]:
    """Every finished record (temporary files of an interrupted write start with a dot and are passed over)."""
    folder = history / "records"
    if not folder.is_dir():
        raise HistoryError(f"{history}: not a results history (no records/ folder); "
                           "file runs into it with harness history record")
    yield from sorted(p for p in folder.glob("*/*/*.json") if not p.name.startswith("."))


def load(history: Path) -> list[Point]:
    """Every series of every record, as points; a corrupt or newer record is an error naming the file."""
    points = []
    for path in record_files(history):
        try:
            data = json.loads(path.read_text())
            if data.get("schema_version", 0) > SCHEMA_VERSION:
                raise HistoryError(f"{path}: schema_version {data['schema_version']} is newer than this harness "
                                   f"reads ({SCHEMA_VERSION}); upgrade harness")
            for s in data["series"]:
                points.append(Point(data["machine"], s["key"], s["metric"], bool(s["higher_is_better"]),
                                    data["commit"], data["commit_date"], int(data["commit_depth"]),
                                    data.get("subject", ""),
                                    tuple(float(v) for v in s["samples"]), data.get("report")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise HistoryError(f"{path}: not a readable history record ({type(exc).__name__}: {exc})") from None
    return points

