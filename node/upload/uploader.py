"""Delivering batches to the sink: bounded concurrency, backoff, release or remove.

Every few seconds the uploader plans batches (`batcher.plan`) from the closed segments and hands
each to the sink in a worker thread, at most `uploads` at a time. Every batch ends in exactly one
of:
- remove: the sink confirmed it; the segments are deleted;
- release: the sink failed; the segments stay, and the prefix backs off (jittered exponential,
  capped) before it is tried again;
- quarantine: the sink will never take it (PermanentSinkError); the segments are moved to
  `quarantine/` with the reason logged and counted, never deleted silently. When the reason is
  one segment (SegmentError: rows that do not fit the batch's columns; CorruptSegmentError: a CRC
  that fails, a block that does not decode), that segment goes alone, and the others are planned
  again as a new batch.

Every delivery, to the sink or to a peer, is first recorded in `deliveries/` (`intents.py`): after
a failure or a restart the prefix's next delivery is the same segments to the same destination,
so the sink's deduplication token and the peer's ledger recognise rows that already arrived.

Logging: each delivery is a DEBUG line; INFO has one summary a minute (`DeliverySummary`: batches,
tables, rows and MB per sink, transfers per peer, failures); each failure is one WARNING line that
says when the next attempt is (an unexpected error, not a `SinkError`, an ERROR with its traceback
the first time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.backoff import Backoff
from cluster.tasks import cancel_and_wait
from node.cache import BoundedCache
from node.errors import PermanentSinkError, SegmentError
from node.ratelog import DeliverySummary, ErrorLog, describe
from node.sinks.base import Batch, Sink, batch_id, batch_limit
from node.transfer.plan import PlannedTransfer
from node.transfer.protocol import Outcome
from node.transfer.router import Router
from node.upload.batcher import DEFAULT_RATIO, BatchPolicy, PlannedBatch, plan
from node.upload.intents import SINK, Intent, Intents
from node.wal import codec
from node.wal import format as fmt
from node.wal.repository import Repository
from node.wal.segment import mapped
from node.wal.table import SegmentInfo

if TYPE_CHECKING:
    from node.metrics import NodeMetrics

log = logging.getLogger(__name__)

LAST_DELIVERED_ENTRIES = 100_000
"""Tables whose last delivery is remembered (`Uploader.last_delivered`); past it, it starts afresh."""


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
    deliveries_dir: Path | None = None
    """Where deliveries in progress are recorded (default: `<wal dir>/../deliveries`)."""


def sample_ratio(segment: SegmentInfo, max_blocks: int = 4) -> float:
    """Uncompressed bytes of rows per segment byte, from the decoded lengths the segment's first
    blocks declare (read from their first bytes: nothing is decompressed)."""
    raw_bytes = framed = 0
    try:
        with mapped(segment.path) as data:
            for i, block in enumerate(fmt.iter_raw_blocks(data)):
                if i >= max_blocks:
                    break
                raw_bytes += max(0, codec.decoded_length(block.payload) - fmt.SAMPLE_HEADER.size)
                framed += block.end - block.offset
                del block
    except (fmt.FormatError, codec.CodecError, OSError):
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
        self._transfers: set[asyncio.Task[None]] = set()
        """The transfer tasks among `_tasks` (cancelled by `stop`)."""
        self._queued: set[asyncio.Task[Any]] = set()
        """The upload tasks among `_tasks` still waiting for a turn at the sink (cancelled by `stop`)."""
        self._failures: dict[str, int] = {}
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._errors = ErrorLog(log)
        """Unexpected errors with their traceback once, expected ones (SinkError & co) in one line."""
        self.summary = DeliverySummary(log, clock=clock)
        """What the deliveries did: one INFO line a minute."""
        self._not_before: dict[str, float] = {}
        self.last_delivered: BoundedCache[str, tuple[float, str]] = BoundedCache(LAST_DELIVERED_ENTRIES)
        """Per table prefix, when (wall clock) and where (the sink's name, or a peer's) its last
        delivery was confirmed: for the status page and `ingestor status`."""
        self._ratios: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._round_lock = asyncio.Lock()
        self.quarantine_dir = config.quarantine_dir or wal.directory.parent / "quarantine"
        self.intents = Intents(config.deliveries_dir or wal.directory.parent / "deliveries")

    async def start(self) -> None:
        pending = await asyncio.to_thread(self.intents.load)
        if pending:
            log.info("resuming %d deliveries a previous run left unfinished: %s", len(pending),
                     ", ".join(f"{p} ({len(i.segments)} segments to {i.target or 'the sink'})"
                               for p, i in sorted(pending.items())))
        await asyncio.to_thread(self._sink.start)
        self._loop_task = asyncio.create_task(self._loop(), name="uploader")

    async def stop(self) -> None:
        """Stop planning; batches in flight finish (their threads cannot be interrupted); batches
        still waiting for their turn at the sink are cancelled, so that a round that planned
        thousands of tables cannot hold the shutdown past its grace (their segments stay for the
        next start); transfers in flight are cancelled, so that a peer that hangs cannot hold the
        shutdown either: each stays recorded, in doubt, and the next start sends it to the same
        peer again, whose ledger recognises it (the same as after a kill)."""
        await cancel_and_wait(self._loop_task)
        for task in self._transfers | self._queued:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._sink.stop)
        if self.router is not None:
            await self.router.client.close()
        self.summary.flush()

    @property
    def in_flight(self) -> int:
        """Deliveries and transfers started and not yet settled (counted, records cleared)."""
        return len(self._tasks)

    def kick(self) -> None:
        """Plan now instead of at the next interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self._round(self._config.policy)
            except Exception as e:
                self._errors.log(logging.ERROR, e, "upload round failed, next round in %.1fs: %s",
                                 self._config.interval, describe(e))
            self.summary.tick()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
            # arrives just after the wake (it returns the wait's result), and stop() never ends
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _round(self, policy: BatchPolicy) -> int:
        """Plan and start deliveries. Rounds run one at a time (the loop's and a drain's).

        The segments are listed once, then the round waits (planning transfers, sampling ratios):
        a delivery that ends meanwhile deletes segments that are still in the list. So a prefix
        that was in flight when the list was made stays out of the whole round, even if its
        delivery ends before the round does.
        """
        async with self._round_lock:
            if self._refresh:
                await asyncio.to_thread(self._wal.refresh)
            listed_busy = set(self._busy)  # no await between these two lines
            segments = self._resume(self._wal.closed_segments())
            if self.router is not None and self.transfers_enabled:
                transfers, segments = await asyncio.to_thread(self.router.plan, segments, listed_busy | self._busy)
                for t in transfers:
                    self._start_transfer(t)
            for s in segments:
                if s.prefix not in self._ratios:
                    self._ratios[s.prefix] = await asyncio.to_thread(sample_ratio, s)
            limit = await asyncio.to_thread(batch_limit, self._sink) if segments else None
            if limit is not None and limit < policy.max_batch_bytes:  # a sink short of room: smaller batches
                policy = replace(policy, max_batch_bytes=limit, min_batch_bytes=min(policy.min_batch_bytes, limit))
            batches = plan(segments, int(time.time() * 1000), policy, listed_busy | self._busy, self._ratios,
                           self._not_before, self._clock())
            for b in batches:
                self._start_upload(b)
            return len(batches)

    def _start_upload(self, b: PlannedBatch) -> None:
        self._busy.add(b.prefix)
        task = asyncio.create_task(self._deliver(b), name=f"upload-{b.prefix}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_transfer(self, t: PlannedTransfer) -> None:
        self._busy.add(t.prefix)
        task = asyncio.create_task(self._transfer(t), name=f"transfer-{t.prefix}")
        self._tasks.add(task)
        self._transfers.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._transfers.discard)

    def _resume(self, segments: list[SegmentInfo]) -> list[SegmentInfo]:
        """Start again the recorded deliveries that are not in flight (once their backoff is over);
        return the segments of the other prefixes, which are planned afresh."""
        intents = self.intents.all()
        if not intents:
            return segments
        by_prefix: dict[str, dict[str, SegmentInfo]] = {}
        for s in segments:
            by_prefix.setdefault(s.prefix, {})[s.path.name] = s
        held = set()
        gone: set[str] = set()
        for prefix, intent in intents.items():
            if prefix in self._busy:
                held.add(prefix)
                continue
            present = by_prefix.get(prefix, {})
            found = [present[n] for n in intent.segments if n in present]
            if intent.confirmed:  # cut off while deleting the segments of a confirmed delivery
                if found:
                    log.info("%s: deleting the %d segments left of a delivery confirmed before it was cut off",
                             prefix, len(found))
                    self._wal.remove(found)
                    gone.update(s.path.name for s in found)
                self.intents.clear(prefix)
                continue
            token = None
            if len(found) < len(intent.segments):  # never evidence of a confirmation
                if not found or not intent.to_sink:
                    log.warning("%s: %d of the %d segments of an unconfirmed delivery to %s are gone (deleted by "
                                "something other than this node); planning %s afresh (their rows may arrive twice)",
                                prefix, len(intent.segments) - len(found), len(intent.segments),
                                intent.target or "the sink", "the rest" if found else "nothing")
                    self.intents.clear(prefix)
                    continue
                log.warning("%s: %d of the %d segments of an unconfirmed delivery are gone (deleted by something "
                            "other than this node); delivering the %d left under the delivery's token", prefix,
                            len(intent.segments) - len(found), len(intent.segments), len(found))
                name = found[0].name
                token = batch_id(name.database, name.table, intent.segments)
            held.add(prefix)
            if self._not_before.get(prefix, 0.0) > self._clock():
                continue
            group = tuple(found)
            if intent.to_sink:
                est = int(sum(s.size for s in group) * self._ratios.get(prefix, DEFAULT_RATIO))
                self._start_upload(PlannedBatch(prefix, group, est, "retry", token))
            elif self._may_resend(intent):
                self._start_transfer(PlannedTransfer(prefix, intent.target, group))
            else:
                log.warning("%s: the transfer of %d segments to %s may have arrived (its answer was lost %.0fs ago) "
                            "and cannot be sent to it again: uploading them here; their rows may be delivered "
                            "twice", prefix, len(group), intent.target, time.time() - intent.since)
                self.intents.clear(prefix)
                self._start_upload(PlannedBatch(prefix, group, 0, "retry"))
        return [s for s in segments if s.prefix not in held and s.path.name not in gone]

    def _may_resend(self, intent: Intent) -> bool:
        """A transfer in doubt goes to the same peer again while the peer is a member and the
        doubt is younger than the router's `in_doubt_wait`, and the node is not leaving."""
        r = self.router
        return (r is not None and self.transfers_enabled and r.view.peer(intent.target) is not None
                and time.time() - intent.since < r.config.in_doubt_wait)

    async def _begin(self, prefix: str, segments: tuple[SegmentInfo, ...], target: str) -> None:
        """Record the delivery about to start (kept when it is the same one again, or what is left
        of it)."""
        names = tuple(s.path.name for s in segments)
        old = self.intents.get(prefix)
        if old is not None and old.target == target and not old.confirmed and set(names) < set(old.segments):
            return  # what is left of the recorded delivery: the record keeps naming the whole
        since = old.since if old is not None and old.segments == names and old.target == target else time.time()
        try:
            await asyncio.to_thread(self.intents.record, Intent(prefix, names, target, since))
        except OSError as e:  # a full disk must not stop the uploads that free it
            log.warning("%s: cannot record the delivery in %s (%s); delivering anyway: after a crash its rows may "
                        "be delivered twice", prefix, self.intents.directory, e)

    async def _confirmed(self, prefix: str, segments: tuple[SegmentInfo, ...], target: str) -> None:
        """The sink or the peer confirmed `segments`: note it durably, then delete them, then the record."""
        old = self.intents.get(prefix)
        names = old.segments if old is not None and old.target == target else tuple(s.path.name for s in segments)
        try:
            await asyncio.to_thread(self.intents.confirm, prefix, names, target)
        except OSError as e:  # a full disk must not keep the segments that would free it
            log.warning("%s: cannot record the confirmation in %s (%s); deleting the segments anyway: after a crash "
                        "in the middle, the rest is delivered again under the same token", prefix,
                        self.intents.directory, e)
        self._wal.remove(segments)
        await asyncio.to_thread(self.intents.clear, prefix)

    async def _vanished(self, segments: tuple[SegmentInfo, ...]) -> bool:
        """After a failure: drop the segments whose file is gone from the index (logged and counted
        once); return whether there were any (the rest is then tried again at once)."""
        return bool(await asyncio.to_thread(self._wal.drop_vanished, segments))

    def _back_off(self, prefix: str) -> tuple[int, float]:
        """Count a failure of `prefix` and set its next try; return (attempt, delay)."""
        n = self._failures.get(prefix, 0) + 1
        self._failures[prefix] = n
        delay = self._backoff.delay(n)
        self._not_before[prefix] = self._clock() + delay
        return n, delay

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
            resend = self.intents.get(t.prefix) is not None  # an earlier try may have arrived
            async with self._transfer_sem:  # recorded at its turn, as an upload (_deliver_and_settle)
                await self._begin(t.prefix, t.segments, t.owner)
                result = await self.router.deliver(t)
            if result.outcome.delivered:
                await self._confirmed(t.prefix, t.segments, t.owner)
                self.last_delivered.put(t.prefix, (time.time(), t.owner))
                self._failures.pop(t.prefix, None)
                self._not_before.pop(t.prefix, None)
                name = t.segments[0].name
                self.summary.transferred(t.owner, f"{name.database}.{name.table}", result.bytes)
                return
            self.summary.failed("transfer")
            if result.outcome is Outcome.PEER_FAILED and (result.in_doubt or resend):
                # kept: the next try sends the same segments to the same peer (a resend that failed
                # for certain says nothing of the earlier try)
                if not await self._vanished(t.segments):
                    n, delay = self._back_off(t.prefix)
                    log.warning("transfer of %s (%d segments) to %s failed (attempt %d) and may have arrived: "
                                "sending the same segments to %s again in %.1fs, so that its ledger recognises "
                                "them: %s %s", t.prefix, len(t.segments), t.owner, n, t.owner, delay, result.code,
                                result.detail)
            else:
                # refused, or failed for certain: the router said so (a peer newly unhealthy is one
                # WARNING line); the next round, at once, plans the segments afresh
                await asyncio.to_thread(self.intents.clear, t.prefix)
        except Exception as e:
            self.summary.failed("transfer")
            if await self._vanished(t.segments):
                self._errors.log(logging.ERROR, e, "transfer of %s to %s failed; segments of it vanished, the rest "
                                 "is planned afresh at the next round: %s", t.prefix, t.owner, describe(e))
            else:
                n, delay = self._back_off(t.prefix)
                self._errors.log(logging.ERROR, e, "transfer of %s to %s failed (attempt %d), next attempt in "
                                 "%.1fs: %s", t.prefix, t.owner, n, delay, describe(e))
        finally:
            self._busy.discard(t.prefix)
            self._wake.set()

    async def _deliver(self, planned: PlannedBatch) -> None:
        """Deliver one batch and settle it (remove, release or quarantine); whatever happens, an
        error in the settling itself included (the quarantine's disk, the records), the prefix is
        released at the end, and backs off when the delivery did not settle."""
        try:
            await self._deliver_and_settle(planned)
        except Exception as e:
            self.summary.failed("upload")
            n, delay = self._back_off(planned.prefix)
            self._errors.log(logging.ERROR, e, "delivery of %s (%d segments) failed (attempt %d), retrying in "
                             "%.1fs: %s", planned.prefix, len(planned.segments), n, delay, describe(e))
        finally:
            self._busy.discard(planned.prefix)
            self._wake.set()

    async def _deliver_and_settle(self, planned: PlannedBatch) -> None:
        name = planned.segments[0].name
        batch = Batch(name.database, name.table, planned.segments, token=planned.token)
        sink = self._sink.name
        try:
            # The delivery is recorded once its turn at the sink comes, not as it is planned: a round
            # plans a batch per table, and 10,000 records (a write and an fsync each, in the default
            # executor's threads) queued ahead of everything else run in them, the closing of the
            # segments at SIGTERM included (it waited 156 s).
            me = asyncio.current_task()
            assert me is not None
            self._queued.add(me)
            try:
                await self._sem.acquire()
            finally:
                self._queued.discard(me)
            try:
                await self._begin(planned.prefix, planned.segments, SINK)
                t0 = time.perf_counter()
                await asyncio.to_thread(self._sink.upload, batch)
                elapsed = time.perf_counter() - t0
            finally:
                self._sem.release()
        except PermanentSinkError as e:
            self._metrics.uploads.labels(sink, "quarantined").inc()
            self.summary.failed("quarantine")
            alone = [s for s in planned.segments if s.path == e.path] if isinstance(e, SegmentError) else []
            if isinstance(e, SegmentError) and alone and len(alone) < len(planned.segments):
                # The rest go again at the next round as a new batch (a new id: the record goes
                # first, so that a restart never sends them under the old one).
                await asyncio.to_thread(self.intents.clear, planned.prefix)
                await asyncio.to_thread(self._quarantine, planned.prefix, alone, str(e),
                                        _set_aside_note(len(planned.segments) - len(alone), e.rows_before))
                return
            await asyncio.to_thread(self._quarantine, planned.prefix, planned.segments, str(e))
            await asyncio.to_thread(self.intents.clear, planned.prefix)
            return
        except Exception as e:
            self._metrics.uploads.labels(sink, "failed").inc()
            self.summary.failed("upload")
            if await self._vanished(planned.segments):
                return  # the rest goes again at the next round, under the delivery's token
            n, delay = self._back_off(planned.prefix)
            self._errors.log(logging.WARNING, e, "upload of %s (%d segments) to %s failed (attempt %d), retrying in "
                             "%.1fs: %s", planned.prefix, len(planned.segments), sink, n, delay, describe(e))
            return
        # remove: the sink confirmed every row
        await self._confirmed(planned.prefix, planned.segments, SINK)
        self.last_delivered.put(planned.prefix, (time.time(), sink))
        self._failures.pop(planned.prefix, None)
        self._not_before.pop(planned.prefix, None)
        if batch.size:
            self._ratios[planned.prefix] = max(0.5, batch.uncompressed_bytes / batch.size)
        self._metrics.uploads.labels(sink, "ok").inc()
        self._metrics.upload_bytes.labels(sink).inc(batch.uncompressed_bytes)
        self._metrics.upload_rows.labels(sink).inc(batch.rows)
        self._metrics.batch_bytes.observe(batch.uncompressed_bytes)
        self._metrics.upload_seconds.observe(elapsed)
        log.debug("uploaded %s to %s: %d segments, %d rows, %.1f MB in %.2fs (%s)", planned.prefix, sink,
                  len(planned.segments), batch.rows, batch.uncompressed_bytes / 1e6, elapsed, planned.reason)
        self.summary.uploaded(sink, f"{name.database}.{name.table}", batch.rows, batch.uncompressed_bytes, elapsed)

    def _quarantine(self, prefix: str, segments: Sequence[SegmentInfo], reason: str, note: str = "") -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        for s in segments:
            with contextlib.suppress(FileNotFoundError):
                os.rename(s.path, self.quarantine_dir / s.path.name)
        (self.quarantine_dir / f"{segments[0].path.stem}.reason.txt").write_text(reason + "\n")
        self._wal.remove(segments)
        self._metrics.quarantined_bytes.inc(sum(s.size for s in segments))
        log.error("quarantined %d segments of %s in %s: %s%s", len(segments), prefix, self.quarantine_dir, reason,
                  note)


def _set_aside_note(rest: int, rows_before: int) -> str:
    """What becomes of a batch whose one corrupt segment was quarantined alone."""
    note = f"; alone: the other {rest} segments of its batch go again as a new batch"
    if rows_before:
        note += (f" (the sink had been handed {rows_before} rows of the batch before it: a sink that inserts as it "
                 f"reads, ClickHouse or the local store, may have kept some, and those then arrive twice)")
    return note
