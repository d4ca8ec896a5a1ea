"""A bounded number of open segment files: thousands of tables, few descriptors, every row kept.

Real files in a temporary directory; descriptors counted in /proc/self/fd.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from node.errors import OverLimitsError, VanishedSegmentError
from node.wal import format as fmt
from node.wal import syscalls
from node.wal.openfiles import OpenFiles, per_process
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import FsyncPolicy, SegmentWriter, iter_rows
from tests.wal.helpers import rows_for, write_block


def open_in(directory: Path) -> int:
    """Descriptors of this process open on files under `directory`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory)):
                n += 1
        except OSError:
            continue
    return n


def disk_fills_at_write(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Make the `n`th segment write from now (`syscalls.writev`) fail as a full disk does; returns
    the count of calls."""
    real, calls = syscalls.writev, [0]

    def fills(fd: int, parts: list[bytes]) -> int:
        calls[0] += 1
        if calls[0] == n:
            raise OSError(28, "No space left on device")
        return real(fd, parts)

    monkeypatch.setattr(syscalls, "writev", fills)
    return calls


def stored(repo: Repository) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for s in repo.closed_segments():
        out.setdefault(s.name.table, []).extend(b"".join(iter_rows(s.path)).splitlines())
    return out


@pytest.mark.parametrize("fsync", list(FsyncPolicy))
def test_hundreds_of_tables_write_through_eight_descriptors(tmp_path: Path, fsync: FsyncPolicy) -> None:
    repo = Repository(WalConfig(tmp_path / "wal", max_open_segments=8, fsync=fsync))
    repo.start()
    want: dict[str, list[bytes]] = {}
    most = 0
    for turn in range(3):
        for t in range(300):
            value = rows_for(turn * 1000 + t, 2)
            write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, value, 2)
            want.setdefault(f"T{t}", []).extend(value.splitlines())
            most = max(most, open_in(repo.active_directory))
    assert most <= 8
    assert repo.files.reopened >= 2 * 300 - 8  # the later turns found their files closed
    repo.rotate_all()
    assert open_in(repo.directory) == 0
    assert stored(repo) == want


def test_a_request_undone_on_an_evicted_segment_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request over five tables whose disk fills at the fourth block is undone table by table,
    whether or not their files are still open (two of five are)."""
    repo = Repository(WalConfig(tmp_path / "wal", max_open_segments=2))
    repo.start()
    for t in range(5):
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, rows_for(t, 1), 1)
    before = {p.name: p.stat().st_size for p in repo.active_directory.iterdir()}
    calls = disk_fills_at_write(monkeypatch, 4)
    with pytest.raises(OverLimitsError, match="disk full"):
        repo.write_many([Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(100 + t, 1), 1) for t in range(5)])
    monkeypatch.undo()
    assert calls[0] == 4 and repo.files.reopened >= 3
    assert {p.name: p.stat().st_size for p in repo.active_directory.iterdir()} == before


def test_writer_closed_by_the_pool_is_reopened_at_its_end_and_fsynced_on_close(tmp_path: Path) -> None:
    files = OpenFiles(1)
    a = SegmentWriter(tmp_path / "a.wal", FsyncPolicy.ON_ROTATE, files)
    header, payload = fmt.encode_block(fmt.KIND_METRIC, 1, b"x,1\n")
    a.append(header, payload, 1)
    b = SegmentWriter(tmp_path / "b.wal", FsyncPolicy.ON_ROTATE, files)
    assert a.fd == -1 and b.fd >= 0 and len(files) == 1
    a.append(header, payload, 1)  # reopened, b closed
    assert a.fd >= 0 and b.fd == -1
    a.truncate(a.size - len(header) - len(payload), 1, 1)
    b.close()
    a.close()
    a.close()  # twice: nothing
    assert list(iter_rows(tmp_path / "a.wal")) == [b"x,1\n"]
    assert (tmp_path / "b.wal").read_bytes() == fmt.MAGIC
    assert len(files) == 0 and open_in(tmp_path) == 0


