"""Delivering batches to the sink: bounded concurrency, backoff, release or remove.

Every few seconds the uploader plans batches (`batcher.plan`) from the closed segments and hands
each to the sink in a worker thread, at most `uploads` at a time. Every batch ends in exactly one
of:
- remove: the sink confirmed it; the segments are deleted;
- release: the sink failed; the segments stay, and the prefix backs off (jittered exponential,
  capped) before it is tried again;
- quarantine: the sink will never take it (PermanentSinkError); the segments are moved to
  `quarantine/` with the reason logged and counted, never deleted silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import PermanentSinkError
from node.metrics import NodeMetrics
from node.sinks.base import Batch, Sink
from node.upload.batcher import DEFAULT_RATIO, BatchPolicy, PlannedBatch, PlannedTransfer, plan
from node.upload.router import Router
from node.wal import format as fmt
from node.wal.repository import Repository
from node.wal.segment import mapped
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadConfig:
    interval: float = 5.0
    """Seconds between two planning rounds."""
    uploads: int = 2
    """Batches in flight at once."""
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    quarantine_dir: Path | None = None
    """Where batches a sink will never take are moved (default: `<wal dir>/../quarantine`)."""


def sample_ratio(segment: SegmentInfo, max_blocks: int = 4) -> float:
    """Uncompressed bytes of rows per segment byte, measured on the segment's first blocks."""
    raw_bytes = framed = 0
    try:
        with mapped(segment.path) as data:
            for i, block in enumerate(fmt.iter_raw_blocks(data)):
                if i >= max_blocks:
                    break
                raw_bytes += len(fmt.decode_payload(block).value)
                framed += block.end - block.offset
                del block
    except (fmt.FormatError, OSError):
        pass
    return raw_bytes / framed if framed else DEFAULT_RATIO


