"""The exit codes of every ``harness`` command (README, "Exit codes")."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a cell failed, a regression was found, --strict found cells that cannot run, a build failed
    USAGE = 2  # bad input: arguments, a suite, data, a path (one line naming the file or field)
    INTERNAL = 3  # a bug in the harness or a plugin (one line; --traceback shows the stack)
    HANGUP = 128 + signal.SIGHUP  # 129: stopped by SIGHUP (what a shell reports for a signal)
    INTERRUPTED = 128 + signal.SIGINT  # 130: stopped by Ctrl-C
    TERMINATED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM

    @classmethod
    def signalled(cls, signum: int) -> ExitCode:
        """The code for a command stopped by signal ``signum``."""
        return cls(128 + signum)


def unforeseen_input(prog: str, exc: BaseException, args: argparse.Namespace) -> ExitCode:
    """Input that no check foresaw broke a command reading files (report, compare, ab): still a one-line usage
    error, never a crash; ``--traceback`` adds the stack."""
    if getattr(args, "traceback", False):
        traceback.print_exception(exc)
    print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ExitCode.USAGE
