"""Build a prepared directory: 4:1 split into ``train/`` + ``validation/``, manifest, TFRecords.

The directory is built in ``OUT.tmp-<pid>`` and renamed into place, so ``OUT`` is either
absent, a complete earlier result, or the complete new one; leftovers of a killed run are
removed by the next. A complete ``OUT`` built from the same source with the same options is
verified (every file present with its size) and left alone.

Prepare deletes only what it wrote: every folder it builds carries :data:`MARKER` (pid, host,
time), and only marked ``OUT.tmp-*``/``OUT.old-*`` folders of dead processes are removed. An
``OUT`` to rebuild that holds a file prepare did not write (not in its manifest) is refused,
naming the file; with ``force`` it is renamed ``OUT.old-<timestamp>`` (unmarked, so kept) instead.

The split is the loaders' (:func:`harness.datasets.split_class` over the files
:func:`harness.datasets.class_folders` lists), applied to the usable photos: bad files and
dropped duplicates are left out first. For a source without bad files, every photo lands in
the split that a loader reading the raw folders puts it in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from glob import escape
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.datasets import SPLITS, DataError, discover, split_class
from harness.prepare.scan import (
    ChecksumError,
    Photo,
    Scan,
    check_known,
    duplicate_groups,
    duplicates_to_drop,
    scan,
)
from harness.prepare.sources import (
    FLOWERS_URL,
    ArchiveError,
    Limits,
    Source,
    cached_download_path,
    download,
    extract_archive,
    find_root,
    known_checksums,
    resolve_source,
)
from harness.prepare.tfrecord import MAX_SHARD_BYTES, write_tfrecords

MANIFEST = "manifest.json"
#: Written first into every folder prepare builds: only marked leftovers are ever removed.
MARKER = ".harness-prepare"
SCHEMA_VERSION = 1
DATASETS = {"flowers": FLOWERS_URL}  # dataset -> default source
SPLIT_RULE = ("per class, over the usable photos (excluded and dropped files left out): sorted paths, "
              "random.Random(seed).shuffle, the first floor(n*scale/(1+scale)) to train, the rest to validation")


@dataclass(frozen=True)
class Options:
    """What ``harness data prepare`` was asked to do; recorded in the manifest."""

    dataset: str = "flowers"
    source: str | None = None  # URL, archive or folder; None: the dataset's download URL
    seed: int = 0
    scale: int = 4
    copy: bool = False
    tfrecord: bool = False
    strict: bool = False
    drop_duplicates: bool = False
    verify: bool = True  # compare photos with the shipped checksum list
    max_shard_bytes: int = MAX_SHARD_BYTES


@dataclass(frozen=True)
class Result:
    out: Path
    status: str  # "prepared" or "up-to-date"
    manifest: dict[str, Any]
    reason: str | None = None  # why it was built (None for a fresh directory)
    kept: Path | None = None  # where a replaced output holding files prepare did not write was moved (force)


def prepare(out: Path | str, options: Options = Options(), progress: bool = True, force: bool = False,
            limits: Limits | None = None) -> Result:
    """Prepare ``options.dataset`` into ``out`` (see the module docstring); idempotent.

    ``force``: replace an ``out`` holding files prepare did not write (kept aside, never deleted).
    ``limits``: the most an archive source may extract to.
    """
    if options.dataset not in DATASETS:
        raise DataError(f"unknown dataset {options.dataset!r}; known: {', '.join(sorted(DATASETS))}")
    if options.scale < 1:
        raise DataError(f"--scale must be at least 1, got {options.scale}")
    out = Path(out).expanduser().absolute()
    source = resolve_source(options.source, DATASETS[options.dataset])
    _check_apart(out, source)
    if options.tfrecord:
        _require_tfrecord()
    fingerprint = source_fingerprint(source)
    clean_stale(out)
    reason = None
    existing = load_manifest(out)
    if existing is not None:
        reason = stale_reason(out, existing, options, fingerprint)
        if reason is None:
            return Result(out, "up-to-date", existing)
    blocking = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        raise DataError(f"{out}: {blocking} is a file, not a folder; choose another --out")
    foreign = _foreign_file(out, existing)
    if foreign is not None and not force:
        if foreign == out:
            raise DataError(f"{out}: exists and is not a folder; choose another --out, or pass --force to build "
                            "anyway (it is kept as OUT.old-TIME)")
        if existing is None:
            raise DataError(f"{out}: exists and is not a prepared directory (no {MANIFEST}; it holds {foreign}); "
                            "choose another --out, or pass --force to build anyway (it is kept as OUT.old-TIME)")
        raise DataError(f"{out}: must be rebuilt ({reason}) but holds {foreign}, which harness data prepare did not "
                        "write; move it away, or pass --force (the old output is then kept as OUT.old-TIME)")
    if source.kind == "url":
        source = dataclasses.replace(source, path=download(source.location, cached_download_path(source.location),
                                                           progress=progress))
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    kept = None
    try:
        _mark(tmp)
        manifest = build(tmp, source, options, fingerprint, progress, limits)
        kept = swap(tmp, out, keep=foreign is not None)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ChecksumError | ArchiveError) and source.kind == "url" and source.path:
            source.path.unlink(missing_ok=True)  # a bad download must not be reused
        raise
    return Result(out, "prepared", manifest, reason, kept)


def build(tmp: Path, source: Source, options: Options, fingerprint: dict, progress: bool,
          limits: Limits | None = None) -> dict[str, Any]:
    """Fill the empty folder ``tmp`` and return its manifest (also written as ``tmp/manifest.json``)."""
    assert source.path is not None
    staging = None
    if source.kind == "dir":
        root, mode = find_root(source.path), "copy" if options.copy else "link"
    else:
        staging = tmp / ".source"
        extract_archive(source.path, staging, limits or Limits())
        root, mode = find_root(staging), "move"
    found = scan(root, progress)
    verified = _verify(found, source, options)
    if options.strict and found.excluded:
        first = found.excluded[0]
        raise DataError(f"{root / first.rel}: {first.reason} (--strict; {len(found.excluded)} bad files in all)")
    groups = duplicate_groups({rel: p.sha256 for rel, p in found.photos.items()})
    dropped = duplicates_to_drop(groups) if options.drop_duplicates else []
    plan = split_plan(found, options.seed, options.scale, set(dropped))
    _check_plan(root, plan, options.scale)
    files, placement = place(plan, tmp, mode)
    _mark_placement(groups, files)
    extras = carry_extras(root, tmp, mode)
    if staging is not None:
        shutil.rmtree(staging)
    dataset = discover(tmp)
    counts = {s: {c: len(plan[s][c]) for c in dataset.classes} for s in SPLITS}
    if any(len(dataset.splits[s]) != sum(counts[s].values()) for s in SPLITS):
        raise RuntimeError(f"{tmp}: the prepared folders do not hold the planned photos")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": options.dataset,
        "complete": True,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "harness": _version(),
        "options": dataclasses.asdict(options),
        "source": {**fingerprint, "root": _source_root(root, staging), "archive_sha256": _archive_sha(source),
                   "verified": verified, "extra_files": extras},
        "split": {"seed": options.seed, "scale": options.scale, "rule": SPLIT_RULE},
        "classes": dataset.classes,
        "counts": {**counts, "total": {s: sum(counts[s].values()) for s in SPLITS}},
        "placement": placement,
        "duplicates": {"policy": "drop" if options.drop_duplicates else "keep", "groups": groups, "dropped": dropped},
        "excluded": [{"path": e.rel, "reason": e.reason} for e in found.excluded],
        "tfrecord": write_tfrecords(dataset, tmp, options.max_shard_bytes, options.seed) if options.tfrecord else None,
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def split_plan(found: Scan, seed: int, scale: int, drop: set[str]) -> dict[str, dict[str, list[Photo]]]:
    """Split -> class -> photos: the loaders' split of each class's usable photos not in ``drop``."""
    plan: dict[str, dict[str, list[Photo]]] = {s: {} for s in SPLITS}
    by_path = {p.path: p for rel, p in found.photos.items() if rel not in drop}
    for cls, paths in sorted(found.candidates.items()):
        usable = [p for p in paths if p in by_path]
        for split, part in zip(SPLITS, split_class(usable, seed, scale), strict=True):
            plan[split][cls] = [by_path[p] for p in part]
    return plan


def place(plan: dict[str, dict[str, list[Photo]]], out: Path, mode: str) -> tuple[dict[str, dict], dict[str, int]]:
    """Link (hard, else symbolic), copy or move every planned photo to ``out/split/class/file``."""
    files: dict[str, dict] = {}
    placement: dict[str, int] = {}
    hard = True
    for key, photo in _keyed(plan):
        dest = out / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        used = _put(photo.path, dest, mode, hard)
        hard = used != "symlink"  # once hard links fail (another file system), stop trying
        placement[used] = placement.get(used, 0) + 1
        files[key] = {"sha256": photo.sha256, "bytes": photo.size, "source": photo.rel}
    return files, placement


def carry_extras(root: Path, out: Path, mode: str) -> list[str]:
    """Bring the source's top-level ``LICENSE*``/``README*`` files along (photo attributions)."""
    extras = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name.upper().startswith(("LICENSE", "README")) and p.name != MANIFEST:
            _put(p, out / p.name, "move" if mode == "move" else "copy", hard=False)
            extras.append(p.name)
    return extras


