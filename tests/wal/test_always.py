"""`--wal-fsync always` on the direct path (a request of fewer tables than --wal-journal-tables):
every segment the request appended to is fsynced before `write_many` returns, the fsyncs at once
in several threads (one after the other they made a request of 50 tables wait 11.6 ms here, 2.8 ms
at once), the directory too when the request created a segment; a failed fsync cuts the whole
request back out. fsync is wrapped here to watch it (the real one still runs): no power can be cut
in a test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import OverLimitsError
from node.wal import format as fmt
from node.wal import repository
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import FsyncPolicy, iter_rows
from tests.wal.helpers import rows_for

TABLES = 20


def request(tag: int) -> list[Block]:
    return [Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(tag * 100 + t, 2), 2) for t in range(TABLES)]


class Watch:
    """os.fsync and the repository's fsync_dir, wrapped: what each synced, and how many at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.02) -> None:
        self.inodes: list[int] = []
        self.dirs: list[Path] = []
        self.most = 0
        self.fail: dict[int, OSError] = {}  # inode -> the error its fsync raises
        self._now = 0
        self._lock = threading.Lock()
        real_fsync, real_dir = os.fsync, repository.fsync_dir

        def fsync(fd: int) -> None:
            inode = os.fstat(fd).st_ino
            with self._lock:
                self._now += 1
                self.most = max(self.most, self._now)
            try:
                time.sleep(delay)  # a disk whose fsync takes a while: overlap shows
                if inode in self.fail:
                    raise self.fail[inode]
                real_fsync(fd)
                with self._lock:
                    self.inodes.append(inode)
            finally:
                with self._lock:
                    self._now -= 1

        def fsync_dir(path: Path) -> None:
            self.dirs.append(Path(path))
            real_dir(path)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(repository, "fsync_dir", fsync_dir)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    # 8 descriptors for 20 tables: most segments are synced through a descriptor opened again
    r = Repository(WalConfig(tmp_path / "wal", fsync=FsyncPolicy.ALWAYS, max_open_segments=8))
    r.start()
    yield r
    r.stop()


def _segments(repo: Repository) -> dict[int, Path]:
    return {p.stat().st_ino: p for p in repo.active_directory.glob("*.wal")}


def test_a_request_is_durable_before_it_returns_its_segments_fsynced_at_once(
        repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = Watch(monkeypatch)
    repo.write_many(request(1))
    segments = _segments(repo)
    assert len(segments) == TABLES
    assert set(segments) <= set(watch.inodes), "a segment of the request was not fsynced before it returned"
    assert watch.most >= 4, f"at most {watch.most} fsync(s) at once: one after the other"
    assert watch.dirs == [repo.active_directory], "the new segments' names were not made durable"
    watch.inodes.clear()
    watch.dirs.clear()
    repo.write_many(request(2))  # the same segments: no new name to make durable
    assert sorted(watch.inodes) == sorted(segments) and watch.dirs == []  # one fsync each, no more


@pytest.mark.parametrize(("error", "raised"), [
    (OSError(5, "Input/output error"), OSError),
    (OSError(28, "No space left on device"), OverLimitsError),
])
def test_a_failed_fsync_cuts_the_whole_request_back_out(
        repo: Repository, monkeypatch: pytest.MonkeyPatch, error: OSError, raised: type[Exception]) -> None:
    repo.write_many(request(1))
    before = {p.name: p.stat().st_size for p in repo.active_directory.glob("*.wal")}
    watch = Watch(monkeypatch, delay=0.0)
    inode = sorted(_segments(repo))[TABLES // 2]
    watch.fail[inode] = error
    with pytest.raises(raised):
        repo.write_many(request(2))
    assert {p.name: p.stat().st_size for p in repo.active_directory.glob("*.wal")} == before
    del watch.fail[inode]
    repo.write_many(request(3))
    repo.rotate_all()
    stored: dict[str, bytes] = {}
    for s in repo.closed_segments():
        stored[s.name.table] = stored.get(s.name.table, b"") + b"".join(iter_rows(s.path))
    assert stored == {f"T{t}": rows_for(100 + t, 2) + rows_for(300 + t, 2) for t in range(TABLES)}
