"""Shared fixtures: the real flowers photos, and generated ones for tests of mechanics."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.testing import make_photos

# Under pytest-xdist the tests run in worker processes marked by PYTEST_XDIST_* variables; the pytest runs that tests
# start themselves (pytest-benchmark suites, plugin packages' own tests) are not workers, and pytest-benchmark
# disables itself where it sees them.
for _name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
    del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path(os.environ.get("HARNESS_FLOWERS", REPO.parent / "shared" / "data" / "flower_photos"))


@pytest.fixture(scope="session")
def photos() -> Path:
    if not (PHOTOS / "daisy").is_dir():
        missing = f"flowers photos not found at {PHOTOS} (set HARNESS_FLOWERS)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must test on the real photos", pytrace=False)
        pytest.skip(missing)
    return PHOTOS


@pytest.fixture(scope="session")
def generated_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 generated 32 px photos in 3 class folders (72 train, 18 validation): for tests of mechanics (engine,
    resume, checkpoints, step counts) that must run in a clone without the real photos."""
    return make_photos(tmp_path_factory.mktemp("generated") / "photos", classes=3, per_class=30, size=32)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for fake distributions and plugin modules; its modules are forgotten afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").startswith(str(folder))]:
        del sys.modules[name]