def _put(src: Path, dest: Path, mode: str, hard: bool) -> str:
    if mode == "move":
        src.rename(dest)
        return "move"
    if mode == "copy":
        shutil.copyfile(src, dest)
        return "copy"
    if hard:
        try:
            os.link(src, dest)
            return "hardlink"
        except OSError:
            pass
    os.symlink(src.resolve(), dest)
    return "symlink"


def load_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a complete prepared directory, else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("complete") is True else None


def stale_reason(out: Path, manifest: dict[str, Any], options: Options, fingerprint: dict) -> str | None:
    """Why ``out`` must be rebuilt, or None when it is complete and was made from the same inputs."""
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return f"manifest schema {manifest.get('schema_version')} != {SCHEMA_VERSION}"
    wanted = {k: v for k, v in dataclasses.asdict(options).items() if k != "source"}
    had = {k: v for k, v in manifest.get("options", {}).items() if k != "source"}
    changed = sorted(k for k in wanted if had.get(k) != wanted[k])
    if changed:
        return "options changed: " + ", ".join(f"{k} {had.get(k)!r} -> {wanted[k]!r}" for k in changed)
    if {k: manifest["source"].get(k) for k in fingerprint} != fingerprint:
        return f"source changed: {fingerprint['location']}"
    expected = dict(manifest.get("files", {}))
    for shard in _shards(manifest):
        expected[shard["file"]] = {"bytes": shard["bytes"]}
    for key, entry in expected.items():
        path = out / key
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return f"{path}: missing or changed"
    present = {p.relative_to(out).as_posix() for s in SPLITS for p in (out / s).glob("*/*")}
    extra = sorted(present - set(manifest.get("files", {})))
    return f"{out / extra[0]}: not in the manifest" if extra else None


