"""`tests.harness.fill`, which the full-volume tests and the chaos run's full-disk fault use: the
nodes write beside it, so the space it counted may be gone when it writes, and a volume they
filled already may refuse even the filler's name. Neither may raise (a seed of the suite's chaos
test once ended with ENOSPC from the close of a buffered filler)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import harness
from tests.harness import fill, tmpfs


def test_a_volume_is_filled_to_what_it_leaves(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = fill(disk, leave=64 << 10)
        assert filler.stat().st_size == (1 << 20) - (64 << 10)
        assert shutil.disk_usage(disk).free == 64 << 10


def test_space_counted_and_gone_before_the_write_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "full").mkdir()
        fill(disk / "full")
        assert shutil.disk_usage(disk).free == 0
        usage = shutil.disk_usage(disk)
        for counted in (100, 5000, 8 << 20):  # a few bytes (kept in a buffer, they raised at its close), a lot
            monkeypatch.setattr(harness.shutil, "disk_usage", lambda _, free=counted: usage._replace(free=free))
            (disk / str(counted)).mkdir()
            filler = fill(disk / str(counted))
            assert filler.stat().st_size == 0


def test_a_volume_out_of_files_refuses_the_name_and_that_is_no_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m", inodes=3) as disk:  # the root and two more
        (disk / "a").mkdir()
        (disk / "b").mkdir()
        filler = fill(disk / "b")
        assert not filler.exists()
        filler.unlink(missing_ok=True)
