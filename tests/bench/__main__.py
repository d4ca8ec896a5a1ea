"""`make bench`: every benchmark, one after the other, printing throughput and peak memory."""

from __future__ import annotations

from tests.bench import bench_wal


def main() -> None:
    print("== WAL ==")
    bench_wal.main()


if __name__ == "__main__":
    main()
