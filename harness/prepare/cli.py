"""``harness data prepare``: the command-line face of :func:`harness.prepare.prepare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.datasets import SPLITS, DataError
from harness.exitcode import ExitCode
from harness.prepare.build import DATASETS, Options, Result, prepare
from harness.prepare.sources import DownloadError, Limits


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` arguments to ``parser``."""
    parser.add_argument("dataset", choices=sorted(DATASETS), help="dataset to prepare")
    parser.add_argument("--out", type=Path, required=True, help="prepared directory to create (train/, validation/)")
    parser.add_argument("--source", help="URL, .tgz/.zip archive or folder of class folders (default: download)")
    parser.add_argument("--tfrecord", action="store_true", help="also write TFRecord shards + DALI index files")
    parser.add_argument("--scale", type=int, default=4, help="train:validation ratio scale:1 (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle (default 0)")
    parser.add_argument("--copy", action="store_true", help="copy photos instead of linking them")
    parser.add_argument("--strict", action="store_true", help="fail on any bad file instead of excluding it")
    parser.add_argument("--drop-duplicates", action="store_true",
                        help="drop byte-identical copies (all copies when their classes differ)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="accept photos that differ from the shipped checksum list")
    parser.add_argument("--shard-mb", type=int, default=64, help="largest TFRecord shard in MiB (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true",
                        help="rebuild an --out holding files prepare did not write (the old one is kept, OUT.old-TIME)")
    parser.add_argument("--max-extract-mb", type=int, default=Limits.max_bytes >> 20,
                        help=f"refuse an archive extracting to more MiB (default {Limits.max_bytes >> 20})")
    parser.add_argument("--max-members", type=int, default=Limits.max_members,
                        help=f"refuse an archive with more members (default {Limits.max_members})")


def command(args: argparse.Namespace) -> int:
    """Run ``prepare``; print a summary (exit 0), or the error naming the path: exit 2 for bad input
    (source, archive, options, --out), 1 for a failed download or an I/O error."""
    for flag, value in (("--shard-mb", args.shard_mb), ("--max-extract-mb", args.max_extract_mb),
                        ("--max-members", args.max_members)):
        if value < 1:
            print(f"harness data prepare: error: {flag} {value}: expected a positive integer", file=sys.stderr)
            return ExitCode.USAGE
    options = Options(dataset=args.dataset, source=args.source, seed=args.seed, scale=args.scale, copy=args.copy,
                      tfrecord=args.tfrecord, strict=args.strict, drop_duplicates=args.drop_duplicates,
                      verify=args.verify, max_shard_bytes=args.shard_mb << 20)
    limits = Limits(max_bytes=args.max_extract_mb << 20, max_members=args.max_members)
    try:
        result = prepare(args.out, options, progress=not args.quiet, force=args.force, limits=limits)
    except DataError as e:
        print(f"harness data prepare: error: {printable(str(e))}", file=sys.stderr)
        return ExitCode.USAGE
    except (DownloadError, OSError) as e:
        print(f"harness data prepare: error: {printable(str(e))}", file=sys.stderr)
        return ExitCode.FAILED
    print(summary(result))
    if result.kept:
        print(printable(f"  the previous {result.out.name} held files prepare did not write: kept as {result.kept}"))
    return ExitCode.OK


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (ANSI escapes, newlines, bidi overrides,
    undecodable bytes), which archive member names may hold, escaped as ``repr`` escapes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def summary(result: Result) -> str:
    """Counts per class and split, duplicates, exclusions and shards, as a few lines of text (names escaped)."""
    m = result.manifest
    verb = "up to date, verified" if result.status == "up-to-date" else "prepared"
    why = f" ({printable(result.reason)})" if result.reason else ""
    how = ", ".join(f"{n} {k}" for k, n in m["placement"].items())
    lines = [f"{m['dataset']}: {verb} {printable(str(result.out))}{why}",
             f"  from {printable(m['source']['location'])} ({how})", f"  {'class':<16}{'train':>8}{'validation':>12}"]
    lines += [f"  {printable(c):<16}{m['counts']['train'][c]:>8}{m['counts']['validation'][c]:>12}"
              for c in m["classes"]]
    lines.append(f"  {'total':<16}{m['counts']['total']['train']:>8}{m['counts']['total']['validation']:>12}")
    dup = m["duplicates"]
    for g in dup["groups"]:
        lines.append(f"  duplicate ({', '.join(g['kinds'])}): {printable(' == '.join(g['files']))}")
    if dup["dropped"]:
        lines.append(f"  dropped {len(dup['dropped'])} duplicate files")
    lines += [f"  excluded {printable(e['path'])}: {printable(e['reason'])}" for e in m["excluded"]]
    for split in SPLITS if m["tfrecord"] else ():
        t = m["tfrecord"][split]
        lines.append(f"  tfrecord {split}: {t['records']} records in {len(t['shards'])} shards")
    return "\n".join(lines)
