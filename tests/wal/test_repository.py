"""The repository: rotation, limits, restart, import of transferred segments."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import InvalidInputError, InvalidNameError, OverLimitsError
from node.wal import format as fmt
from node.wal import repository
from node.wal.names import SegmentName
from node.wal.repository import Block, Repository, WalConfig, directory_stats
from node.wal.segment import FsyncPolicy, iter_rows
from node.wal.table import SegmentInfo
from tests.harness import tmpfs
from tests.wal.helpers import make_segment, rows_for, wal_stats, write_block


def _repo(path: Path, **kw: object) -> Repository:
    repo = Repository(WalConfig(path, **kw))  # type: ignore[arg-type]
    repo.start()
    return repo


def _all_rows(repo: Repository) -> bytes:
    return b"".join(b"".join(iter_rows(i.path)) for i in repo.closed_segments())


def test_rotation_at_max_size(tmp_path: Path) -> None:
    closed: list[SegmentInfo] = []
    repo = _repo(tmp_path, max_segment_size=4096)
    repo.add_listener(closed.append)
    written = []
    for i in range(200):
        v = rows_for(i)
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 3)
        written.append(v)
    repo.rotate_all()
    assert len(closed) > 3
    # closed at max size as written; compaction may then make the file smaller
    assert all(c.size + c.shrunk >= 4096 for c in closed[:-1])
    assert all(c.size + c.shrunk < 4096 + 1024 for c in closed)
    assert all(c.size == c.path.stat().st_size for c in closed)
    assert _all_rows(repo) == b"".join(written)
    ids = [c.name.segment_id for c in closed]
    assert ids == sorted(ids)


def test_rotation_at_max_age(tmp_path: Path) -> None:
    repo = _repo(tmp_path, max_segment_age=0.2)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"a\n", 1)
    assert repo.rotate_expired() == []
    time.sleep(0.25)
    [info] = repo.rotate_expired()
    assert info.rows == 1 and repo.closed_segments() == [info]


def test_a_close_that_fails_is_tried_again_and_does_not_keep_the_other_tables_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk as a segment is published (the rename, its directory fsync) used to leave the
    segment in active/ with its rows until a restart, and stopped the other tables' closes."""
    repo = _repo(tmp_path, max_segment_age=0.1)
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a1\n", 1)
    write_block(repo, "Db", "B", fmt.KIND_METRIC, b"b1\n", 1)
    time.sleep(0.15)
    real_rename = os.rename
    failing = {"A"}

    def rename(src: object, dst: object) -> None:
        if any(f"_{t}_" in str(dst) for t in failing):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        repo.rotate_expired()
    assert [i.name.table for i in repo.closed_segments()] == ["B"]  # B closed all the same
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a2\n", 1)  # taken: a new segment
    failing.clear()
    time.sleep(0.15)
    repo.rotate_expired()  # the first A, then the second
    a = [i for i in repo.closed_segments() if i.name.table == "A"]
    assert [i.rows for i in a] == [1, 1]
    assert b"".join(b"".join(iter_rows(i.path)) for i in a) == b"a1\na2\n"
    assert list((tmp_path / "active").iterdir()) == []


def test_one_active_segment_per_table_and_schema(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s1 = (("A", "string"),)
    s2 = (("A", "string"), ("B", "long"))
    for schema in (None, s1, s2, s1):
        write_block(repo, "Db", "T", fmt.KIND_LOG, b"x\n", 1, schema)
    write_block(repo, "Db", "U", fmt.KIND_LOG, b"x\n", 1)
    closed = repo.rotate_all()
    assert sorted(c.prefix for c in closed) == sorted(
        ["Db_T", f"Db_T_{closed[1].name.schema}", f"Db_T_{closed[2].name.schema}", "Db_U"])
    assert len({c.prefix for c in closed}) == 4


def test_max_disk_usage_refuses_writes_without_loss(tmp_path: Path) -> None:
    repo = _repo(tmp_path, max_disk_usage=20_000)
    accepted = []
    with pytest.raises(OverLimitsError):
        for i in range(10_000):
            v = rows_for(i, 5)
            write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 5)
            accepted.append(v)
    assert repo.disk_usage() <= 20_000
    assert repo.disk_usage() == sum(p.stat().st_size for p in tmp_path.rglob("*.wal"))
    repo.rotate_all()
    assert _all_rows(repo) == b"".join(accepted)
    repo.remove(repo.closed_segments())
    assert repo.disk_usage() == 0
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"again\n", 1)  # room again


