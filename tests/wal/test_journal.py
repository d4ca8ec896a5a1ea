"""The WAL journal (node/wal/journal.py): a request of many tables is one block of a journal, split
into its tables' segments by a round; every acknowledged row lands exactly once, through a crash at
any point of the round, a dead writer process, a full disk."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.errors import InvalidNameError, OverLimitsError
from node.storage import ACTIVE_DIR
from node.wal import format as fmt
from node.wal import journal, repository
from node.wal.names import host_id, parse_filename, segment_host
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import FsyncPolicy, iter_rows, scan
from node.wal.table import TableWal
from tests.harness import fill, tmpfs
from tests.wal.helpers import killed_at_random, wal_stats
from tests.wal.journal_writer import DATABASE, TABLES, request, rows, table_name

ROOT = Path(__file__).resolve().parents[2]
Make = Callable[..., Repository]


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    """Started repositories whose background splitter never runs a round by itself (the tests call
    `split_journal`); stopped at the end."""
    monkeypatch.setattr(repository, "JOURNAL_ROUND_SECONDS", 1e6)
    made: list[Repository] = []

    def _make(directory: Path, **kw: object) -> Repository:
        repo = Repository(WalConfig(directory, **kw))  # type: ignore[arg-type]
        repo.start()
        made.append(repo)
        return repo

    yield _make
    for repo in made:
        with contextlib.suppress(Exception):  # a directory a test took away (a full volume unmounted)
            repo.stop()


def _expected(tags: list[str], tables: int = TABLES) -> Counter[bytes]:
    want: Counter[bytes] = Counter()
    for tag in tags:
        for t in range(tables):
            want.update(rows(tag, t)[0].splitlines())
    return want


def _lines(paths: list[Path]) -> Counter[bytes]:
    got: Counter[bytes] = Counter()
    for p in paths:
        for value in iter_rows(p):
            got.update(value.splitlines())
    return got


def _closed_lines(repo: Repository) -> Counter[bytes]:
    return _lines([i.path for i in repo.closed_segments()])


def _files(directory: Path, pattern: str) -> list[Path]:
    return sorted((directory / ACTIVE_DIR).glob(pattern))


def _leftovers(directory: Path) -> list[str]:
    """What a recovered directory must not hold in active/: journals, manifests, temporary files,
    active segments (a start closes them all)."""
    return sorted(p.name for p in (directory / ACTIVE_DIR).iterdir())


def _diff(got: Counter[bytes], want: Counter[bytes]) -> str:
    lost = sorted(want - got)
    twice = sorted(k for k, n in got.items() if n > 1)
    extra = sorted(k for k in got - want if got[k] == 1)
    return f"lost {len(lost)} {lost[:3]}, twice {len(twice)} {twice[:3]}, unexpected {len(extra)} {extra[:3]}"


# -- the journal's way ---------------------------------------------------------------------------


def test_a_request_of_many_tables_goes_through_the_journal_and_its_round(tmp_path: Path, make: Make) -> None:
    wal = tmp_path / "wal"
    repo = make(wal)
    repo.write_many(request("r0"))
    [j] = _files(wal, "*.journal")
    assert journal.read(j).error is None and len(journal.read(j).entries) == TABLES
    assert _files(wal, "*.wal") == [] and repo.closed_segments() == []  # no table's segment holds a row yet
    assert repo.disk_usage() == j.stat().st_size  # the journal's bytes are counted while it is there

    assert repo.split_journal() == 1
    assert _files(wal, "*.journal") == [] and _files(wal, "*.manifest*") == []
    active = _files(wal, "*.wal")
    assert len(active) == TABLES
    assert _lines(active) == _expected(["r0"])
    assert repo.disk_usage() == sum(p.stat().st_size for p in active)
    assert repo.split_journal() == 0  # nothing left to split

    repo.rotate_all()
    closed = repo.closed_segments()
    assert len(closed) == TABLES and _files(wal, "*") == []
    assert _closed_lines(repo) == _expected(["r0"])
    for info in closed:  # each table's rows in its own segment
        assert {line.split(b",")[1] for v in iter_rows(info.path) for line in v.splitlines()} == \
            {str(int(info.name.table[1:])).encode()}
    assert repo.disk_usage() == sum(i.path.stat().st_size for i in closed) == sum(i.size for i in closed)
    assert wal_stats(repo).segment_count == TABLES


@pytest.mark.parametrize(("journal_tables", "tables", "journaled"),
                         [(100, 99, False), (100, 100, True), (32, 32, True), (0, 100, False)])
def test_only_requests_of_journal_tables_tables_or_more_use_the_journal(
        tmp_path: Path, make: Make, journal_tables: int, tables: int, journaled: bool) -> None:
    wal = tmp_path / "wal"
    repo = make(wal, journal_tables=journal_tables)
    repo.write_many(request("r0", tables))
    assert len(_files(wal, "*.journal")) == journaled
    in_segments = _lines(_files(wal, "*.wal"))
    assert in_segments == (Counter() if journaled else _expected(["r0"], tables))
    repo.rotate_all()
    assert _closed_lines(repo) == _expected(["r0"], tables)


def test_a_round_writes_one_block_per_table_for_all_its_requests(tmp_path: Path, make: Make) -> None:
    wal = tmp_path / "wal"
    repo = make(wal)
    tags = [f"r{i}" for i in range(6)]
    for tag in tags:
        repo.write_many(request(tag))
    assert len(_files(wal, "*.journal")) == 1  # six requests, one journal
    assert repo.split_journal() == 1
    segments = _files(wal, "*.wal")
    assert len(segments) == TABLES
    for path in segments:
        t = int(parse_filename(path.name).table[1:])
        want = [rows(tag, t) for tag in tags]
        found = scan(path)
        assert found.error is None
        assert (found.blocks, found.rows) == (1, sum(n for _, n in want)), path.name
        assert list(iter_rows(path)) == [b"".join(data for data, _ in want)]  # in the requests' order


def test_under_always_a_round_is_made_durable_at_once_before_its_commit(
        tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--wal-fsync always`: a round of 100 tables made 100 fsyncs, one a block (at 10,000 tables
    a round took 6 times as long, and many seconds on a disk whose fsync takes milliseconds). Its
    appends are now made durable by one syncfs of the file system, before the journal is deleted."""
    wal = tmp_path / "wal"
    repo = make(wal, fsync=FsyncPolicy.ALWAYS)
    for tag in ("a", "b"):
        repo.write_many(request(tag))
    events: list[str] = []
    real_fsync, real_syncfs, real_unlink = os.fsync, repository.sync_filesystem, Path.unlink

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def syncfs(directory: Path) -> None:
        events.append("syncfs")
        real_syncfs(directory)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(journal.SUFFIX):
            events.append("commit")
        real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        m.setattr(repository, "sync_filesystem", syncfs)
        m.setattr(Path, "unlink", unlink)
        assert repo.split_journal() == 1
    assert events.count("syncfs") == 1 and events.index("syncfs") < events.index("commit"), events
    assert events.count("fsync") <= 4, f"{events.count('fsync')} fsyncs for a round of {TABLES} tables"
    assert _lines(_files(wal, "*.wal")) == _expected(["a", "b"])


