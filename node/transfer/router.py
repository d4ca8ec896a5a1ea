"""Transfer or upload: sends the small, young segments of tables that another peer owns to that peer.

Each round the uploader asks `plan()` which closed segments go to their owner (see
`plan.plan_transfers` for the rule; none with `--disable-peer-transfer`) and uploads the rest
itself. `deliver()` streams one
planned transfer and turns its outcome into what happens next:

- delivered (OK or ALREADY_EXISTS): the caller deletes the local segments;
- refused (INVALID_ARGUMENT): those segments are never offered to a peer again; they are
  uploaded here;
- the peer failed (unreachable, over its limits, draining, credentials refused): the peer is
  marked unhealthy for `--peer-unhealthy-timeout`, so the next round computes the ring without it
  and the segments go to the key's next peer, or are uploaded here when this node is next.

A transfer whose outcome is unknown (every byte was sent, then the answer was lost) may have been
committed by the peer. The uploader keeps its record (`intents.py`) and sends the same segments,
in the same composition, to the same peer again, so that its ledger answers ALREADY_EXISTS
instead of taking them twice; only after `in_doubt_wait`, or when the peer left the cluster, are
they uploaded here instead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.view import ClusterView
from node.transfer.client import TransferClient, TransferResult
from node.transfer.plan import PlannedTransfer, plan_transfers
from node.transfer.protocol import Outcome
from node.wal.table import SegmentInfo

if TYPE_CHECKING:
    from node.metrics import NodeMetrics

log = logging.getLogger(__name__)

MB = 1_000_000


@dataclass(frozen=True)
class TransferConfig:
    max_size: int = 100 * MB
    """Segment bytes of a prefix at or above which it is uploaded here (`--max-transfer-size`)."""
    max_age: float = 90.0
    """Seconds since a segment closed after which it is uploaded here (`--max-transfer-age`)."""
    concurrency: int = 4
    """Transfers in flight at once."""
    in_doubt_wait: float = 600.0
    """Seconds a transfer in doubt keeps going to its peer before its segments are uploaded here."""
    disabled: bool = False
    """Plan no transfer: every segment is uploaded here (`--disable-peer-transfer`). A transfer in
    doubt from before still goes to its peer (the uploader's record), so that it is stored once."""


class Router:
    def __init__(self, view: ClusterView, client: TransferClient, config: TransferConfig, metrics: NodeMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.client = client
        self.config = config
        self._metrics = metrics
        self._clock = clock
        self._closed_at: dict[str, float] = {}
        self._excluded: set[str] = set()
        self.queued = 0
        """Segments planned for transfer in the last round (the status's transfer queue)."""

    def _ages(self, segments: Sequence[SegmentInfo]) -> dict[str, float]:
        """Seconds since each segment closed: its file's modification time (blocking: stat)."""
        now = self._clock()
        known = self._closed_at
        ids = set()
        for s in segments:
            sid = s.name.segment_id
            ids.add(sid)
            if sid not in known:
                try:
                    known[sid] = os.stat(s.path).st_mtime
                except FileNotFoundError:
                    known[sid] = now
        for sid in [k for k in known if k not in ids]:
            del known[sid]
        self._excluded &= ids
        return {sid: now - t for sid, t in known.items()}

    def plan(self, segments: Sequence[SegmentInfo], busy: set[str]) -> tuple[list[PlannedTransfer],
                                                                            list[SegmentInfo]]:
        """The transfers to start now and the segments left to upload here (blocking: stat)."""
        if self.config.disabled:
            self.queued = 0
            return [], list(segments)
        ring = self.view.ring()
        transfers, rest = plan_transfers(segments, ring.owner, self.view.self_name, self._ages(segments),
                                         self.config.max_size, self.config.max_age, busy, self._excluded)
        self.queued = sum(len(t.segments) for t in transfers)
        return transfers, rest

    async def deliver(self, t: PlannedTransfer) -> TransferResult:
        """Send one planned transfer; the caller deletes the segments when `result.outcome.delivered`."""
        ids = frozenset(s.name.segment_id for s in t.segments)
        peer = self.view.peer(t.owner)
        if peer is None:
            result = TransferResult(Outcome.PEER_FAILED, "GONE", "no longer a member")
        else:
            result = await self.client.send(peer, [s.path for s in t.segments])
        self._metrics.transfers_sent.labels(result.outcome.value).inc()
        if result.outcome.delivered:
            self._metrics.transfer_sent_bytes.inc(result.bytes)
            log.debug("transferred %s to %s: %d segments, %.1f MB in %.2fs (%s)", t.prefix, t.owner,
                      len(t.segments), result.bytes / 1e6, result.seconds, result.code)
        elif result.outcome is Outcome.REFUSED:
            self._excluded |= ids
            log.warning("transfer of %s (%d segments) to %s refused, uploading them here instead at the next round "
                        "(at once): %s %s", t.prefix, len(t.segments), t.owner, result.code, result.detail)
        else:
            # one WARNING line when the peer turns unhealthy (for --peer-unhealthy-timeout: the next
            # round, at once, sends its tables to the next peer or uploads them here)
            log.debug("transfer of %s (%d segments) to %s failed: %s %s", t.prefix, len(t.segments), t.owner,
                      result.code, result.detail)
            self.view.health.mark_unhealthy(t.owner, f"transfer of {t.prefix} failed: {result.code} {result.detail}")
        return result