def test_readiness_holds_after_a_refusal_only_until_something_is_freed(tmp_path: Path) -> None:
    """Issue 13: readiness says "over limits" only while the node is over them. A refused write
    held it 5 s even when an upload had freed room the moment after."""
    repo = _repo(tmp_path, max_disk_usage=20_000)
    def noise(seed: int) -> bytes:  # rows that do not compress much: ~8 KB in a segment
        return random.Random(seed).randbytes(4_000).hex().encode() + b"\n"

    write_block(repo, "Db", "A", fmt.KIND_METRIC, noise(1), 1)
    repo.rotate_all()
    write_block(repo, "Db", "B", fmt.KIND_METRIC, noise(2), 1)
    assert repo.over_limits() == ""
    with pytest.raises(OverLimitsError):
        write_block(repo, "Db", "C", fmt.KIND_METRIC, noise(3), 1)  # under the limit, but not with this
    assert "refused" in repo.over_limits()  # the hold: the next such write would be refused too
    write_block(repo, "Db", "B", fmt.KIND_METRIC, b"y\n", 1)  # writing more does not end it
    assert "refused" in repo.over_limits()
    repo.remove([s for s in repo.closed_segments() if s.name.table == "A"])  # an upload freed room
    assert repo.over_limits() == ""


def test_max_segment_count(tmp_path: Path) -> None:
    repo = _repo(tmp_path, max_segment_count=2)
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a\n", 1)
    write_block(repo, "Db", "B", fmt.KIND_METRIC, b"b\n", 1)
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a\n", 1)  # the active segment has room
    with pytest.raises(OverLimitsError):
        write_block(repo, "Db", "C", fmt.KIND_METRIC, b"c\n", 1)
    assert wal_stats(repo).segment_count == 2
    repo.remove(repo.rotate_all()[:1])
    write_block(repo, "Db", "C", fmt.KIND_METRIC, b"c\n", 1)


def test_write_many_is_all_or_nothing(tmp_path: Path) -> None:
    """A request whose tables would need more segments (or bytes) than are left writes none of
    them: a sender that retries the refused request then duplicates nothing."""
    repo = _repo(tmp_path, max_segment_count=2, max_disk_usage=64 * 1024)
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a\n", 1)
    usage = repo.disk_usage()
    with pytest.raises(OverLimitsError, match="segments"):
        repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a2\n", 1), Block("Db", "B", fmt.KIND_METRIC, b"b\n", 1),
                         Block("Db", "C", fmt.KIND_METRIC, b"c\n", 1)])
    with pytest.raises(OverLimitsError, match="max-disk-usage"):
        repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a3\n", 1),
                         Block("Db", "B", fmt.KIND_METRIC, os.urandom(70 * 1024), 1)])
    assert (repo.disk_usage(), wal_stats(repo).segment_count) == (usage, 1)
    repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a4\n", 1), Block("Db", "B", fmt.KIND_METRIC, b"b\n", 1)])
    assert wal_stats(repo).segment_count == 2
    assert _rows_of(repo) == {"A": b"a\na4\n", "B": b"b\n"}


def test_a_refused_name_is_refused_every_time_and_writes_nothing(tmp_path: Path) -> None:
    """Names are validated once and the table remembered (`Repository._route`): a name refused once
    must not be remembered as routed, and the request that carries it writes none of its blocks."""
    repo = _repo(tmp_path)
    for _ in range(2):
        with pytest.raises(InvalidNameError):
            repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a\n", 1),
                             Block("Db", "../B", fmt.KIND_METRIC, b"b\n", 1)])
        assert wal_stats(repo).segment_count == 0
    repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a\n", 1)])
    repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a2\n", 1)])
    assert _rows_of(repo) == {"A": b"a\na2\n"}


