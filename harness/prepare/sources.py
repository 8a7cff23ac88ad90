"""Where the photos come from: resumable download into a cache, safe archive extraction.

A source is a URL (downloaded once into :func:`cache_dir`), a local ``.tgz``/``.tar``/``.zip``
archive, or a folder of class folders. Archives are checked member by member before anything
is written, whatever the Python version: absolute names, ``..`` components, device files, and
names or links whose real destination (following the archive's own links, chains included)
leaves the target are refused with an error naming the member and the rule; so are archives
over :class:`Limits` (total bytes, member count). Where tarfile has extraction filters the
``data`` filter is applied as well. Links between photos inside the archive are kept as
separate files.
"""

from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from harness.datasets import DataError, is_image
from harness.paths import cache_dir

FLOWERS_URL = "http://download.tensorflow.org/example_images/flower_photos.tgz"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # package data of harness
CHECKSUMS = {"flowers": "flowers_sha256sums.txt"}
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
# Folders an archive may carry that never hold classes (macOS resource forks).
IGNORED_FOLDERS = frozenset({"__MACOSX"})


class DownloadError(OSError):
    """A download failed; a ``.part`` file, if any, is kept for the next try to resume."""


class ArchiveError(DataError):
    """An archive cannot be read to the end (truncated or corrupt)."""


@dataclass(frozen=True)
class Limits:
    """The most an archive may extract to (the flowers archive: ~230 MB in ~3,700 members)."""

    max_bytes: int = 4 << 30
    max_members: int = 100_000


@dataclass(frozen=True)
class Source:
    """A resolved ``--source``: ``kind`` is ``url``, ``archive`` or ``dir``."""

    kind: str
    location: str  # the URL, or the absolute path as given
    path: Path | None = None  # the local archive or folder (None for a URL not yet downloaded)


def known_checksums(dataset: str) -> dict[str, str]:
    """Relative path (``class/file.jpg``) -> SHA-256 of every photo the dataset is known to hold."""
    text = (DATA_DIR / CHECKSUMS[dataset]).read_text()
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            sums[rel.lstrip("*")] = digest
    return sums


