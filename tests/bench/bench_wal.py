"""WAL alone: append throughput with 64 KB blocks (fsync on-rotate) and read-back throughput."""

from __future__ import annotations

import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wal bench peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