def _rows_of(repo: Repository) -> dict[str, bytes]:
    repo.rotate_all()
    return {i.name.table: b"".join(iter_rows(i.path)) for i in repo.closed_segments()}


def test_restart_recovers_active_and_closed_segments(tmp_path: Path) -> None:
    repo = _repo(tmp_path, max_segment_size=2048)
    written = []
    for i in range(50):
        v = rows_for(i)
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 3)
        written.append(v)
    usage = repo.disk_usage()
    # no stop(): the active segment is left open, as after kill -9
    again = _repo(tmp_path, max_segment_size=2048)
    assert again.disk_usage() == usage
    assert _all_rows(again) == b"".join(written)
    assert sum(i.rows for i in again.closed_segments()) == 150


def test_import_segment_verifies_every_block_first(tmp_path: Path) -> None:
    src = tmp_path / "src.wal"
    ends = make_segment(src, [rows_for(i) for i in range(3)])
    data = src.read_bytes()
    repo = _repo(tmp_path / "wal")
    bad = bytearray(data)
    bad[ends[1] + 9] ^= 1  # third block's payload
    with pytest.raises(InvalidInputError, match="CRC"):
        repo.import_segment("Db_T", bytes(bad))
    with pytest.raises(InvalidInputError):
        repo.import_segment("Db_T", data[:-3])
    with pytest.raises(InvalidInputError):
        repo.import_segment("Db_T", fmt.MAGIC)
    with pytest.raises(InvalidNameError):
        repo.import_segment("../Db_T", data)
    assert list((tmp_path / "wal").rglob("*")) == [tmp_path / "wal" / "active"]
    info = repo.import_segment("Db_T", data)
    assert info.blocks == 3 and info.rows == 9
    assert b"".join(iter_rows(info.path)) == b"".join(rows_for(i) for i in range(3))
    assert repo.closed_segments("Db_T") == [info]
    assert repo.disk_usage("Db") == len(data)


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_fsync_policies_write_the_same_bytes(tmp_path: Path, policy: FsyncPolicy) -> None:
    repo = _repo(tmp_path, fsync=policy)
    for i in range(5):
        write_block(repo, "Db", "T", fmt.KIND_METRIC, rows_for(i), 3)
    [info] = repo.stop()
    assert b"".join(iter_rows(info.path)) == b"".join(rows_for(i) for i in range(5))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        yield mnt


def test_full_disk_is_over_limits_and_loses_nothing(tiny_fs: Path) -> None:
    repo = _repo(tiny_fs / "wal", max_segment_size=64 * 1024)
    accepted = []
    incompressible = os.urandom(3000).hex().encode()
    with pytest.raises(OverLimitsError, match="disk full"):
        for i in range(1000):
            v = rows_for(i) + incompressible + b"\n"
            write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 4)
            accepted.append(v)
    assert len(accepted) > 10
    assert repo.disk_usage() == sum(p.stat().st_size for p in (tiny_fs / "wal").rglob("*.wal"))
    again = _repo(tiny_fs / "wal")
    assert _all_rows(again) == b"".join(accepted)


def test_active_segments_live_apart_until_closed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"a\n", 1)
    assert [p.parent.name for p in tmp_path.rglob("*.wal")] == ["active"]
    [info] = repo.rotate_all()
    assert info.path.parent == tmp_path
    assert [p.parent for p in tmp_path.rglob("*.wal")] == [tmp_path]


def test_writer_process_and_supervisor_share_a_directory(tmp_path: Path) -> None:
    supervisor = _repo(tmp_path)
    writer = Repository(WalConfig(tmp_path, worker=1))
    writer.start(recover=False)
    write_block(writer, "Db", "T", fmt.KIND_METRIC, b"a\n", 1)
    assert supervisor.refresh() == []  # active segments are not for upload
    writer.rotate_all()
    assert writer.closed_segments() == [] and writer.disk_usage() == 0
    [found] = supervisor.refresh()
    assert found.prefix == "Db_T" and supervisor.disk_usage() == found.size
    assert supervisor.refresh() == []
    assert b"".join(iter_rows(found.path)) == b"a\n"


