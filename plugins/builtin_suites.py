"""The built-in suites: ``flowers`` (the tutorial's full training) and ``flowers-smoke`` (CPU-sized)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.hookspecs import hookimpl

SUITES = Path(__file__).parent / "suites"


@hookimpl
def register_suites(register: Any) -> None:
    for path in sorted(SUITES.glob("*.toml")):
        register(path.stem, path)
