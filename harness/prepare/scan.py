"""Reading a source's class folders: bad files, checksums and byte-identical duplicates.

Candidates are exactly the files :func:`harness.datasets.class_folders` lists (what a loader
reading raw folders sees); each is hashed and decoded (JPEGs at 1/8 scale, which still reads
every entropy-coded byte). Anything else in a class folder is reported with a reason.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from harness.api import usable_cpus
from harness.datasets import IMAGE_SUFFIXES, SPLITS, DataError, class_folders, is_image

DECODABLE = ("JPEG", "PNG")


class ChecksumError(DataError):
    """The source's photos differ from the shipped checksum list."""


@dataclass(frozen=True)
class Photo:
    """A usable photo of the source; ``rel`` is ``class/file`` relative to the source root."""

    rel: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Excluded:
    """A file left out, with the reason; ``sha256`` when it was read."""

    rel: str
    reason: str
    sha256: str | None = None


@dataclass
class Scan:
    root: Path
    candidates: dict[str, list[Path]]  # class -> paths, as class_folders() lists them
    photos: dict[str, Photo] = field(default_factory=dict)
    excluded: list[Excluded] = field(default_factory=list)


def scan(root: Path, progress: bool = True) -> Scan:
    """Check the layout of ``root`` and read every candidate photo; raise on unusable layouts."""
    candidates = class_folders(root)
    _check_layout(root, candidates)
    result = Scan(root, candidates)
    for folder in sorted(root / c for c in candidates):
        listed = set(candidates[folder.name])
        result.excluded += [Excluded(_rel(root, p), _why_not_candidate(p)) for p in sorted(folder.iterdir())
                            if p not in listed]
    paths = [p for c in sorted(candidates) for p in candidates[c]]
    for path, (digest, size, reason) in zip(paths, _read_all(paths, progress), strict=True):
        rel = _rel(root, path)
        if reason is None:
            result.photos[rel] = Photo(rel, path, digest, size)
        else:
            result.excluded.append(Excluded(rel, reason, digest))
    result.excluded.sort(key=lambda e: e.rel)
    _check_usable(root, result)
    return result


def check_image(data: bytes) -> str | None:
    """None when ``data`` is a whole JPEG or PNG image, else why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in DECODABLE:
                return f"not a JPEG or PNG image ({im.format})"
            if im.format == "JPEG":
                if b"\xff\xd9" not in data[-4096:]:
                    return "truncated JPEG: no end-of-image marker"
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnidentifiedImageError:
        return "not an image: no known image format"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return f"corrupt image: {e}"
    return None


def check_known(scan_result: Scan, known: dict[str, str]) -> dict:
    """Compare the source with the shipped checksum list; raise on any known file that differs."""
    read = {p.rel: p.sha256 for p in scan_result.photos.values()}
    read |= {e.rel: e.sha256 for e in scan_result.excluded if e.sha256}
    mismatched = sorted(rel for rel, digest in read.items() if rel in known and known[rel] != digest)
    if mismatched:
        more = f" and {len(mismatched) - 1} more" if len(mismatched) > 1 else ""
        path = scan_result.root / mismatched[0]
        raise ChecksumError(f"{path}: SHA-256 differs from the shipped checksum list{more}; "
                        "the source is corrupt or not the original photos (--no-verify accepts it)")
    return {
        "listed": len(known),
        "matched": sum(rel in known for rel in read),
        "unknown": sorted(rel for rel in read if rel not in known),
        "missing": len([rel for rel in known if rel not in read]),
    }


def duplicate_groups(sha_of: dict[str, str]) -> list[dict]:
    """Groups of byte-identical files; ``sha_of`` maps ``class/file`` to its SHA-256."""
    by_sha: dict[str, list[str]] = defaultdict(list)
    for key, digest in sha_of.items():
        by_sha[digest].append(key)
    groups = []
    for digest, keys in sorted(by_sha.items(), key=lambda kv: sorted(kv[1])[0]):
        if len(keys) < 2:
            continue
        classes = [k.split("/")[0] for k in keys]
        kinds = [kind for kind, hit in (("within_class", len(set(classes)) < len(classes)),
                                        ("across_classes", len(set(classes)) > 1)) if hit]
        groups.append({"sha256": digest, "files": sorted(keys), "kinds": kinds})
    return groups


def duplicates_to_drop(groups: list[dict]) -> list[str]:
    """With ``--drop-duplicates``: every copy when the labels disagree, else all but the first (sorted)."""
    drop: list[str] = []
    for g in groups:
        drop += g["files"] if "across_classes" in g["kinds"] else g["files"][1:]
    return sorted(drop)


def _check_layout(root: Path, candidates: dict[str, list[Path]]) -> None:
    if all(s in candidates for s in SPLITS):
        raise DataError(f"{root}: already split into train/ and validation/; use it with --data as it is")
    if not candidates:
        loose = any(is_image(p) for p in root.iterdir())
        what = "images lie directly in it" if loose else "it has no class folders"
        raise DataError(f"{root}: {what}; expected one folder of images per class ({root}/<class>/*.jpg)")
    for name in candidates:
        if not any((root / name).iterdir()):
            raise DataError(f"{root / name}: empty class folder")


def _check_usable(root: Path, result: Scan) -> None:
    counts = {c: 0 for c in result.candidates}
    for rel in result.photos:
        counts[rel.split("/")[0]] += 1
    for name, n in counts.items():
        if n == 0:
            reasons = sorted({e.reason for e in result.excluded if e.rel.startswith(name + "/")})
            raise DataError(f"{root / name}: no usable images in the class folder ({'; '.join(reasons)})")
    if len(counts) < 2:
        raise DataError(f"{root}: needs at least 2 class folders of images, found {len(counts)}")


def _why_not_candidate(path: Path) -> str:
    kind = "folder" if path.is_dir() else "file"
    if path.name.startswith("."):
        return f"hidden {kind}"
    if path.is_dir():
        return "subfolder (class folders are read one level deep)"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file name ({path.suffix or 'no suffix'})"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return "not listed by the loader"


def _read_one(path: Path) -> tuple[str, int, str | None]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data), check_image(data)


def _read_all(paths: list[Path], progress: bool) -> list[tuple[str, int, str | None]]:
    from tqdm import tqdm

    workers = min(8, usable_cpus())
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_read_one, paths), total=len(paths), desc="checking photos", unit="img",
                         disable=None if progress else True))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