def test_supervisor_adopts_the_active_segments_of_a_dead_writer(tmp_path: Path) -> None:
    from node.wal.names import host_id, segment_host
    supervisor = _repo(tmp_path)
    writers = []
    for worker in (1, 2):
        w = Repository(WalConfig(tmp_path, worker=worker))
        w.start(recover=False)
        write_block(w, "Db", "T", fmt.KIND_METRIC, f"w{worker}\n".encode(), 1)
        writers.append(w)
    # writer 1 "dies" with a torn tail in its active segment
    [active1] = [p for p in (tmp_path / "active").iterdir()
                 if segment_host(p.name.rsplit("_", 1)[1][:16]) == host_id("node", 1)]
    with open(active1, "ab") as f:
        f.write(b"\x00\x00\x01")
    [adopted] = supervisor.recover_active(host_id("node", 1))
    assert adopted.path.parent == tmp_path and adopted.rows == 1
    assert b"".join(iter_rows(adopted.path)) == b"w1\n"
    assert len(list((tmp_path / "active").iterdir())) == 1  # writer 2's is left alone


def test_per_database_share_blocks_only_that_database(tmp_path: Path) -> None:
    repo = _repo(tmp_path, max_disk_usage_per_database=8000)
    with pytest.raises(OverLimitsError, match="database Slow"):
        for i in range(1000):
            write_block(repo, "Slow", "T", fmt.KIND_METRIC, rows_for(i, 5), 5)
    assert repo.disk_usage("Slow") <= 8000
    for i in range(50):  # another database is not affected
        write_block(repo, "Fast", "T", fmt.KIND_METRIC, rows_for(i, 1), 1)
    assert repo.disk_usage("Fast") > 0
    repo.blocked_databases = frozenset({"Fast"})
    with pytest.raises(OverLimitsError, match="database Fast"):
        write_block(repo, "Fast", "T", fmt.KIND_METRIC, b"x\n", 1)