def resolve_source(spec: str | None, default_url: str = FLOWERS_URL) -> Source:
    """Classify ``--source`` (None means the default URL); local paths must exist."""
    spec = spec or default_url
    if re.match(r"^(https?|ftp)://", spec):
        return Source("url", spec)
    path = Path(spec).expanduser().absolute()
    if path.is_dir():
        return Source("dir", str(path), path)
    if path.is_file():
        if not is_archive(path):
            raise DataError(f"{path}: not a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
        return Source("archive", str(path), path)
    raise DataError(f"{path}: source does not exist")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def cached_download_path(url: str) -> Path:
    """Where ``url`` is cached: ``downloads/<url hash>-<file name>`` under :func:`cache_dir`."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir() / "downloads" / f"{key}-{name}"


def download(url: str, dest: Path, *, retries: int = 3, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it with an HTTP Range request.

    An interrupted transfer is retried up to ``retries`` times in all, each try resuming where
    the last stopped; if all fail the ``.part`` file stays for the next call. A finished
    ``dest`` is returned as it is.
    """
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error: Exception | None = None
    for _ in range(max(1, retries)):
        try:
            _fetch(url, part, timeout, progress)
            part.replace(dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code != 416:  # 416: the .part is stale (longer than the file): start over
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            part.unlink(missing_ok=True)
            error = e
        except (OSError, http.client.HTTPException) as e:
            error = e
    kept = part.stat().st_size if part.exists() else 0
    raise DownloadError(f"{url}: download failed after {retries} tries ({error}); {part} keeps {kept} bytes to resume")


class _Incomplete(OSError):
    pass


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "harness-prepare", **({"Range": f"bytes={offset}-"} if offset else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if offset and (resp.status != 206 or _range_start(resp) != offset):
            offset = 0  # the server sent the whole file: start over
        total = _total_size(resp, offset)
        with (
            part.open("ab" if offset else "wb") as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
                 disable=None if progress else True) as bar,
        ):
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"transfer stopped at {size} of {total} bytes")


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _total_size(resp: http.client.HTTPResponse, offset: int) -> int | None:
    m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def extract_archive(archive: Path, dest: Path, limits: Limits = Limits()) -> None:
    """Extract ``archive`` into ``dest`` after checking every member; refuse unsafe ones (see the module)."""
    try:
        _extract(archive, dest, limits)
    except tarfile.FilterError as e:  # the data filter found what the checks here let through
        member = e.tarinfo.name if e.tarinfo is not None else "?"
        raise DataError(f"{archive}: refusing member {member!r}: {e}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # a real I/O error (disk full, ...), not the archive
            raise
        raise ArchiveError(f"{archive}: damaged archive ({type(e).__name__}: {e})") from e
    _materialize_links(archive, dest)


def _extract(archive: Path, dest: Path, limits: Limits) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            total = 0
            for n, info in enumerate(infos, 1):
                _safe_name(info.filename, archive)
                total += info.file_size  # zipfile never writes more than a member declares
                _check_limits(archive, info.filename, n, total, limits)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members: list[tarfile.TarInfo] = []
            links: dict[str, str] = {}
            files: set[str] = set()
            total = 0
            for m in tf:  # headers only; stops at the first member over a limit
                members.append(m)
                total += m.size if m.isfile() else 0
                _check_limits(archive, m.name, len(members), total, limits)
                _check_tar_member(m, archive, links, files)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the checks above are the guard
                tf.extractall(dest, members=members)
    else:
        raise DataError(f"{archive}: not a readable tar or zip archive")


def _check_limits(archive: Path, name: str, members: int, total: int, limits: Limits) -> None:
    if members > limits.max_members:
        raise DataError(f"{archive}: refusing member {name!r}: more than {limits.max_members} members "
                        "(raise the limit with --max-members)")
    if total > limits.max_bytes:
        raise DataError(f"{archive}: refusing member {name!r}: the archive would extract to more than "
                        f"{limits.max_bytes >> 20} MiB (raise the limit with --max-extract-mb)")


def _safe_name(name: str, archive: Path) -> str:
    """The member's normalised relative name; absolute names and ``..`` are refused."""
    problem = _unsafe(name)
    if problem:
        raise DataError(f"{archive}: refusing member {name!r}: {problem}")
    return posixpath.normpath(name.replace("\\", "/"))


def _unsafe(name: str) -> str | None:
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' leaves the target folder"
    return None


#: More link hops than this while resolving one name: a loop (the kernel's limit is 40).
MAX_LINK_HOPS = 40


def _resolve(name: str, links: dict[str, str]) -> list[str] | None:
    """Where ``name`` really lands under the target, following the archive's symlinks seen so far.

    ``links`` maps each symlink's real location (components joined by ``/``) to its target.
    Returns the real location's components, or None when it leaves the target (or loops).
    """
    pending = list(reversed(name.split("/")))
    parts: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        here = "/".join([*parts, part])
        if here in links:
            hops += 1
            target = links[here]
            if hops > MAX_LINK_HOPS or target.startswith("/") or PureWindowsPath(target).is_absolute():
                return None
            pending.extend(reversed(target.split("/")))
            continue
        parts.append(part)
    return parts


def _check_tar_member(m: tarfile.TarInfo, archive: Path, links: dict[str, str], files: set[str]) -> None:
    """Refuse a member whose real destination, or whose link's real target, leaves the target folder, and a
    hard link that names no earlier file (tarfile would stop at it with a KeyError).

    ``links`` (the symlinks of earlier members, by real location) and ``files`` (the names of earlier file and
    hard link members, as tarfile compares them) are updated with ``m``.
    """
    name = _safe_name(m.name, archive)
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()) or m.issparse():
        raise DataError(f"{archive}: refusing member {m.name!r}: device, fifo, sparse or other special file")
    parent = _resolve(posixpath.dirname(name), links)
    if parent is None or (not m.issym() and _resolve(name, links) is None):
        raise DataError(f"{archive}: refusing member {m.name!r}: its path runs through a link that leaves the "
                        "target folder")
    where = "/".join([*parent, posixpath.basename(name)]).strip("/")
    if m.issym():  # relative to the link's (real) folder
        target = m.linkname.replace("\\", "/")
        if target.startswith("/") or PureWindowsPath(target).is_absolute() or \
                _resolve("/".join([*parent, target]), links) is None:
            raise DataError(f"{archive}: refusing member {m.name!r}: link to {m.linkname!r} leaves the target folder")
        links[where] = target  # tarfile removes whatever was at this place first
    elif m.islnk() and (_unsafe(m.linkname) is not None or _resolve(m.linkname, links) is None):
        # hard links name another member, relative to the archive root
        raise DataError(f"{archive}: refusing member {m.name!r}: link to {m.linkname!r} leaves the target folder")
    elif m.islnk() and posixpath.normpath(m.linkname) not in files:
        raise DataError(f"{archive}: refusing member {m.name!r}: hard link to {m.linkname!r}, which is not a file "
                        "earlier in the archive")
    if m.isfile() or m.islnk():
        files.add(posixpath.normpath(m.name))
    # A file or folder member at a link's place goes through the link (tarfile opens or makes it there).


def _materialize_links(archive: Path, dest: Path) -> None:
    """Turn the archive's symlinks to photos into files of their own (a hard link, else a copy).

    Photos are moved out of the extraction folder one by one; a moved relative link would dangle.
    A link to a folder is refused: it would repeat a class under another name.
    """
    root = dest.resolve()
    for path in sorted(dest.rglob("*")):
        if not path.is_symlink():
            continue
        target = path.resolve()
        rel = path.relative_to(dest).as_posix()
        if root not in target.parents:
            raise DataError(f"{archive}: refusing member {rel!r}: link leaves the target folder")
        if target.is_dir():
            raise DataError(f"{archive}: refusing member {rel!r}: link to a folder ({os.readlink(path)!r}); "
                            "put the photos in the archive itself")
        path.unlink()
        if target.exists():
            try:
                os.link(target, path)
            except OSError:
                shutil.copyfile(target, path)


def find_root(top: Path) -> Path:
    """The folder holding the class folders: ``top``, or the single wrapper folder inside it.

    Descends while a folder holds no images and exactly one visible subfolder that itself
    has subfolders (as ``flower_photos/`` inside the archive).
    """
    root = top
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_FOLDERS]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) != 1 or any(is_image(p) for p in entries):
            return root
        if not any(p.is_dir() and not p.name.startswith(".") for p in dirs[0].iterdir()):
            return root
        root = dirs[0]