def source_fingerprint(source: Source) -> dict[str, Any]:
    """What identifies the source's content cheaply (stat only) for the up-to-date check."""
    fp: dict[str, Any] = {"kind": source.kind, "location": source.location}
    if source.kind == "archive" and source.path:
        st = source.path.stat()
        fp |= {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    elif source.kind == "dir" and source.path:
        root = find_root(source.path)
        lines = sorted(f"{p.relative_to(root).as_posix()} {p.stat().st_size if p.is_file() else -1}"
                       for p in root.glob("*/*"))
        fp["listing_sha256"] = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return fp


def clean_stale(out: Path) -> None:
    """Remove ``OUT.tmp-*``/``OUT.old-*`` folders a prepare that died left behind; refuse if it still runs.

    Only folders carrying prepare's :data:`MARKER` are removed (and an empty ``OUT.tmp-<pid>``, a
    prepare killed right after creating it); anything else of that name is not prepare's and stays.
    """
    if not out.parent.is_dir():
        return
    for pattern in (".tmp-*", ".old-*"):
        for leftover in out.parent.glob(escape(out.name) + pattern):
            if leftover.is_symlink() or not leftover.is_dir():
                continue
            mark = _read_mark(leftover)
            if mark is None:
                suffix = leftover.name.rsplit("-", 1)[1]
                if pattern == ".tmp-*" and suffix.isdigit() and not _alive(int(suffix)):
                    with contextlib.suppress(OSError):
                        leftover.rmdir()  # only when empty
                continue
            pid = mark.get("pid")
            here = mark.get("host") == socket.gethostname()
            if isinstance(pid, int) and pid != os.getpid() and (not here or _alive(pid)):
                where = "" if here else f" on {mark.get('host')}"
                raise DataError(f"{leftover}: another prepare (pid {pid}{where}) is writing here; wait for it to "
                                "finish")
            shutil.rmtree(leftover)


def swap(tmp: Path, out: Path, keep: bool = False) -> Path | None:
    """Rename the finished ``tmp`` to ``out``, replacing an earlier ``out``.

    The earlier ``out`` is removed, or with ``keep`` renamed ``OUT.old-<timestamp>`` without the
    marker (so never removed); returns that path.
    """
    if not out.exists() and not out.is_symlink():
        tmp.rename(out)
        return None
    if keep:
        kept = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        if out.is_dir() and not out.is_symlink():
            (out / MARKER).unlink(missing_ok=True)
        out.rename(kept)
        tmp.rename(out)
        return kept
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)
    return None