def test_a_segment_being_removed_is_never_indexed_again_by_a_refresh(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 12): `remove` dropped a segment from the index, then unlinked it outside the
    lock; a `refresh` (another receiver process published segments) in between saw the file still on
    disk and indexed it again: a ghost that every later upload failed on with ENOENT."""
    repo = _repo(tmp_path)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"a\n", 1)
    [info] = repo.rotate_all()
    refreshed: list[threading.Thread] = []
    real_unlink = Path.unlink

    def unlink_after_a_refresh(self: Path, missing_ok: bool = False) -> None:
        if self == info.path and not refreshed:  # force the interleaving: a refresh runs in the window
            t = threading.Thread(target=repo.refresh)
            refreshed.append(t)
            t.start()
            t.join(1.0)  # the fixed code holds the index lock here, so the refresh waits for it
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_after_a_refresh)
    repo.remove([info])
    refreshed[0].join(5.0)
    assert not refreshed[0].is_alive()
    assert not info.path.exists()
    assert repo.closed_segments() == []
    assert repo.disk_usage() == 0 and wal_stats(repo).segment_count == 0


def test_a_request_the_disk_fills_in_the_middle_of_leaves_nothing(tiny_fs: Path) -> None:
    """Regression (issue 12): a request of several tables whose last block met a full disk was
    refused, but the blocks appended before it stayed: a client that retried it got them twice."""
    repo = _repo(tiny_fs / "wal")
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a0\n", 1)
    write_block(repo, "Db", "B", fmt.KIND_METRIC, b"b0\n", 1)
    usage = repo.disk_usage()
    too_big = os.urandom(400 * 1024).hex().encode()  # incompressible, over the 256 KiB volume
    with pytest.raises(OverLimitsError, match="disk full"):
        repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a1\n", 1), Block("Db", "B", fmt.KIND_METRIC, b"b1\n", 1),
                         Block("Db", "C", fmt.KIND_METRIC, too_big, 1)])
    assert repo.disk_usage() == usage == sum(p.stat().st_size for p in (tiny_fs / "wal").rglob("*.wal"))
    assert wal_stats(repo).segment_count == 2
    repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a2\n", 1), Block("Db", "C", fmt.KIND_METRIC, b"c2\n", 1)])
    assert _rows_of(repo) == {"A": b"a0\na2\n", "B": b"b0\n", "C": b"c2\n"}
    again = _repo(tiny_fs / "wal")  # and what a restart reads
    assert sorted(b"".join(iter_rows(i.path)) for i in again.closed_segments()) == [b"a0\na2\n", b"b0\n", b"c2\n"]


def test_undoing_a_request_that_opened_the_segment_removes_the_segment(tiny_fs: Path) -> None:
    repo = _repo(tiny_fs / "wal")
    with pytest.raises(OverLimitsError, match="disk full"):
        repo.write_many([Block("Db", "A", fmt.KIND_METRIC, b"a1\n", 1),
                         Block("Db", "C", fmt.KIND_METRIC, os.urandom(400 * 1024).hex().encode(), 1)])
    assert (repo.disk_usage(), wal_stats(repo).segment_count) == (0, 0)
    assert list((tiny_fs / "wal").rglob("*.wal")) == []


def test_concurrent_requests_over_shared_tables_neither_deadlock_nor_interleave(tmp_path: Path) -> None:
    """Requests hold their tables' locks in one order: two threads writing the same tables in
    opposite orders finish, and every block is whole."""
    repo = _repo(tmp_path, max_segment_size=8192)
    errors: list[BaseException] = []

    def writer(order: list[str], tag: str) -> None:
        try:
            for i in range(300):
                repo.write_many([Block("Db", t, fmt.KIND_METRIC, f"{tag}{i}\n".encode(), 1) for t in order])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(["A", "B", "C"], "x")),
               threading.Thread(target=writer, args=(["C", "B", "A"], "y"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    rows = _rows_of_all(repo)
    for table in "ABC":
        assert sorted(rows[table]) == sorted([f"x{i}".encode() for i in range(300)] +
                                             [f"y{i}".encode() for i in range(300)])


def _rows_of_all(repo: Repository) -> dict[str, list[bytes]]:
    repo.rotate_all()
    out: dict[str, list[bytes]] = {}
    for i in repo.closed_segments():
        out.setdefault(i.name.table, []).extend(b"".join(iter_rows(i.path)).splitlines())
    return out


def test_min_free_disk_refuses_writes_before_the_volume_is_full(tiny_fs: Path) -> None:
    """The WAL stops while the volume still has `min_free_disk` free: the uploads that free it (the
    local sink's store shares the volume), delivery records and the ledger keep room to work."""
    repo = _repo(tiny_fs / "wal", min_free_disk=128 * 1024, max_segment_size=16 * 1024)
    incompressible = os.urandom(2000).hex().encode()
    accepted = []
    with pytest.raises(OverLimitsError, match="min-free-disk"):
        for i in range(1000):
            v = rows_for(i) + incompressible + b"\n"
            write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 4)
            accepted.append(v)
    st = os.statvfs(tiny_fs)
    assert st.f_bavail * st.f_frsize >= 128 * 1024 - 8192  # the floor held (give or take a block)
    assert repo.over_limits() != ""  # not ready: the node says why
    repo.rotate_all()
    repo.remove(repo.closed_segments())  # uploaded: room again
    assert repo.over_limits() == "" or "refused" in repo.over_limits()
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"after\n", 1)
    assert len(accepted) > 5


