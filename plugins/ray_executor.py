"""The Ray executor, ``harness run --executor ray``: cells as Ray tasks across a fleet of machines
(:mod:`harness.fleet`, docs/many-machines.md). Ray is imported only when this executor is chosen."""

from __future__ import annotations

import argparse
from typing import Any

from harness.hookspecs import hookimpl


def kinds(text: str) -> list[str]:
    """A comma-separated list of device kinds (``T4,P40``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct device kinds separated by commas, e.g. T4,P40")
    return names


def retries(text: str) -> int:
    """A count of retries, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: give 0 or more")
    return value


class Ray:
    help = "a Ray cluster: cells as Ray tasks across its nodes (docs/many-machines.md)"

    def configure(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--address", metavar="auto|HOST:PORT",
                           help="with --executor ray: the cluster to join (default: the running one, else a new "
                                "local one)")
        group.add_argument("--devices", type=kinds, metavar="KIND[,KIND...]",
                           help="with --executor ray: run the suite once per device kind (Ray accelerator_type or "
                                "custom node resource, e.g. T4,P40), in parallel across the fleet")
        group.add_argument("--data-copy", action="store_true",
                           help="with --executor ray: copy --data once to each node (checksummed) instead of reading "
                                "a path every node shares")
        group.add_argument("--retries", type=retries, metavar="N",
                           help="with --executor ray: run a cell whose node is lost again on another node up to N "
                                "times (default 2)")

    def create(self, args: argparse.Namespace, manager: Any) -> Any:
        from harness import fleet

        executor = fleet.RayExecutor(manager, address=args.address, devices=args.devices or [],
                                     retries=2 if args.retries is None else args.retries, data_copy=args.data_copy,
                                     build=args.build, hint=args.hint)
        executor.connect()  # before anything is written: without a cluster at --address, exit 2
        return executor


@hookimpl
def register_executors(register: Any) -> None:
    register("ray", Ray())