class Uploader:
    """Owns the delivery of the closed segments of one repository to one sink."""

    def __init__(self, wal: Repository, sink: Sink, config: UploadConfig, metrics: NodeMetrics,
                 refresh: bool = False, clock: Callable[[], float] = time.monotonic,
                 router: Router | None = None) -> None:
        """`router`: send the segments of tables other peers own to them (None: upload everything here)."""
        self._wal = wal
        self.router = router
        self.transfers_enabled = router is not None
        """Cleared by a drain that must not hand data to peers (the node is leaving the cluster)."""
        self._transfer_sem = asyncio.Semaphore(router.config.concurrency if router is not None else 1)
        self._sink = sink
        self._config = config
        self._metrics = metrics
        self._refresh = refresh
        self._clock = clock
        self._sem = asyncio.Semaphore(config.uploads)
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._ratios: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.quarantine_dir = config.quarantine_dir or wal.directory.parent / "quarantine"

    async def start(self) -> None:
        await asyncio.to_thread(self._sink.start)
        self._loop_task = asyncio.create_task(self._loop(), name="uploader")

    async def stop(self) -> None:
        """Stop planning; batches in flight finish (their threads cannot be interrupted)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._sink.stop)
        if self.router is not None:
            await self.router.client.close()

    def kick(self) -> None:
        """Plan now instead of at the next interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self._round(self._config.policy)
            except Exception:
                log.exception("upload round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.interval)
            self._wake.clear()

    async def _round(self, policy: BatchPolicy) -> int:
        if self._refresh:
            await asyncio.to_thread(self._wal.refresh)
        segments = self._wal.closed_segments()
        if self.router is not None and self.transfers_enabled:
            transfers, segments = await asyncio.to_thread(self.router.plan, segments, self._busy)
            for t in transfers:
                self._busy.add(t.prefix)
                task = asyncio.create_task(self._transfer(t), name=f"transfer-{t.prefix}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for s in segments:
            if s.prefix not in self._ratios:
                self._ratios[s.prefix] = await asyncio.to_thread(sample_ratio, s)
        batches = plan(segments, int(time.time() * 1000), policy, self._busy, self._ratios, self._not_before,
                       self._clock())
        for b in batches:
            self._busy.add(b.prefix)
            task = asyncio.create_task(self._deliver(b), name=f"upload-{b.prefix}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(batches)

    async def drain(self, deadline: float, progress: Callable[[int, int], None] | None = None) -> bool:
        """Upload everything there is, whatever its size or age, until done or `deadline`
        (monotonic); return whether nothing is left. Backoff still applies between tries.
        `progress(segments, bytes)` hears what is left, every round."""
        policy = BatchPolicy(min_batch_bytes=0, max_batch_bytes=self._config.policy.max_batch_bytes,
                             max_batch_segments=self._config.policy.max_batch_segments, max_wait=0)
        last_log = 0.0
        while self._clock() < deadline:
            if self._refresh:
                await asyncio.to_thread(self._wal.refresh)
            left = self._wal.closed_segments()
            if progress is not None:
                progress(len(left), sum(s.size for s in left))
            if not left and not self._tasks:
                return True
            if self._clock() - last_log > 5:
                log.info("draining: %d segments (%d bytes) left to upload, %.0fs of grace left", len(left),
                         sum(s.size for s in left), deadline - self._clock())
                last_log = self._clock()
            await self._round(policy)
            await asyncio.sleep(0.1)
        return not self._wal.closed_segments()

    async def _transfer(self, t: PlannedTransfer) -> None:
        assert self.router is not None
        try:
            async with self._transfer_sem:
                result = await self.router.deliver(t)
            if result.outcome.delivered:
                self._wal.remove(t.segments)
        except Exception:
            log.exception("transfer of %s to %s failed", t.prefix, t.owner)
        finally:
            self._busy.discard(t.prefix)
            self._wake.set()

    async def _deliver(self, planned: PlannedBatch) -> None:
        name = planned.segments[0].name
        batch = Batch(name.database, name.table, planned.segments)
        sink = self._sink.name
        try:
            async with self._sem:
                t0 = time.perf_counter()
                await asyncio.to_thread(self._sink.upload, batch)
                elapsed = time.perf_counter() - t0
        except PermanentSinkError as e:
            self._metrics.uploads.labels(sink, "quarantined").inc()
            await asyncio.to_thread(self._quarantine, planned, str(e))
            self._busy.discard(planned.prefix)
            return
        except Exception as e:
            self._metrics.uploads.labels(sink, "failed").inc()
            n = self._failures.get(planned.prefix, 0) + 1
            self._failures[planned.prefix] = n
            delay = min(self._config.backoff_max, self._config.backoff_initial * 2 ** (n - 1))
            delay *= random.uniform(0.5, 1.0)
            self._not_before[planned.prefix] = self._clock() + delay
            log.warning("upload of %s (%d segments) to %s failed (attempt %d), retrying in %.1fs: %s",
                        planned.prefix, len(planned.segments), sink, n, delay, e)
            self._busy.discard(planned.prefix)
            return
        # remove: the sink confirmed every row
        self._wal.remove(planned.segments)
        self._failures.pop(planned.prefix, None)
        self._not_before.pop(planned.prefix, None)
        if batch.size:
            self._ratios[planned.prefix] = max(0.5, batch.uncompressed_bytes / batch.size)
        self._metrics.uploads.labels(sink, "ok").inc()
        self._metrics.upload_bytes.labels(sink).inc(batch.uncompressed_bytes)
        self._metrics.upload_rows.labels(sink).inc(batch.rows)
        self._metrics.batch_bytes.observe(batch.uncompressed_bytes)
        self._metrics.upload_seconds.observe(elapsed)
        log.info("uploaded %s to %s: %d segments, %d rows, %.1f MB in %.2fs (%s)", planned.prefix, sink,
                 len(planned.segments), batch.rows, batch.uncompressed_bytes / 1e6, elapsed, planned.reason)
        self._busy.discard(planned.prefix)
        self._wake.set()

    def _quarantine(self, planned: PlannedBatch, reason: str) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        for s in planned.segments:
            with contextlib.suppress(FileNotFoundError):
                os.rename(s.path, self.quarantine_dir / s.path.name)
        (self.quarantine_dir / f"{planned.segments[0].path.stem}.reason.txt").write_text(reason + "\n")
        self._wal.remove(planned.segments)
        self._metrics.quarantined_bytes.inc(sum(s.size for s in planned.segments))
        log.error("quarantined %d segments of %s in %s: %s", len(planned.segments), planned.prefix,
                  self.quarantine_dir, reason)