def test_the_background_round_and_stop_split_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository, "JOURNAL_ROUND_SECONDS", 0.1)
    wal = tmp_path / "wal"
    repo = Repository(WalConfig(wal))
    repo.start()
    try:
        repo.write_many(request("bg"))
        assert _files(wal, "*.journal")
        deadline = time.monotonic() + 5
        while _files(wal, "*.journal") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _files(wal, "*.journal") == [], "the background round did not split the journal"
        assert _lines(_files(wal, "*.wal")) == _expected(["bg"])
        repo.write_many(request("st"))
    finally:
        repo.stop()  # splits what the journal still holds
    assert _files(wal, "*") == []
    again = Repository(WalConfig(wal))
    again.start()
    assert _closed_lines(again) == _expected(["bg", "st"])


# -- a crash at each step of a round, in this process ----------------------------------------------

PRE_TABLES = 20
"""Tables that hold rows in their active segments before the round (a request of one table each):
a round killed part way must cut them back to those rows, not to nothing."""


def _prefill(repo: Repository) -> Counter[bytes]:
    want: Counter[bytes] = Counter()
    for t in range(PRE_TABLES):
        data, n = rows("pre", t)
        repo.write_many([Block(DATABASE, table_name(t), fmt.KIND_LOG, data, n)])
        want.update(data.splitlines())
    return want


def _check_recovered(directory: Path, want: Counter[bytes]) -> str:
    """Start a repository on a copy of a killed process's directory; "" when every row is there once."""
    repo = Repository(WalConfig(directory))
    repo.start()
    got = _closed_lines(repo)
    problems = []
    if got != want:
        problems.append(_diff(got, want))
    if left := _leftovers(directory):
        problems.append(f"left in active/: {left}")
    again = Repository(WalConfig(directory))  # a second start changes nothing
    again.start()
    if (got2 := _closed_lines(again)) != want:
        problems.append(f"after a second start: {_diff(got2, want)}")
    return "; ".join(problems)


