"""The result store: one directory per cell, written as results happen.

Layout (schema version 1, documented in docs/results.md)::

    OUT/cells/<cell_id>/cell.json      the cell's parameters
    OUT/cells/<cell_id>/epochs.jsonl   one JSON object per completed epoch, flushed at once
    OUT/cells/<cell_id>/result.json    status (ok / skipped / failed), reason and summary
    OUT/cells/<cell_id>/checkpoint.pt  the last epoch's training state (for --resume)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.api import CellSpec, EpochRecord

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "failed")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` atomically: a temporary file, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSON Lines file; a torn last line (a killed writer) is ignored."""
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


class CellStore:
    """Reads and writes one cell's directory."""

    def __init__(self, out: Path, cell_id: str) -> None:
        self.dir = Path(out) / "cells" / cell_id
        self.epochs_path = self.dir / "epochs.jsonl"
        self.result_path = self.dir / "result.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"

    def write_cell(self, cell: CellSpec) -> None:
        write_json(self.dir / "cell.json", cell.describe())

    def append_epoch(self, cell: CellSpec, env: dict[str, Any], record: EpochRecord) -> None:
        line = {"schema_version": SCHEMA_VERSION, "cell_id": cell.id, "cell": cell.describe(), "env": env,
                **asdict(record)}
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.epochs_path.open("a") as fh:
            fh.write(json.dumps(line, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def epochs(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.epochs_path))

    def truncate_epochs(self, keep: int) -> None:
        """Keep the first ``keep`` epochs (a resumed cell rewrites what its checkpoint lacks)."""
        if not self.epochs_path.exists():
            return
        kept = [e for e in self.epochs() if e["epoch"] <= keep]
        tmp = self.epochs_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in kept))
        tmp.replace(self.epochs_path)

    def write_result(self, cell: CellSpec, env: dict[str, Any], status: str, reason: str | None = None,
                     summary: dict[str, Any] | None = None, started_at: str | None = None) -> None:
        assert status in STATUSES
        write_json(self.result_path, {
            "schema_version": SCHEMA_VERSION,
            "cell_id": cell.id,
            "cell": cell.describe(),
            "env": env,
            "status": status,
            "reason": reason,
            "summary": summary or {},
            "started_at": started_at,
            "finished_at": now(),
        })

    def result(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
