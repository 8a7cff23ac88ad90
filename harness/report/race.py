"""What a race (:mod:`harness.race`) did, from its cells' results: which configurations it eliminated, at which
rung, on what evidence, and the compute it spent against the full matrix's."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Spent:
    """A race's compute in cell-epochs (one cell training one epoch): what it ran, and what the full matrix of
    the same cells would have."""

    raced: int  # cells that took part (not skipped)
    eliminated: int
    epochs: int
    full_epochs: int

    @property
    def share(self) -> float:
        return self.epochs / self.full_epochs if self.full_epochs else float("nan")


def raced(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that took part in a race."""
    return runs[runs["race"].map(bool) & runs["status"].ne("skipped")]


def spent(runs: pd.DataFrame) -> Spent | None:
    """The race's compute, or None when no run was raced."""
    rows = raced(runs)
    if rows.empty:
        return None
    planned = [int(cell.get("epochs") or 0) for cell in rows["cell"]]
    return Spent(len(rows), int(rows["status"].eq("eliminated").sum()), int(rows["epochs"].sum()), sum(planned))


def stopped_at(race: dict) -> str:
    """``rung 1 (4 of 16 epochs)``: where a race eliminated a cell."""
    rung = race.get("stopped_at")
    rungs = race.get("rungs") or []
    if not rung or rung > len(rungs):
        return ""
    return f"rung {rung} ({rungs[rung - 1]} of {rungs[-1]} epochs)"


def caveat(runs: pd.DataFrame) -> str | None:
    """One line for the report's "read with care": a race, what it spent, and what it cannot see."""
    found = spent(runs)
    if found is None:
        return None
    return (f"a race (harness run --race): {found.eliminated} of {found.raced} cells were eliminated at a rung, "
            f"so the leaderboards rank the survivors; it trained {found.epochs} of the full matrix's "
            f"{found.full_epochs} cell-epochs ({100 * found.share:.0f} %). A configuration that starts slow and "
            "ends fast can be eliminated early (docs/race.md)")
