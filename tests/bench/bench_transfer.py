"""Transfer: MB/s of segment bytes from one node to another on loopback, against a bare gRPC stream
measured in the same run, and the coalescing of the three-node cluster (batches per table per
interval).

The receiver is a real `ingestor serve` process; the sender is the node's `TransferClient` in this
process, sending closed segments of a real WAL. A transfer is counted when the receiver answered
OK, that is after it checked every block's framing, CRC and header (a peer's blocks are not
decoded on receipt: node/transfer/intake.py), fsynced and renamed the segment.

The reference is a bare grpc.aio server in its own process serving the same method
(`ingestor.v1.Transfer/TransferSegment`) that reads the metadata, says go, consumes every chunk
message and answers OK: no verification, no write. The same sender sends it the same segments
with the same number of streams, in turns with the node, so both see the same machine. For each:
MB/s of segment bytes, the node's ratio to the bare stream, and CPU seconds per GB of the
receiving process tree (utime + stime of every process and thread, from /proc) and of the sender.

The receiver writes every byte it takes into the page cache; the bare stream writes nothing. On a
virtual machine that hands idle memory back to its host (this one runs DAMON reclaim), the first
write into such memory faults it back page by page: measured with `dd`, 2.9 kernel CPU s per GB
where the same write into memory just freed costs 0.3-0.5. Which of the two the receiver meets
depended on what the machine did minutes before (0.34-0.47 of the bare stream cold, 0.76-0.81
warm, one run after the other). So before each of the node's turns the bench writes and deletes
as many bytes as the turn will send, in the receiver's file system: the receiver then writes into
memory in use, as on a node that keeps writing, uploading and deleting segments. What that
warm-up cost is printed too ("cold page cache"): the price of the first write on this machine.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc

from cluster.membership import Peer
from node.transfer.client import TransferClient
from node.transfer.protocol import READY_HEADER, Outcome
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.table import SegmentInfo
from tests.bench.bench_kinds import tree_cpu_seconds
from tests.bench.bench_wal import SCHEMA, make_block
from tests.harness import ROOT, NodeProcess, free_port
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


def warm_page_cache(directory: Path, nbytes: int) -> tuple[int, float]:
    """Write `nbytes` into a file under `directory` and delete it: the pages the next writer there
    takes are then in use, not handed back to a hypervisor. (bytes written, kernel CPU seconds)."""
    block = b"\0" * (4 << 20)
    path = directory / "warm-page-cache"
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    written = 0
    with open(path, "wb", buffering=0) as f:
        while written < nbytes:
            written += f.write(block)
    path.unlink()
    return written, resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def send_all(client: TransferClient, peer: Peer, segments: list[SegmentInfo], parallel: int) -> tuple[int, float]:
    """Send `segments` over `parallel` streams; (bytes acknowledged, seconds)."""
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
    return sent, time.perf_counter() - t0


BARE_SERVER = """
import asyncio, sys
import grpc
from node.gen.ingestor.v1 import transfer_pb2, transfer_pb2_grpc

class Bare(transfer_pb2_grpc.TransferServicer):
    async def TransferSegment(self, request_iterator, context):
        await context.read()  # the metadata
        await context.send_initial_metadata(((sys.argv[2], "1"),))
        n = 0
        while (msg := await context.read()) is not grpc.aio.EOF:
            n += len(msg.chunk)
        return transfer_pb2.TransferSegmentResponse(bytes=n)

async def main():
    s = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    transfer_pb2_grpc.add_TransferServicer_to_server(Bare(), s)
    s.add_insecure_port(sys.argv[1])
    await s.start()
    await s.wait_for_termination()

asyncio.run(main())
"""


def bare_server(address: str) -> subprocess.Popen[bytes]:
    """The reference: a bare grpc.aio server of the transfer method that only consumes the chunks
    (the node's own receive limit, 64 MiB, so the same messages pass)."""
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, address, READY_HEADER], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
    return proc


@dataclass
class Run:
    """One receiver's runs: bytes acknowledged, seconds, CPU seconds of its process tree and of the sender."""

    bytes: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    sender_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.bytes / MB / self.seconds

    def per_gb(self, cpu: float) -> float:
        return cpu / (self.bytes / 1e9)


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(run: Run, pid: int, peer: Peer, segments: list[SegmentInfo], parallel: int) -> None:
    async def go() -> tuple[int, float]:
        client = TransferClient("bench", token=TOKEN)
        try:
            return await send_all(client, peer, segments, parallel)
        finally:
            await client.close()

    cpu0, own0 = tree_cpu_seconds(pid), self_cpu()
    sent, seconds = asyncio.run(go())
    run.cpu += tree_cpu_seconds(pid) - cpu0
    run.sender_cpu += self_cpu() - own0
    run.bytes += sent
    run.seconds += seconds


def bench_throughput() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        root = Path(tmp)
        segments = write_segments(root / "sender" / "wal", count=36, segment_bytes=50 * MB)
        sets = {1: segments[:12], 2: segments[12:24], 4: segments[24:]}  # a resend would be ALREADY_EXISTS
        os.sync()  # the setup's dirty pages are flushed before, not during, the measure
        receiver = NodeProcess(root / "receiver", "--peer-token", TOKEN, "--upload-interval", "1h",
                               "--max-disk-usage", "0", name="receiver").start()
        bare_addr = f"127.0.0.1:{free_port()}"
        bare = bare_server(bare_addr)
        try:
            assert receiver.proc is not None
            node_peer, bare_peer = Peer("receiver", receiver.grpc_addr), Peer("bare", bare_addr)
            warm = Run()
            for parallel, segs in sets.items():
                node, ref = Run(), Run()
                # In turns, halves of the set each: the node and the bare stream see the same machine.
                # The bare server keeps nothing, so it is sent the node's segments of the same run.
                half = len(segs) // 2
                for part in (segs[:half], segs[half:]):
                    measure(ref, bare.pid, bare_peer, part, parallel)
                    written, kernel = warm_page_cache(root / "receiver", sum(s.size for s in part))
                    warm.bytes += written
                    warm.cpu += kernel
                    measure(node, receiver.proc.pid, node_peer, part, parallel)
                print(f"transfer, {parallel} stream(s): node {node.rate:5.0f} MB/s of segment bytes, bare gRPC "
                      f"stream {ref.rate:5.0f} MB/s, ratio {node.rate / ref.rate:.2f} (target >= 0.5); receiver "
                      f"CPU s per GB: node {node.per_gb(node.cpu):.2f}, bare {ref.per_gb(ref.cpu):.2f}; sender "
                      f"{node.per_gb(node.sender_cpu):.2f} / {ref.per_gb(ref.sender_cpu):.2f} "
                      f"({len(segs)} segments, {sum(s.size for s in segs) / MB:.0f} MB)")
            print(f"peak RSS: receiver {rss_peak_mb(receiver.proc.pid):.0f} MB, sender "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; cold page cache before "
                  f"each node turn: {warm.per_gb(warm.cpu):.2f} kernel CPU s per GB written (the bench's own "
                  "warm-up; ~0.3-0.5 where memory is in use)")
        finally:
            bare.kill()
            bare.wait()
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
    if sys.argv[1:] != ["throughput"]:  # `python -m tests.bench.bench_transfer throughput`: the first alone
        bench_coalescing()


if __name__ == "__main__":
    main()
