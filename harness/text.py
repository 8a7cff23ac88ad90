"""Wording shared by the command line and the report."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 cell``, ``2 cells``."""
    return f"{count} {word if count == 1 else many or word + 's'}"
