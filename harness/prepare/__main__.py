"""``python -m harness.prepare flowers --out DIR ...``, the same as ``harness data prepare``."""

import argparse
import sys

from harness.prepare.cli import command, configure

parser = argparse.ArgumentParser(prog="harness data prepare",
                                 description="Download, verify and split a dataset 4:1 into train/ + validation/.")
configure(parser)
sys.exit(command(parser.parse_args()))
