"""The chaos run's full-disk fault fills a small tmpfs beside nodes that write into it too: the
space it counted may be gone when it writes, and a disk the nodes filled already may refuse even
the filler's name. Neither may end the run (a seed of the suite's chaos test once did, with
ENOSPC from the close of a buffered filler)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chaos.run import fill_disk


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=4", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_more_than_the_disk_holds_fills_it_without_an_error(small_disk: Path) -> None:
    fill_disk(small_disk / "filler", 8 << 20)  # the space counted is gone: the disk takes 1 MB
    assert (small_disk / "filler").stat().st_size == 1 << 20
    assert shutil.disk_usage(small_disk).free == 0


def test_a_disk_already_full_is_left_as_it_is(small_disk: Path) -> None:
    fill_disk(small_disk / "a", 8 << 20)
    # a few bytes (the old filler kept them in its buffer, and its close raised ENOSPC), a MB, and
    # past the inodes too: the file's name itself refused (ENOSPC)
    for name, size in zip("bcdef", (100, 5000, 1 << 20, 100, 100), strict=True):
        fill_disk(small_disk / name, size)
    names = sorted(p.name for p in small_disk.iterdir())
    assert names[0] == "a" and len(names) < 6, names
    assert all((small_disk / n).stat().st_size == 0 for n in names[1:])
