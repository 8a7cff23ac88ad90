"""Data preparation (``harness data prepare``): download, verify, split 4:1, TFRecord + DALI index.

Modules: :mod:`.sources` (download cache, safe extraction), :mod:`.scan` (bad files,
checksums, duplicates), :mod:`.build` (split, placement, manifest, atomic rename),
:mod:`.tfrecord` (shards and index files), :mod:`.cli` (``configure``/``command``).
"""

from harness.prepare.build import DATASETS, MANIFEST, MARKER, Options, Result, load_manifest, prepare
from harness.prepare.cli import command, configure
from harness.prepare.scan import ChecksumError
from harness.prepare.sources import (
    FLOWERS_URL,
    ArchiveError,
    DownloadError,
    Limits,
    download,
    extract_archive,
)
from harness.prepare.tfrecord import FEATURES, read_tfrecords, tfrecord_files, write_tfrecords

__all__ = [
    "DATASETS",
    "FEATURES",
    "FLOWERS_URL",
    "MANIFEST",
    "MARKER",
    "ArchiveError",
    "ChecksumError",
    "DownloadError",
    "Limits",
    "Options",
    "Result",
    "command",
    "configure",
    "download",
    "extract_archive",
    "load_manifest",
    "prepare",
    "read_tfrecords",
    "tfrecord_files",
    "write_tfrecords",
]
