"""WAL alone: append throughput with 64 KB blocks (fsync on-rotate) and read-back throughput; the
journal's round under `--wal-fsync always` against `on-rotate` (requests of 1,000 tables over
10,000); a request of 50 tables on the direct path under `always` against `on-rotate`, and its 50
fsyncs in turn against the same at once and against one syncfs of the same writes."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node.storage import sync_filesystem
from node.wal import format as fmt
from node.wal import repository
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import FsyncPolicy, iter_blocks
from tests.wal.helpers import write_block

SCHEMA = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))


def make_block(target: int = 64 * 1024) -> tuple[bytes, int]:
    """About `target` bytes of realistic metric rows, and how many rows."""
    rows = []
    size = i = 0
    while size < target:
        row = (f'2026-11-24T04:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}Z,{-4611686018427387904 + i * 7919},'
               f'"{{""container"":""app-{i % 50}"",""namespace"":""prod"",""pod"":""app-{i % 50}-7f9c"",'
               f'""node"":""aks-nodepool1-{i % 9}""}}",{i * 0.25}\n').encode()
        rows.append(row)
        size += len(row)
        i += 1
    return b"".join(rows), len(rows)


def bench_append(directory: Path, seconds: float, threads: int) -> tuple[float, float, int]:
    repo = Repository(WalConfig(directory, fsync=FsyncPolicy.ON_ROTATE, max_segment_size=256 << 20))
    repo.start()
    value, count = make_block()
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(t: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            for _ in range(16):
                write_block(repo, "Metrics", f"Table{t}", fmt.KIND_METRIC, value, count, SCHEMA)
            n += 16
        counts[t] = n

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    repo.stop()
    elapsed = time.perf_counter() - t0
    blocks = sum(counts)
    return blocks * len(value) / elapsed / 1e6, blocks / elapsed, repo.disk_usage()


def bench_read(directory: Path) -> float:
    t0 = time.perf_counter()
    total = 0
    for path in sorted(directory.glob("*.wal")):
        for block in iter_blocks(path):
            total += len(block.value)
    return total / (time.perf_counter() - t0) / 1e6


ROUND_TABLES, ROUND_NAMES, ROUND_REQUESTS = 1000, 10_000, 100


def _round_request(r: int) -> list[Block]:
    """A request of ROUND_TABLES tables of one ~150-byte row each, the names cycling over ROUND_NAMES."""
    out = []
    for i in range(ROUND_TABLES):
        t = (r * ROUND_TABLES + i) % ROUND_NAMES
        row = f'2026-11-24T04:00:{r % 60:02d}.000000000Z,{t * 7919 + r},"{{""pod"":""app-{t % 50}-7f9c""}}",{r}.5\n'
        out.append(Block("Metrics", f"m{t}", fmt.KIND_METRIC, row.encode(), 1, SCHEMA))
    return out


def bench_round(directory: Path, fsync: FsyncPolicy, rounds: int) -> float:
    """Wall-clock µs a point of the journal's round (ROUND_REQUESTS requests of ROUND_TABLES tables a
    round), the median of `rounds` rounds after a first that creates every table's segment."""
    saved = repository.JOURNAL_ROUND_SECONDS
    repository.JOURNAL_ROUND_SECONDS = 1e6  # no round in the background: each is timed here
    repo = Repository(WalConfig(directory, fsync=fsync, max_segment_age=3600))
    repo.start()
    try:
        times = []
        for k in range(rounds + 1):
            for r in range(ROUND_REQUESTS):
                repo.write_many(_round_request(k * ROUND_REQUESTS + r))
            t0 = time.perf_counter()
            repo.split_journal()
            if k:
                times.append((time.perf_counter() - t0) / (ROUND_REQUESTS * ROUND_TABLES) * 1e6)
        return statistics.median(times)
    finally:
        repo.stop()
        repository.JOURNAL_ROUND_SECONDS = saved


