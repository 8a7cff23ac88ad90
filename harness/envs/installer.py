"""The installer environments are built with: uv when there is one, and pip's index settings translated for it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping

#: pip settings (``pip config list`` keys) and the uv options that mean the same
UV_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint"}


def uv_binary() -> str | None:
    """The ``uv`` package's binary, else a ``uv`` on PATH, else None (then venv + pip build)."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def pip_settings() -> dict[str, str]:
    """pip's configuration as pip applies it (``pip config list``: its files and PIP_* variables), key -> value."""
    settings = {k[4:].lower().replace("_", "-"): v for k, v in os.environ.items() if k.startswith("PIP_")}
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    rank = {"global": 0, "install": 1, ":env:": 2}  # what pip lets override what
    entries = []
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in rank:
            try:
                entries.append((rank[section], key, str(ast.literal_eval(value))))
            except (ValueError, SyntaxError):
                continue
    settings.update((key, value) for _, key, value in sorted(entries))
    return settings


def uv_options(settings: Mapping[str, str]) -> list[str]:
    """pip's index settings as uv options, resolving across every index at once as pip does."""
    options = [a for key, flag in UV_OPTIONS.items() for value in settings.get(key, "").split() for a in (flag, value)]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        options.append("--no-index")
    if "UV_INDEX_STRATEGY" not in os.environ:
        options += ["--index-strategy", "unsafe-best-match"]
    return options


def uv_variables(settings: Mapping[str, str]) -> dict[str, str]:
    """The process environment for uv: pip's certificate and timeout, unless the user set uv's own."""
    translated = {"SSL_CERT_FILE": settings.get("cert"),
                  "UV_HTTP_TIMEOUT": settings.get("timeout") or settings.get("default-timeout")}
    return {**{k: v for k, v in translated.items() if v}, **os.environ}
