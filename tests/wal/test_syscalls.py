"""The WAL's appends' system calls (node/wal/syscalls.py): os's behaviour, errors included, without
letting go of the GIL."""

from __future__ import annotations

import errno
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from node.wal import syscalls


def test_they_write_open_and_close_as_os_does(tmp_path: Path) -> None:
    path = tmp_path / "s.wal"
    fd = syscalls.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    assert syscalls.writev(fd, [b"head", bytearray(b"er"), b"payload"]) == 13
    assert syscalls.writev(fd, [b"!"]) == 1
    syscalls.close(fd)
    assert path.read_bytes() == b"header" + b"payload!"
    assert path.stat().st_mode & 0o777 == 0o640
    fd = syscalls.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    assert os.get_inheritable(fd) is False
    syscalls.writev(fd, [b"+"])
    syscalls.close(fd)
    assert path.read_bytes().endswith(b"!+")


def test_their_errors_are_oserrors_with_errno_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        syscalls.open(tmp_path / "no" / "such.wal", os.O_WRONLY)
    assert missing.value.errno == errno.ENOENT and missing.value.filename == str(tmp_path / "no" / "such.wal")
    (tmp_path / "taken.wal").write_bytes(b"")
    with pytest.raises(FileExistsError):
        syscalls.open(tmp_path / "taken.wal", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    fd = syscalls.open(tmp_path / "taken.wal", os.O_RDONLY)
    with pytest.raises(OSError) as bad:
        syscalls.writev(fd, [b"x"])  # opened for reading
    assert bad.value.errno == errno.EBADF
    syscalls.close(fd)
    with pytest.raises(OSError) as closed:
        syscalls.close(fd)
    assert closed.value.errno == errno.EBADF


@pytest.fixture
def counting_thread() -> Iterator[list[int]]:
    """A thread that counts while it holds the GIL; the switch interval at a second, so that it
    runs in the window below only if the call lets go of the GIL."""
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        yield count
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        t.join(10)


def _counted_during(count: list[int], write: Callable[[int, Sequence[bytes]], int], fd: int, data: bytes) -> int:
    before = count[0]
    write(fd, [data])
    return count[0] - before


def test_a_write_keeps_the_gil_where_os_lets_it_go(tmp_path: Path, counting_thread: list[int]) -> None:
    """The GIL convoy they avoid: with os.writev, the other thread runs during the write and keeps
    the GIL until the switch interval; with syscalls.writev it does not run at all."""
    data = b"x" * (32 << 20)  # ~10-30 ms into the page cache
    fd = os.open(tmp_path / "big", os.O_WRONLY | os.O_CREAT)
    try:
        kept = _counted_during(counting_thread, syscalls.writev, fd, data)
        let_go = _counted_during(counting_thread, os.writev, fd, data)
    finally:
        os.close(fd)
    assert let_go > 0, "os.writev let the other thread run"
    assert kept == 0


def test_the_journal_round_keeps_up_beside_a_thread_that_converts_without_a_pause(tmp_path: Path) -> None:
    """Requests of 1,000 tables (over 10,000) converted and written back to back in one thread, as
    a saturated receiver does, while the journal's rounds run in their own: with os's calls, each
    of a round's 30,000 opens, writes and closes waited for the converting thread to give the GIL
    back, the round took 6 s for 1.2 s of CPU, and request 851 was refused at the 256 MiB limit
    (every run). Here every request is taken."""
    from node import runtime
    from node.rows.metrics import MetricsConfig, MetricsConverter
    from node.rows.otlpmetrics import parse_request
    from node.wal.repository import Repository, WalConfig
    from tests.bench.bench_scale import request

    bodies = [request(10_000, i, 1) for i in range(10)]
    conv = MetricsConverter(MetricsConfig())
    rounds: list[float] = []
    wal = Repository(WalConfig(directory=tmp_path / "wal", max_segment_age=3600))
    split = wal._split

    def timed(j: object) -> None:
        t = time.monotonic()
        split(j)  # type: ignore[arg-type]
        rounds.append(time.monotonic() - t)

    wal._split = timed  # type: ignore[method-assign]
    wal.start()
    thresholds = gc.get_threshold()
    gc.set_threshold(*runtime.GC_THRESHOLDS)  # a node process's: the converting thread at full speed
    try:
        for i in range(1200):  # ~400 MB of rows: past the 256 MiB limit unless rounds keep up
            wal.write_many(list(conv.convert_otlp_pieces([parse_request(bodies[i % 10])]).tables.values()))
    finally:
        gc.set_threshold(*thresholds)
        wal.stop()
    assert len(rounds) >= 4, rounds  # every request above was taken: none refused as over limits
