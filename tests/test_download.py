"""Downloading a source: a real HTTP server on 127.0.0.1 (in a thread) serves a small ``.tgz``
of generated photos; transfers are cut to test resuming with Range requests; a tampered real
flowers photo must be refused.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.prepare import ChecksumError, DownloadError, Options, download, prepare
from harness.prepare.sources import ArchiveError, cached_download_path
from harness.testing import make_photos

CLASSES = ("daisy", "roses", "tulips")


@dataclass
class Served:
    """What the server sends, and what it was asked."""

    payload: bytes
    cut_after: list[int] = field(default_factory=list)  # cut the next responses after these many bytes
    honor_range: bool = True
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        served: Served = self.server.served  # type: ignore[attr-defined]
        served.requests.append(self.headers.get("Range"))
        if self.path != "/flower_photos.tgz":
            self.send_error(404)
            return
        data, start = served.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and served.honor_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = served.cut_after.pop(0) if served.cut_after else None
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after this

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five generated photos in each of the ``CLASSES`` folders."""
    root = make_photos(tmp_path_factory.mktemp("generated") / "flowers", classes=len(CLASSES), per_class=5)
    for index, name in enumerate(CLASSES):
        (root / f"class_{index}").rename(root / name)
    return root


@pytest.fixture
def server(generated: Path) -> Iterator[tuple[str, Served]]:
    """``(url, served)`` for a server on 127.0.0.1 serving a .tgz of 5 generated photos per class."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.served = Served(small_tgz(generated))  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz", httpd.served  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_tgz(photos: Path, tamper: str | None = None) -> bytes:
    """``flower_photos/<class>/...`` with 5 photos per class; ``tamper`` flips a byte of that one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for cls in CLASSES:
            for p in sorted((photos / cls).iterdir())[:5]:
                data = bytearray(p.read_bytes())
                if f"{cls}/{p.name}" == tamper:
                    data[-100] ^= 0xFF
                info = tarfile.TarInfo(f"flower_photos/{cls}/{p.name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(bytes(data)))
    return buf.getvalue()


def test_prepare_from_url_downloads_once_into_the_cache(server, tmp_path: Path, cache: Path) -> None:
    url, served = server
    result = prepare(tmp_path / "out", Options(source=url), progress=False)
    counts = result.manifest["counts"]
    assert counts["train"] == dict.fromkeys(CLASSES, 4) and counts["validation"] == dict.fromkeys(CLASSES, 1)
    assert len(result.manifest["source"]["verified"]["unknown"]) == 15  # checked against the shipped list
    cached = cached_download_path(url)
    assert cached.parent.parent == cache and cached.read_bytes() == served.payload
    assert served.requests == [None]
    prepare(tmp_path / "out2", Options(source=url), progress=False)
    assert served.requests == [None]  # the second prepare used the cached archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "out2"]


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path: Path) -> None:
    url, served = server
    half = len(served.payload) // 2
    served.cut_after = [half]
    dest = download(url, tmp_path / "a.tgz", progress=False)
    assert dest.read_bytes() == served.payload
    assert served.requests == [None, f"bytes={half}-"]
    assert not (tmp_path / "a.tgz.part").exists()


def test_failed_download_keeps_its_part_for_the_next_run(server, tmp_path: Path) -> None:
    url, served = server
    served.cut_after = [1000, 5000]
    with pytest.raises(DownloadError, match=r"failed after 2 tries .*a\.tgz\.part keeps 6000 bytes"):
        download(url, tmp_path / "a.tgz", retries=2, progress=False)
    assert not (tmp_path / "a.tgz").exists()
    assert download(url, tmp_path / "a.tgz", progress=False).read_bytes() == served.payload
    assert served.requests == [None, "bytes=1000-", "bytes=6000-"]


def test_server_ignoring_range_restarts_the_file(server, tmp_path: Path) -> None:
    url, served = server
    served.honor_range = False
    (tmp_path / "a.tgz.part").write_bytes(b"stale bytes from another file")
    assert download(url, tmp_path / "a.tgz", progress=False).read_bytes() == served.payload
    assert served.requests == ["bytes=29-"]


def test_stale_part_longer_than_the_file_starts_over(server, tmp_path: Path) -> None:
    url, served = server
    (tmp_path / "a.tgz.part").write_bytes(b"x" * (len(served.payload) + 10))
    assert download(url, tmp_path / "a.tgz", progress=False).read_bytes() == served.payload
    assert served.requests == [f"bytes={len(served.payload) + 10}-", None]


def test_checksum_mismatch_is_refused_and_the_download_discarded(server, photos: Path, tmp_path: Path) -> None:
    url, served = server
    victim = f"roses/{sorted((photos / 'roses').iterdir())[3].name}"
    served.payload = small_tgz(photos, tamper=victim)
    with pytest.raises(ChecksumError, match=f"flower_photos/{victim}: SHA-256 differs from the shipped checksum"):
        prepare(tmp_path / "out", Options(source=url), progress=False)
    assert not (tmp_path / "out").exists()
    assert not cached_download_path(url).exists()  # refused: the next run downloads again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert sorted(p.name for p in cached_download_path(url).parent.iterdir()) == []


def test_damaged_download_is_refused_and_discarded(server, tmp_path: Path) -> None:
    url, served = server
    served.payload = served.payload[: len(served.payload) // 2]  # the server itself holds half an archive
    with pytest.raises(ArchiveError, match="damaged archive"):
        prepare(tmp_path / "out", Options(source=url), progress=False)
    assert not cached_download_path(url).exists() and not (tmp_path / "out").exists()


def test_http_error_is_reported_without_retries(server, tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(url.replace("flower_photos.tgz", "missing.tgz"), tmp_path / "m.tgz", progress=False)
    assert served.requests == [None]