def test_a_pinned_descriptor_is_never_closed_under_its_write(tmp_path: Path) -> None:
    """Four threads write 40 tables through two descriptors: every write lands, in its file."""
    repo = Repository(WalConfig(tmp_path / "wal", max_open_segments=2))
    repo.start()
    errors: list[BaseException] = []
    want: dict[str, list[bytes]] = {}
    lock = threading.Lock()

    def writer(k: int) -> None:
        try:
            for i in range(200):
                t = f"T{(k * 7 + i) % 40}"
                value = rows_for(k * 100_000 + i, 1)
                write_block(repo, "Db", t, fmt.KIND_METRIC, value, 1)
                with lock:
                    want.setdefault(t, []).extend(value.splitlines())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    repo.rotate_all()
    got = stored(repo)
    assert {t: sorted(v) for t, v in got.items()} == {t: sorted(v) for t, v in want.items()}


def test_disk_full_on_an_evicted_segment_leaves_no_partial_block(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The error path truncates through the descriptor the pool gave back."""
    files = OpenFiles(1)
    a = SegmentWriter(tmp_path / "a.wal", FsyncPolicy.NEVER, files)
    SegmentWriter(tmp_path / "b.wal", FsyncPolicy.NEVER, files)  # a's descriptor closed
    big = b"y" * (1 << 20)
    header, payload = fmt.encode_block(fmt.KIND_METRIC, 1, big)
    size = a.size

    def full(fd: int, parts: list[bytes]) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(syscalls, "writev", full)
    with pytest.raises(OverLimitsError, match="disk full"):
        a.append(header, payload, 1)
    assert a.size == size and (tmp_path / "a.wal").stat().st_size == size


def test_a_nodes_limit_is_shared_by_its_processes_and_kept_under_half_of_ulimit_n() -> None:
    assert per_process(1024, 1) == 1024
    assert per_process(1024, 2) == 512
    assert per_process(1024, 1, nofile=1024) == 512  # the other half: sockets, the sink, readers
    assert per_process(1024, 1, nofile=1 << 20) == 1024
    assert per_process(0, 4) == 0 and per_process(0, 4, nofile=1024) == 512  # no flag limit: ulimit's half
    assert per_process(1024, 1000) == 16  # a floor: each process keeps a few


def test_a_request_pins_its_segments_at_once_and_the_bound_holds(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A request over at most half the bound pins its segments' descriptors at once (one lock),
    a larger one takes them a block at a time: either way no more than the bound are open, every
    pin is let go, and a disk that fills in the middle of a pinned request undoes all of it."""
    repo = Repository(WalConfig(tmp_path / "wal", max_open_segments=8))
    repo.start()
    want: dict[str, list[bytes]] = {}
    most = 0
    for i in range(30):
        tables = 4 if i % 3 else 20  # 4: pinned at once; 20, over half of 8: one at a time
        blocks = [Block("Db", f"T{(i * 7 + t) % 40}", fmt.KIND_METRIC, rows_for(i * 100 + t, 2), 2)
                  for t in range(tables)]
        repo.write_many(blocks)
        for b in blocks:
            want.setdefault(b.table, []).extend(b.data.splitlines())
        most = max(most, open_in(repo.active_directory))
    assert most <= 8
    writers = [w.writer for w in repo._wals.values()]
    assert all(w is not None and w.pins == 0 for w in writers)
    before = {p.name: p.stat().st_size for p in repo.active_directory.iterdir()}
    calls = disk_fills_at_write(monkeypatch, 3)
    with pytest.raises(OverLimitsError, match="disk full"):
        repo.write_many([Block("Db", f"T{t}", fmt.KIND_METRIC, rows_for(9000 + t, 1), 1) for t in range(4)])
    monkeypatch.undo()
    assert calls[0] == 3
    assert {p.name: p.stat().st_size for p in repo.active_directory.iterdir()} == before
    assert all(w is not None and w.pins == 0 for w in writers)
    repo.rotate_all()
    assert stored(repo) == want


def test_pinning_several_is_all_or_nothing(tmp_path: Path) -> None:
    files = OpenFiles(8)
    a, b, c = (SegmentWriter(tmp_path / f"{n}.wal", FsyncPolicy.NEVER, files) for n in "abc")
    os.close(b.fd)
    files.forget(b)
    b.fd = -1
    b.path.unlink()  # its reopen fails
    with pytest.raises(VanishedSegmentError):
        files.acquire_all([a, b, c])
    assert (a.pins, b.pins, c.pins) == (0, 0, 0)
    files.acquire_all([a, c])
    assert (a.pins, c.pins) == (1, 1)
    files.release_all([a, c])
    assert (a.pins, c.pins) == (0, 0)
