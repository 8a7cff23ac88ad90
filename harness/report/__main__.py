"""``python -m harness.report DIR [DIR ...] --out DIR``: the report command on its own."""

from __future__ import annotations

import argparse
import sys

from harness.report import command, configure
from harness.results import show_warnings_briefly


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the report."""
    parser = argparse.ArgumentParser(prog="harness report", description=__doc__)
    configure(parser)
    show_warnings_briefly()
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