def test_a_refresh_between_a_close_and_its_indexing_counts_the_segment_once(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment this process closes is renamed into the directory, then indexed: a refresh (for
    the other receivers' segments) in between indexed it first, and its bytes were counted twice
    (disk usage drifting up until writes were refused for limits that were not reached)."""
    import node.wal.table as table_mod

    repo = _repo(tmp_path)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"a\n", 1)
    real_rename = os.rename

    def rename_then_refresh(src: str | Path, dst: str | Path) -> None:
        real_rename(src, dst)
        t = threading.Thread(target=repo.refresh)
        t.start()
        t.join(5)

    monkeypatch.setattr(table_mod.os, "rename", rename_then_refresh)
    [info] = repo.rotate_all()
    monkeypatch.undo()
    assert repo.closed_segments() == [info]
    assert repo.disk_usage() == info.size and wal_stats(repo).segment_count == 1
    repo.remove([info])
    assert (repo.disk_usage(), wal_stats(repo).segment_count) == (0, 0)


def test_ten_thousand_tables_fit_the_default_segment_limit_across_a_closing(tmp_path: Path) -> None:
    # At a closing every table holds two segments (the closed one waiting for its upload, the next
    # one): with adx-mon's default of 10,000 the second round of a 10,000-table node was refused.
    wal = Repository(WalConfig(directory=tmp_path / "wal", max_segment_age=3600))
    wal.start()
    row = b"2026-11-24T04:00:00Z,1,{},1.5\n"
    for _ in range(2):
        wal.write_many([Block("Metrics", f"T{i}", fmt.KIND_METRIC, row, 1) for i in range(10_000)])
        assert len(wal.rotate_all(compact=False)) == 10_000
    assert wal.over_limits() == ""
    assert len(wal.closed_segments()) == 20_000


@pytest.mark.parametrize("closing", ["stop", "leave"])
def test_stop_does_not_wait_behind_a_burst_of_expired_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                closing: str) -> None:
    # Segments of many tables expire together, and each closing (compaction, fsyncs) takes a while.
    # A stop taking the tables' locks one by one trailed the rotation through every table (156 s
    # with 10,000 tables); now the rotation ends after the table it is closing and stop closes the
    # rest as they are. A leave's closing of every table at once is the same.
    import node.wal.table as table

    slow = table.compact

    def compact(*args: object) -> object:
        time.sleep(0.02)
        return slow(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(table, "compact", compact)
    # No fsyncs, so that the figure is the wait alone, not stop's own closing of the rest. Every
    # table's block straight into its segment (no journal), so that all 300 expire at once.
    wal = Repository(WalConfig(directory=tmp_path / "wal", max_segment_age=0.0, fsync=FsyncPolicy.NEVER,
                               journal_tables=0))
    wal.start()
    row = b"2026-11-24T04:00:00Z,1,{},1.5\n"
    wal.write_many([Block("Metrics", f"T{i}", fmt.KIND_METRIC, row, 1) for i in range(300)])
    rotating = threading.Thread(target=wal.rotate_expired)
    rotating.start()
    while len(wal.closed_segments()) < 5:
        time.sleep(0.005)
    t0 = time.monotonic()
    if closing == "stop":
        wal.stop()
    else:  # a leave closes every table at once as well, and goes on taking no new data
        wal.rotate_all(compact=False)
    took = time.monotonic() - t0
    rotating.join(5)
    assert not rotating.is_alive()
    assert took < 1.5, f"stop took {took:.2f}s behind the rotation"
    assert len(wal.closed_segments()) == 300
    assert list((tmp_path / "wal" / "active").iterdir()) == []


def test_closing_every_table_at_once_syncs_the_file_system_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A stop or a leave closes every table's segment: one sync of the file system for them all,
    # not an fsync per file and two per directory (10,000 tables: 80 s here under load, against a
    # promise of 10 s). Every segment is still closed, announced and whole.
    import node.wal.repository as repository
    import node.wal.segment as segment
    import node.wal.table as table

    fsyncs: list[int] = []
    syncs: list[Path] = []
    real_fsync = os.fsync
    monkeypatch.setattr(segment.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(segment, "fsync_dir", lambda d: fsyncs.append(-1))
    monkeypatch.setattr(table, "fsync_dir", lambda d: fsyncs.append(-1))
    import node.storage as storage

    real_sync = getattr(storage, "sync_filesystem", os.sync)
    monkeypatch.setattr(repository, "sync_filesystem", lambda d: (syncs.append(d), real_sync(d))[1],
                        raising=False)
    wal = Repository(WalConfig(directory=tmp_path / "wal", max_segment_age=3600))
    wal.start()
    announced: list[SegmentInfo] = []
    wal.add_listener(announced.append)
    row = b"2026-11-24T04:00:00Z,1,{},1.5\n"
    wal.write_many([Block("Metrics", f"T{i}", fmt.KIND_METRIC, row, 1) for i in range(500)])
    fsyncs.clear()  # those of the start
    closed = wal.stop()
    assert (len(closed), len(announced), fsyncs, syncs) == (500, 500, [], [tmp_path / "wal"])
    assert list((tmp_path / "wal" / "active").iterdir()) == []
    assert sorted(i.name.table for i in wal.closed_segments()) == sorted(f"T{i}" for i in range(500))
    assert all(list(iter_rows(i.path)) == [row] for i in closed)


def test_a_failed_close_of_a_table_written_no_more_is_published_at_the_next_tick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rotate_expired looks at each table without its lock first: a table with no active segment
    but a closing left to publish is not skipped."""
    repo = _repo(tmp_path, max_segment_age=0.1)
    write_block(repo, "Db", "A", fmt.KIND_METRIC, b"a1\n", 1)
    time.sleep(0.15)
    real_rename = os.rename

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(OSError):
        repo.rotate_expired()
    assert repo.closed_segments() == []
    monkeypatch.setattr(os, "rename", real_rename)
    [info] = repo.rotate_expired()
    assert info.rows == 1 and list(iter_rows(info.path)) == [b"a1\n"]
    assert list((tmp_path / "active").iterdir()) == []


def test_directory_stats_reads_each_name_once_and_its_cache_is_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    for t in range(6):
        write_block(repo, "Db", f"T{t}", fmt.KIND_METRIC, b"a\n", 1)
    (tmp_path / "not_a_segment.wal").write_bytes(b"x")
    monkeypatch.setattr(repository, "_PREFIXES", {})
    monkeypatch.setattr(repository, "MAX_CACHED_PREFIXES", 4)
    calls = [0]
    real = repository.parse_filename

    def counted(name: str) -> SegmentName:
        calls[0] += 1
        return real(name)

    monkeypatch.setattr(repository, "parse_filename", counted)
    first = directory_stats(tmp_path)
    assert sorted(first.active) == [f"Db_T{t}" for t in range(6)] and first.closed == {}
    assert len(repository._PREFIXES) <= 4  # cleared as it filled, never over the bound
    calls[0] = 0
    monkeypatch.setattr(repository, "MAX_CACHED_PREFIXES", 100)
    directory_stats(tmp_path)
    parsed = calls[0]
    assert directory_stats(tmp_path) == first and calls[0] == parsed + 1  # only the non-segment again


def test_a_write_does_not_wait_for_the_closing_of_its_tables_expired_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick closes expired segments (a compaction, fsyncs: milliseconds each, 10,000 of them
    at once with 10,000 tables); a request to such a table writes into its next segment meanwhile
    instead of waiting under the table's lock (on the event loop, for small requests)."""
    from node.wal import table as table_module

    repo = _repo(tmp_path, max_segment_age=0.1)
    write_block(repo, "Db", "T", fmt.KIND_METRIC, b"a1\n", 1)
    time.sleep(0.15)
    compacting, finish = threading.Event(), threading.Event()
    real_compact = table_module.compact

    def slow_compact(*args: object, **kwargs: object) -> object:
        compacting.set()
        assert finish.wait(10)
        return real_compact(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(table_module, "compact", slow_compact)
    ticking = threading.Thread(target=repo.rotate_expired)
    ticking.start()
    assert compacting.wait(5)
    writing = threading.Thread(target=write_block, args=(repo, "Db", "T", fmt.KIND_METRIC, b"a2\n", 1))
    writing.start()
    writing.join(2)
    written = not writing.is_alive()
    finish.set()
    ticking.join(10)
    writing.join(10)
    assert written, "the write waited for the closing of the expired segment"
    [first] = repo.closed_segments()
    assert list(iter_rows(first.path)) == [b"a1\n"]
    [second] = repo.rotate_all()
    assert list(iter_rows(second.path)) == [b"a2\n"] and second.name.segment_id > first.name.segment_id