def bench_direct(directory: Path, fsync: FsyncPolicy, tables: int = 50, reps: int = 40) -> float:
    """Wall-clock milliseconds of `write_many` for a request of `tables` tables of about 3 KB of rows
    each (the direct path: fewer than --wal-journal-tables), the median of `reps` after a first
    request that creates the segments."""
    repo = Repository(WalConfig(directory, fsync=fsync, max_segment_age=3600))
    repo.start()
    try:
        times = []
        for r in range(reps + 1):
            rows = "".join(f"2026-11-24T04:00:{r % 60:02d}.000000000Z,{r * 100 + i},\"{{}}\",{i}.5\n"
                           for i in range(60)).encode()
            blocks = [Block("Metrics", f"m{t}", fmt.KIND_METRIC, rows, 60, SCHEMA) for t in range(tables)]
            t0 = time.perf_counter()
            repo.write_many(blocks)
            if r:
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    finally:
        repo.stop()


def bench_request_sync(directory: Path, files: int = 50, reps: int = 20) -> tuple[float, float, float]:
    """Milliseconds for a request's `files` writes of 3 KB made durable with an fsync each in turn,
    with those fsyncs at once (repository.SYNC_THREADS threads, as `write_many` makes them under
    `always`), and with one syncfs of the file system."""
    directory.mkdir()
    fds = [os.open(directory / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644) for i in range(files)]
    data = b"x" * 3000
    try:
        t0 = time.perf_counter()
        for _ in range(reps):
            for fd in fds:
                os.write(fd, data)
                os.fsync(fd)
        each = (time.perf_counter() - t0) / reps * 1e3
        with ThreadPoolExecutor(repository.SYNC_THREADS) as pool:
            t0 = time.perf_counter()
            for _ in range(reps):
                for fd in fds:
                    os.write(fd, data)
                list(pool.map(os.fsync, fds))
            together = (time.perf_counter() - t0) / reps * 1e3
        t0 = time.perf_counter()
        for _ in range(reps):
            for fd in fds:
                os.write(fd, data)
            sync_filesystem(directory)
        once = (time.perf_counter() - t0) / reps * 1e3
    finally:
        for fd in fds:
            os.close(fd)
    return each, together, once


def main(seconds: float = 3.0) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-wal-"))
    try:
        mbs, bps, disk = bench_append(tmp / "one", seconds, 1)
        print(f"wal append, 1 thread, 64 KB blocks, fsync on-rotate: {mbs:8.1f} MB/s of rows, "
              f"{bps:8.0f} blocks/s, {disk / 1e6:.0f} MB on disk")
        rmbs = bench_read(tmp / "one")
        print(f"wal read-back (decompress + CRC):                      {rmbs:8.1f} MB/s of rows")
        shutil.rmtree(tmp / "one")
        mbs2, bps2, _ = bench_append(tmp / "two", seconds, 2)
        print(f"wal append, 2 threads (GIL-bound Python):              {mbs2:8.1f} MB/s of rows, "
              f"{bps2:8.0f} blocks/s")
        ref = bench_round(tmp / "round-on-rotate", FsyncPolicy.ON_ROTATE, 3)
        always = bench_round(tmp / "round-always", FsyncPolicy.ALWAYS, 3)
        print(f"journal round, {ROUND_TABLES:,} of {ROUND_NAMES:,} tables a request, {ROUND_REQUESTS} requests "
              f"a round: on-rotate {ref:.2f} us a point (reference), always {always:.2f} us ({always / ref:.2f}x)")
        ref = bench_direct(tmp / "direct-on-rotate", FsyncPolicy.ON_ROTATE)
        always = bench_direct(tmp / "direct-always", FsyncPolicy.ALWAYS)
        print(f"a request of 50 tables (3 KB of rows each), the direct path: on-rotate {ref:.2f} ms (reference), "
              f"always {always:.2f} ms ({always / ref:.2f}x)")
        each, together, once = bench_request_sync(tmp / "sync")
        print(f"its 50 writes of 3 KB made durable: an fsync each in turn {each:.1f} ms (reference), at once in "
              f"{repository.SYNC_THREADS} threads {together:.1f} ms ({together / each:.2f}x), one syncfs {once:.1f} ms "
              f"({once / each:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wal bench peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