def _mark(folder: Path) -> None:
    (folder / MARKER).write_text(json.dumps({"tool": "harness data prepare", "pid": os.getpid(),
                                             "host": socket.gethostname(), "created_at": _now()}) + "\n")


def _read_mark(folder: Path) -> dict[str, Any] | None:
    try:
        mark = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) and mark.get("tool") == "harness data prepare" else None


def written_files(manifest: dict[str, Any]) -> set[str]:
    """Every file (relative, ``/``-separated) a prepare with this manifest wrote into its output."""
    files = set(manifest.get("files", {})) | {MANIFEST, MARKER}
    files |= set((manifest.get("source") or {}).get("extra_files") or [])
    for shard in _shards(manifest):
        files |= {shard["file"], shard.get("index") or shard["file"] + ".idx"}
    return files


def _foreign_file(out: Path, manifest: dict[str, Any] | None) -> Path | None:
    """A file in ``out`` that prepare did not write (None when there is none, or no ``out``)."""
    if not out.is_dir() or out.is_symlink():
        return out if out.exists() or out.is_symlink() else None
    written = written_files(manifest) if manifest is not None else set()
    for path in sorted(out.rglob("*")):
        if (path.is_symlink() or not path.is_dir()) and path.relative_to(out).as_posix() not in written:
            return path
    return None


def _check_apart(out: Path, source: Source) -> None:
    """Refuse an ``out`` inside the source folder, or a source inside ``out`` (a rebuild would delete it)."""
    if source.path is None:
        return
    src, dest = source.path.resolve(), out.resolve()
    if src == dest or src in dest.parents or dest in src.parents:
        raise DataError(f"{out}: --out and --source {source.path} must not lie inside one another")


def _require_tfrecord() -> None:
    if importlib.util.find_spec("tfrecord") is None:
        raise DataError("--tfrecord needs the tfrecord package: pip install 'harness[data]'")


def _verify(found: Scan, source: Source, options: Options) -> dict | None:
    if not options.verify:
        return None
    verified = check_known(found, known_checksums(options.dataset))
    default = source.kind == "url" and source.location == DATASETS[options.dataset]
    if default and (verified["missing"] or verified["unknown"]):
        raise ChecksumError(f"{source.path}: download of {source.location} does not hold the expected photos "
                            f"({verified['missing']} missing, {len(verified['unknown'])} unknown)")
    return verified


def _check_plan(root: Path, plan: dict[str, dict[str, list[Photo]]], scale: int) -> None:
    for cls in plan["train"]:
        for split in SPLITS:
            if not plan[split][cls]:
                n = sum(len(plan[s][cls]) for s in SPLITS)
                raise DataError(f"{root / cls}: {n} usable photos leave the {split} split empty at scale {scale}:1")


def _keyed(plan: dict[str, dict[str, list[Photo]]]) -> list[tuple[str, Photo]]:
    return [(f"{s}/{c}/{p.path.name}", p) for s in SPLITS for c in sorted(plan[s]) for p in plan[s][c]]


def _mark_placement(groups: list[dict], files: dict[str, dict]) -> None:
    """Add where each duplicate group's kept copies went, and ``across_splits`` when that is a leak."""
    placed_as = {entry["source"]: key for key, entry in files.items()}
    for g in groups:
        g["placed"] = sorted(placed_as[rel] for rel in g["files"] if rel in placed_as)
        if len({key.split("/")[0] for key in g["placed"]}) > 1:
            g["kinds"].append("across_splits")


def _shards(manifest: dict[str, Any]) -> list[dict]:
    return [sh for split in (manifest.get("tfrecord") or {}).values() for sh in split["shards"]]


def _source_root(root: Path, staging: Path | None) -> str:
    return root.relative_to(staging).as_posix() if staging is not None else str(root)


def _archive_sha(source: Source) -> str | None:
    if source.kind == "dir" or source.path is None:
        return None
    digest = hashlib.sha256()
    with source.path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str | None:
    try:
        return metadata.version("harness")
    except metadata.PackageNotFoundError:
        return None
