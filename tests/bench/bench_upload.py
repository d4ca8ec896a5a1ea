"""Upload: MB/s of uncompressed rows into each sink, and the batch sizes a stream of many small
segments turns into.

Sinks: the local embedded store (chdb), the ClickHouse server from Debian's packages (18.16,
HTTP and native protocol) and ADX (real QueuedIngestClient into Azurite, with the local Kusto
management endpoint of the tests); each is skipped with a message when its binary is missing.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from node.metrics import NodeMetrics
from node.sinks.base import Batch, Sink
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.table import SegmentInfo
from tests.bench.bench_wal import SCHEMA, make_block
from tests.wal.helpers import write_block

MB = 1_000_000


def write_segments(directory: Path, total_mb: int, segment_bytes: int) -> list[SegmentInfo]:
    repo = Repository(WalConfig(directory, max_segment_size=segment_bytes))
    repo.start()
    value, count = make_block()
    for _ in range(total_mb * MB // len(value)):
        write_block(repo, "Metrics", "BenchUpload", fmt.KIND_METRIC, value, count, SCHEMA)
    repo.rotate_all()
    return repo.closed_segments()


def time_upload(sink: Sink, segments: list[SegmentInfo]) -> float:
    batch = Batch("Metrics", "BenchUpload", tuple(segments))
    t0 = time.perf_counter()
    sink.upload(batch)
    elapsed = time.perf_counter() - t0
    return batch.uncompressed_bytes / MB / elapsed


class Measuring:
    """Delegates to a real sink and records the size of every batch it confirmed."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = sink.name
        self.sizes: list[int] = []

    def start(self) -> None:
        self.sink.start()

    def stop(self) -> None:
        self.sink.stop()

    def accepts(self, database: str) -> bool:
        return self.sink.accepts(database)

    def upload(self, batch: Batch) -> None:
        self.sink.upload(batch)
        self.sizes.append(batch.uncompressed_bytes)


async def batch_sizes(sink: Sink, wal_dir: Path, total_mb: int, rate_mb_s: float = 150.0) -> list[int]:
    """A stream of small segments (about 0.5 MB of rows each) of one table, written at `rate_mb_s`
    while the uploader runs with the default policy (100 MB to 1 GB)."""
    wal = Repository(WalConfig(wal_dir, max_segment_size=64 * 1024))
    wal.start()
    m = Measuring(sink)
    up = Uploader(wal, m, UploadConfig(interval=0.2, policy=BatchPolicy(max_wait=3600)),
                  NodeMetrics(CollectorRegistry()))
    await up.start()
    value, count = make_block()
    blocks = total_mb * MB // len(value)
    t0 = time.monotonic()
    for i in range(blocks):
        write_block(wal, "Metrics", "BenchStream", fmt.KIND_METRIC, value, count, SCHEMA)
        ahead = (i + 1) * len(value) / MB / rate_mb_s - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    wal.rotate_all()
    deadline = time.monotonic() + 120
    while sum(m.sizes) < (total_mb - 100) * MB and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await up.stop()
    return m.sizes


def sinks(tmp: Path) -> list[tuple[str, Sink, object]]:
    from node.sinks.local import LocalSink

    out: list[tuple[str, Sink, object]] = [("local (chdb)", LocalSink(tmp / "local"), None)]
    from tests.sinks.clickhouse_server import ClickHouseServer, find_binary

    if find_binary() is not None:
        from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, parse_dsns

        server = ClickHouseServer(tmp / "ch")
        server.start()
        for scheme in ("http", "clickhouse"):
            target = "MetricsHttp" if scheme == "http" else "MetricsNative"  # two copies, not one deduplicated
            sink = ClickHouseSink(ClickHouseConfig(parse_dsns([server.dsn("Metrics", scheme=scheme, target=target)],
                                                              env={})))
            out.append((f"clickhouse 18.16 ({scheme})", sink, server if scheme == "clickhouse" else None))
    else:
        print("clickhouse-server not installed: ClickHouse sink skipped")
    from tests.sinks_adx.azurite import Azurite, find_azurite

    binary = find_azurite()
    if binary is not None:
        from node.sinks.adx import AdxConfig, AdxSink
        from tests.sinks_adx.fake_kusto import FakeKusto

        azurite = Azurite(binary, tmp / "azurite")
        azurite.start()
        kusto = FakeKusto(azurite, f"b{uuid.uuid4().hex[:12]}")
        kusto.start()
        out.append(("adx (Azurite)", AdxSink(AdxConfig(endpoints={"Metrics": kusto.url}, auth="none")),
                    (azurite, kusto)))
    else:
        print("azurite not installed: ADX sink skipped")
    return out


def main(total_mb: int = 200) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as d:
        tmp = Path(d)
        segments = write_segments(tmp / "wal", total_mb, 32 << 20)
        print(f"upload of one {total_mb} MB batch ({len(segments)} segments, "
              f"{sum(s.size for s in segments) / MB:.0f} MB on disk):")
        made = sinks(tmp)
        adx: Sink | None = None
        for label, sink, _ in made:
            sink.start()
            print(f"  {label:<28} {time_upload(sink, segments):8.1f} MB/s of rows")
            if label.startswith("adx"):
                adx = sink
        target = adx or made[0][1]
        sizes = asyncio.run(batch_sizes(target, tmp / "stream", 650))
        mbs = [s / MB for s in sizes]
        print(f"batches of a stream of ~0.5 MB segments (650 MB of rows at 150 MB/s) to {target.name}: "
              f"{len(sizes)} batches, "
              f"min {min(mbs):.0f} MB, median {statistics.median(mbs):.0f} MB, max {max(mbs):.0f} MB "
              f"({sum(1 for m in mbs if m >= 100)} of {len(mbs)} >= 100 MB)")
        for label, sink, extra in made:
            sink.stop()
            if label.startswith("clickhouse") and extra is not None:
                extra.stop()  # type: ignore[attr-defined]
            if label.startswith("adx") and extra is not None:
                azurite, kusto = extra  # type: ignore[misc]
                kusto.ingest()
                kusto.stop()
                azurite.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"upload bench peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
