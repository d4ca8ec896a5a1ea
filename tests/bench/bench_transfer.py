"""Transfer: MB/s of segment bytes from one node to another on loopback, and the coalescing of the
three-node cluster (batches per table per interval).

The receiver is a real `ingestor serve` process; the sender is the node's `TransferClient` in this
process, sending closed segments of a real WAL. A transfer is counted when the receiver answered
OK, that is after it verified every block, fsynced and renamed the segment.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from cluster.membership import Peer
from node.transfer.client import TransferClient
from node.transfer.protocol import Outcome
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.table import SegmentInfo
from tests.bench.bench_wal import SCHEMA, make_block
from tests.harness import NodeProcess
from tests.wal.helpers import write_block

MB = 1_000_000
TOKEN = "bench-token"


def write_segments(directory: Path, count: int, segment_bytes: int) -> list[SegmentInfo]:
    repo = Repository(WalConfig(directory, max_segment_size=segment_bytes))
    repo.start()
    blocks = [make_block(64 * 1024 + 997 * k) for k in range(8)]
    k = 0
    while len(repo.closed_segments()) < count:
        value, rows = blocks[k % len(blocks)]
        write_block(repo, "Metrics", f"Bench{len(repo.closed_segments()) % 4}", fmt.KIND_METRIC, value, rows, SCHEMA)
        k += 1
    repo.rotate_all()
    return repo.closed_segments()[:count]


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def send_all(client: TransferClient, peer: Peer, segments: list[SegmentInfo], parallel: int) -> float:
    queue = list(segments)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while queue:
            seg = queue.pop()
            result = await client.send(peer, [seg.path])
            if result.outcome is not Outcome.ACCEPTED:
                raise RuntimeError(f"transfer failed: {result}")
            sent += result.bytes

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return sent / MB / (time.perf_counter() - t0)


def bench_throughput() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        root = Path(tmp)
        segments = write_segments(root / "sender" / "wal", count=36, segment_bytes=50 * MB)
        sets = {1: segments[:12], 2: segments[12:24], 4: segments[24:]}  # a resend would be ALREADY_EXISTS
        os.sync()  # the setup's dirty pages are flushed before, not during, the measure
        receiver = NodeProcess(root / "receiver", "--peer-token", TOKEN, "--upload-interval", "1h",
                               "--max-disk-usage", "0", name="receiver").start()
        try:
            assert receiver.proc is not None
            peer = Peer("receiver", receiver.grpc_addr)

            async def run(parallel: int) -> float:
                client = TransferClient("bench", token=TOKEN)
                try:
                    return await send_all(client, peer, sets[parallel], parallel)
                finally:
                    await client.close()

            for parallel, segs in sets.items():
                rate = asyncio.run(run(parallel))
                print(f"transfer, {parallel} stream(s): {rate:7.0f} MB/s of segment bytes "
                      f"({len(segs)} segments, {sum(s.size for s in segs) / MB:.0f} MB; target >= 500 MB/s)")
            print(f"peak RSS: receiver {rss_peak_mb(receiver.proc.pid):.0f} MB, sender "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        finally:
            receiver.stop(signal.SIGKILL)  # not a drain: uploading the received GBs is not what is measured


def bench_coalescing() -> None:
    from tests.cluster.test_cluster import INTERVAL, TABLES, Cluster

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = Cluster(Path(tmp))
        for node in cluster.nodes:
            node.start()
        try:
            owners = {f"M{i}": cluster.owner(i).name for i in range(TABLES)}
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20:
                cluster.send_round(cluster.nodes)
                time.sleep(0.5)
            sending = time.monotonic() - t0
            cluster.wait_delivered()
            batches = {node.name: cluster.uploads(node) for node in cluster.nodes}
        finally:
            for node in cluster.nodes:
                node.stop()
    per_table = [batches[owners[t]][t] for t in owners]
    by_others = sum(n for name, c in batches.items() for t, n in c.items() if owners[t] != name)
    intervals = (sending + INTERVAL) / INTERVAL
    mean = sum(per_table) / len(per_table)
    print(f"3 nodes, {TABLES} tables sent to every node for {sending:.0f}s: {mean / intervals:.2f} batches per table "
          f"per {INTERVAL:.0f}s interval (1.00 = fully coalesced, 3 = none); {by_others} batches uploaded by a "
          f"node that does not own the table; {sum(Counter(per_table).values())} tables")


def main() -> None:
    bench_throughput()
    bench_coalescing()


if __name__ == "__main__":
    main()
