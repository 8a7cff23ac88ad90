"""Where the harness keeps what it builds and downloads, and every ``HARNESS_*`` variable it reads: one place.

Folders follow the XDG base directory spec: the harness's cache is ``$HARNESS_CACHE``, else
``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``; built environments and a fleet node's copied data live in
it unless their own variable says otherwise. Other modules name a variable by the constants below and read it
with :func:`setting`, never ``os.environ`` directly (tests/test_imports.py checks).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = "HARNESS_CACHE"
ENVS = "HARNESS_ENVS"
FLEET_CACHE = "HARNESS_FLEET_CACHE"
ALLOW_LIST_ENV = "HARNESS_PLUGINS"
MODULES_ENV = "HARNESS_PLUGIN_MODULES"
FORCE_CPU_BF16 = "HARNESS_CPU_BF16"
PARENT_ENV = "HARNESS_PARENT_PID"
FLEET_KIND, FLEET_NODE = "HARNESS_FLEET_KIND", "HARNESS_FLEET_NODE"
AB_SIDE = "HARNESS_AB_SIDE"
WARM = "HARNESS_WARM"

#: Every ``HARNESS_*`` variable, and what it means (README.md, "Settings", lists them).
SETTINGS = {
    CACHE: "the harness's cache folder (default: $XDG_CACHE_HOME/harness, else ~/.cache/harness)",
    ENVS: "where built environments live (default: envs/ in the cache)",
    FLEET_CACHE: "where a fleet node keeps data copied to it (default: fleet-data/ in the cache)",
    ALLOW_LIST_ENV: "load only these plugin entry points (comma-separated names)",
    MODULES_ENV: "also register these importable modules as plugins (comma-separated)",
    FORCE_CPU_BF16: "'native' or 'emulated': override what the CPU is judged to do for bf16",
    PARENT_ENV: "set by the runner for a cell: the pid the cell process dies with",
    FLEET_KIND: "set by the Ray executor for a cell: the device kind its node was asked for",
    FLEET_NODE: "set by the Ray executor for a cell: the node it runs on",
    AB_SIDE: "set by harness ab for the benchmark processes it runs: which side (base or candidate)",
    WARM: "'0': start every cell process cold instead of forking it from a preloaded interpreter (harness/warm.py)",
}


def setting(name: str, default: str = "") -> str:
    """The value of the ``HARNESS_*`` variable ``name`` (one of :data:`SETTINGS`); ``default`` when unset or empty."""
    if name not in SETTINGS:
        raise KeyError(f"{name} is not a harness setting ({', '.join(SETTINGS)})")
    return os.environ.get(name) or default


def cache_dir() -> Path:
    """``$HARNESS_CACHE``, else ``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative values are ignored
    return Path(setting(CACHE) or base / "harness")


def envs_dir() -> Path:
    """Where built environments live: ``$HARNESS_ENVS``, else ``envs/`` in the cache."""
    return Path(setting(ENVS) or cache_dir() / "envs")


def fleet_cache() -> Path:
    """Where a fleet node keeps data copied to it: ``$HARNESS_FLEET_CACHE``, else ``fleet-data/`` in the cache."""
    return Path(setting(FLEET_CACHE) or cache_dir() / "fleet-data")
