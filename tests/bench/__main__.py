"""`make bench`: every benchmark, one after the other, printing throughput and peak memory."""

from __future__ import annotations

import logging

from node import runtime
from tests.bench import (
    bench_kinds,
    bench_node,
    bench_remote_write,
    bench_ring,
    bench_rows,
    bench_scale,
    bench_tables,
    bench_transfer,
    bench_upload,
    bench_wal,
)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    runtime.tune()  # the in-process benches run the node's code as a node process runs it (node/runtime.py)
    print("== WAL ==")
    bench_wal.main()
    print("== rows: parse + convert, one core ==")
    bench_rows.main()
    print("== scale: tables, series, disk per row ==")
    bench_scale.main()
    print("== node under gRPC load ==")
    bench_node.main()
    print("== kinds of data under gRPC load against the parse-only ceiling: gauge, histograms, logs ==")
    bench_kinds.main()
    print("== the whole node as the tables grow (OTLP over gRPC, one receiver) ==")
    bench_tables.main()
    print("== remote write: the node against Prometheus's own receiver ==")
    bench_remote_write.main()
    print("== upload ==")
    bench_upload.main()
    print("== ownership ring ==")
    bench_ring.main()
    print("== transfer between nodes, and coalescing in a 3-node cluster ==")
    bench_transfer.main()


if __name__ == "__main__":
    main()