def _torn(src: Path, dst: Path, pattern: str) -> None:
    """A copy of `src` as if the process had been killed while writing one more block into each
    file of `pattern` (a block header announcing more bytes than follow)."""
    shutil.copytree(src, dst)
    for p in _files(dst, pattern):
        with open(p, "ab") as f:
            f.write(fmt.BLOCK_HEADER.pack(4096, 0) + b"torn")


def test_a_kill_at_any_step_of_a_round_loses_no_row_and_doubles_none(
        tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = tmp_path / "wal"
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    repo = make(wal)
    want = _prefill(repo)
    tags = ["a", "b", "c"]
    for tag in tags:
        repo.write_many(request(tag))
    want += _expected(tags)
    taken: list[str] = []

    def snapshot(label: str) -> None:
        shutil.copytree(wal, snaps / label)
        taken.append(label)

    snapshot("before-round")
    _torn(wal, snaps / "torn-request", "*.journal")  # a fourth request killed as it was written
    taken.append("torn-request")

    real_manifest, real_replace, real_append, real_unlink = (
        journal.write_manifest, os.replace, TableWal.append_held, Path.unlink)
    appends = [0]

    def write_manifest(*args: object, **kwargs: object) -> Path:
        snapshot("segments-opened")  # the new tables' segments exist (magic only), no manifest yet
        path = real_manifest(*args, **kwargs)  # type: ignore[arg-type]
        snapshot("manifest-written")
        return path

    def replace(src: object, dst: object) -> None:
        if str(dst).endswith(journal.MANIFEST_SUFFIX):
            snapshot("manifest-tmp")
        real_replace(src, dst)  # type: ignore[arg-type]

    def append_held(self: TableWal, *args: object, **kwargs: object) -> int:
        n = real_append(self, *args, **kwargs)  # type: ignore[arg-type]
        appends[0] += 1
        if appends[0] in (1, PRE_TABLES + 1, TABLES - 1):
            snapshot(f"after-append-{appends[0]}")
        if appends[0] == 10:
            _torn(wal, snaps / "torn-append-11", "*.wal")  # killed in the middle of the 11th append
            taken.append("torn-append-11")
        return n

    def unlink(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        if self.name.endswith(journal.SUFFIX):
            snapshot("journal-deleted")  # the commit; the manifest is still there

    with monkeypatch.context() as m:
        m.setattr(journal, "write_manifest", write_manifest)
        m.setattr(os, "replace", replace)
        m.setattr(TableWal, "append_held", append_held)
        m.setattr(Path, "unlink", unlink)
        assert repo.split_journal() == 1
    snapshot("round-done")
    assert appends[0] == TABLES
    assert taken == ["before-round", "torn-request", "segments-opened", "manifest-tmp", "manifest-written",
                     "after-append-1", "torn-append-11", f"after-append-{PRE_TABLES + 1}",
                     f"after-append-{TABLES - 1}", "journal-deleted", "round-done"]
    assert list((snaps / "journal-deleted" / ACTIVE_DIR).glob("*.manifest"))  # the state the label says
    assert not list((snaps / "journal-deleted" / ACTIVE_DIR).glob("*.journal"))
    failures = {label: problem for label in taken if (problem := _check_recovered(snaps / label, want))}
    assert failures == {}


def test_a_kill_while_a_start_splits_a_killed_rounds_journal_again(
        tmp_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start undoes a round killed part way, then splits its journal again; killed in turn in the
    middle of that, the next start must still end with every row once."""
    wal = tmp_path / "wal"
    repo = make(wal)
    want = _prefill(repo)
    repo.write_many(request("a"))
    want += _expected(["a"])
    real_append = TableWal.append_held
    calls = [0]
    killed = tmp_path / "killed"
    killed.mkdir()
    second = tmp_path / "second"
    source = [wal]  # the directory being written when the "kill" comes

    def append_held(self: TableWal, *args: object, **kwargs: object) -> int:
        n = real_append(self, *args, **kwargs)  # type: ignore[arg-type]
        calls[0] += 1
        if calls[0] == 25:
            shutil.copytree(source[0], killed / str(len(list(killed.iterdir()))))
        return n

    with monkeypatch.context() as m:
        m.setattr(TableWal, "append_held", append_held)
        repo.split_journal()  # snapshot killed/0: the round killed after 25 appends
        shutil.copytree(killed / "0", second)
        assert list((second / ACTIVE_DIR).glob("*.manifest"))
        calls[0], source[0] = 0, second
        Repository(WalConfig(second)).start()  # its replay killed after 25 appends: killed/1
    assert sorted(p.name for p in killed.iterdir()) == ["0", "1"]
    assert _check_recovered(killed / "1", want) == ""


# -- kill -9 at random moments ---------------------------------------------------------------------


def _recovered(directory: Path) -> Counter[bytes]:
    repo = Repository(WalConfig(directory))
    report = repo.start()
    assert report.ignored == []
    got = _closed_lines(repo)
    assert _leftovers(directory) == []
    repo.remove(repo.closed_segments())  # verified: dropped, as an uploader would
    return got


def test_sigkill_during_journaled_writes_and_rounds_keeps_every_acked_row_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("JOURNAL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"journal crash test seed {seed} (JOURNAL_CRASH_SEED={seed} replays it)")
    seen: set[bytes] = set()
    acked_total = 0
    left: Counter[str] = Counter()  # what the kills left in active/: journals, manifests (killed in a round)
    for run in range(30):
        out = killed_at_random("tests.wal.journal_writer", ["loop", str(tmp_path), str(run)], rng, 0.15)
        acked = [line.decode() for line in out]
        acked_total += len(acked)
        left.update({p.name.rsplit(".", 1)[-1] for p in (tmp_path / ACTIVE_DIR).iterdir()})
        got = _recovered(tmp_path)
        twice = sorted(k for k, n in got.items() if n > 1)
        assert not twice, f"seed {seed}, run {run}: rows twice {twice[:3]}"
        again = seen & set(got)
        assert not again, f"seed {seed}, run {run}: rows of an earlier run again {sorted(again)[:3]}"
        seen |= set(got)
        missing = _expected(acked) - got
        assert not missing, f"seed {seed}, run {run}: lost acknowledged rows {sorted(missing)[:3]}"
        # a request is one journal block: one killed before its acknowledgement is all there or not at all
        requests = {line.split(b",")[0].decode() for line in got}
        partial = _expected(sorted(requests)) - got
        assert not partial, f"seed {seed}, run {run}: part of a request {sorted(partial)[:3]}"
    print(f"{acked_total} requests acknowledged; runs that left files of each kind: {dict(left)}")
    assert acked_total > 100
    assert left["journal"] > 0  # kills came while acknowledged requests waited in a journal


# -- a writer process that died --------------------------------------------------------------------


@pytest.mark.parametrize("k", [-1, 0, 7])
def test_a_dead_writers_journal_is_split_by_the_supervisor(tmp_path: Path, make: Make, k: int) -> None:
    """k < 0: killed with its journal unsplit; else killed in a round, before its k-th append."""
    wal = tmp_path / "wal"
    supervisor = make(wal)
    mine = b"sup,0,0,\n"
    supervisor.write_many([Block(DATABASE, table_name(0), fmt.KIND_LOG, mine, 1)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.wal.journal_writer", "die", str(wal), str(k), "3"],
                          capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    acked = done.stdout.decode().splitlines()
    assert len(acked) == 7 and "round finished" not in acked
    host = host_id("node", 1)
    left = _files(wal, "*.journal")
    assert left and all(segment_host(journal.journal_id(p)) == host for p in left)  # it left its journal
    assert bool(_files(wal, "*.manifest")) == (k >= 0)

    found = supervisor.recover_active(host)
    assert found
    assert _files(wal, "*.journal") == [] and _files(wal, "*.manifest*") == []
    supervisor.rotate_all()
    assert _files(wal, "*") == []
    want = _expected([a for a in acked if a != "w1-small"]) + Counter([b"w1-small,0,0,", mine.strip()])
    got = _closed_lines(supervisor)
    assert got == want, _diff(got, want)
    assert supervisor.disk_usage() == sum(i.path.stat().st_size for i in supervisor.closed_segments())


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("leave", "prefill"), [(0, True), (4096, True), (0, False)],
                         ids=["no-room-for-the-manifest", "no-room-for-the-appends", "no-room-for-new-segments"])
def test_a_round_on_a_full_disk_leaves_nothing_half_done_and_is_tried_again(
        tmp_path: Path, make: Make, leave: int, prefill: bool) -> None:
    with tmpfs(tmp_path / "vol", "4m") as vol:
        wal = vol / "wal"
        repo = make(wal)
        rng = random.Random(7)
        want: Counter[bytes] = Counter()
        for t in range(TABLES if prefill else 0):  # an active segment for every table, partly in its last page
            data = f"pre,{t},0,\n".encode()
            repo.write_many([Block(DATABASE, table_name(t), fmt.KIND_LOG, data, 1)])
            want.update(data.splitlines())

        def big(tag: str) -> list[Block]:  # ~5 KiB of rows a table that do not compress: no append fits a page's slack
            return [Block(DATABASE, table_name(t), fmt.KIND_LOG,
                          b"".join(f"{tag},{t},{i},{rng.randbytes(30).hex()}\n".encode() for i in range(64)), 64)
                    for t in range(TABLES)]

        for tag in ["f0", "f1"]:
            blocks = big(tag)
            repo.write_many(blocks)
            want.update(bytes(line) for b in blocks for line in b.data.splitlines())
        [j] = _files(wal, "*.journal")
        sizes = {p.name: p.stat().st_size for p in _files(wal, "*.wal")}
        assert len(sizes) == (TABLES if prefill else 0)
        before = wal_stats(repo)
        filler = fill(vol, leave=leave)
        with pytest.raises((OSError, OverLimitsError)):
            repo.split_journal()
        assert j.exists() and _files(wal, "*.manifest") == []
        assert {p.name: p.stat().st_size for p in _files(wal, "*.wal")} == sizes
        assert (repo.disk_usage(), wal_stats(repo).segment_count) == (before.disk_usage, before.segment_count)
        journal_size = j.stat().st_size
        with pytest.raises(OverLimitsError):  # a request that does not fit now: refused, none of its rows kept
            repo.write_many(big("refused"))
        assert j.stat().st_size == journal_size
        # the next journal (the failed round took this one out): at most its magic, when there was room for it
        assert all(p.stat().st_size <= len(journal.MAGIC) for p in _files(wal, "*.journal") if p != j)
        filler.unlink()
        journals = len(_files(wal, "*.journal"))
        assert repo.split_journal() == journals
        assert _files(wal, "*.journal") == [] and _files(wal, "*.manifest*") == []
        repo.rotate_all()
        got = _closed_lines(repo)
        assert got == want, _diff(got, want)
        closed = repo.closed_segments()
        assert repo.disk_usage() == sum(i.path.stat().st_size for i in closed)
        assert wal_stats(repo).segment_count == len(closed) == TABLES


@pytest.mark.parametrize(("database", "table"), [("Db", "a/b"), ("Db", "../x"), ("../d", "T20")])
def test_a_journaled_request_with_a_bad_name_writes_nothing(
        tmp_path: Path, make: Make, database: str, table: str) -> None:
    wal = tmp_path / "wal"
    repo = make(wal)
    repo.write_many(request("good"))
    [j] = _files(wal, "*.journal")
    size, usage = j.stat().st_size, repo.disk_usage()
    bad = request("bad")
    bad[20] = Block(database, table, fmt.KIND_LOG, b"bad,20,0,\n", 1)
    with pytest.raises(InvalidNameError):
        repo.write_many(bad)
    assert j.stat().st_size == size and repo.disk_usage() == usage
    assert _files(wal, "*.journal") == [j] and _files(wal, "*.wal") == []
    assert repo.split_journal() == 1
    repo.rotate_all()
    assert _closed_lines(repo) == _expected(["good"])


def test_the_segments_a_round_will_open_count_against_the_segment_limit_when_the_request_comes(
        tmp_path: Path, make: Make) -> None:
    # A request written straight into segments counts the segments it opens against
    # --max-segment-count; one in the journal counts those its round will open, as it is taken:
    # otherwise requests would pile up in journals past the limit, and the round open them all.
    wal = tmp_path / "wal"
    repo = make(wal, max_segment_count=TABLES + 50)
    repo.write_many(request("a"))
    assert _files(wal, "*.wal") == []  # no segment on disk yet...
    assert wal_stats(repo).segment_count == TABLES  # ...and the 100 its round will open counted
    other = [Block(DATABASE, f"U{t}", fmt.KIND_LOG, b"u\n", 1) for t in range(TABLES)]
    with pytest.raises(OverLimitsError, match="max-segment-count"):
        repo.write_many(other)  # 100 more would pass the limit
    assert repo.over_limits() == ""  # a refusal for the segment limit holds no readiness
    repo.write_many(request("b"))  # the same tables: no new segment
    assert repo.split_journal() == 1
    assert wal_stats(repo).segment_count == TABLES
    repo.write_many(other[:50])  # what is left of the limit
    repo.split_journal()
    repo.rotate_all()
    assert len(repo.closed_segments()) == TABLES + 50 == wal_stats(repo).segment_count
    assert _closed_lines(repo) == _expected(["a", "b"]) + Counter({b"u": 50})
