"""Grouping closed segments into upload batches: pure, no I/O.

Per table prefix, oldest segment first, segments are cut into batches of at most
`max_batch_bytes` (estimated uncompressed rows) and `max_batch_segments`. A batch goes out when it
is full enough (`min_batch_bytes`, the ADX recommendation of 100 MB) or when its oldest segment
has waited longer than `max_wait` (max segment age plus a grace): data is never held back for size
alone. A prefix that already has a batch in flight is skipped, so one table's batches are
delivered in order and never twice at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.wal.table import SegmentInfo

MB = 1_000_000
DEFAULT_RATIO = 5.0
"""Uncompressed bytes per segment byte assumed before a prefix's first batch was measured."""


@dataclass(frozen=True)
class BatchPolicy:
    min_batch_bytes: int = 100 * MB
    """A batch this large (uncompressed) goes out at once."""
    max_batch_bytes: int = 1000 * MB
    """No batch is larger than this (uncompressed, estimated), unless one segment alone is."""
    max_batch_segments: int = 10_000
    """No batch has more segments than this."""
    max_wait: float = 330.0
    """A batch whose oldest segment is older than this goes out whatever its size (seconds)."""


@dataclass(frozen=True)
class PlannedBatch:
    prefix: str
    segments: tuple[SegmentInfo, ...]
    estimated_bytes: int
    reason: str
    """"full" or "age": why it goes out now."""
    token: str | None = None
    """The deduplication token of the recorded delivery this is what is left of (see `Batch.token`)."""


def plan(segments: Iterable[SegmentInfo], now_ms: int, policy: BatchPolicy, busy: set[str],
         ratios: Mapping[str, float] | None = None, not_before: Mapping[str, float] | None = None,
         now_mono: float = 0.0) -> list[PlannedBatch]:
    """The batches ready to go now, oldest prefix first.

    `busy`: prefixes with a batch in flight. `ratios`: measured uncompressed/segment-byte ratio
    per prefix. `not_before`: per prefix, the monotonic time before which it is backing off.
    """
    by_prefix: dict[str, list[SegmentInfo]] = {}
    for s in segments:
        by_prefix.setdefault(s.prefix, []).append(s)
    out: list[PlannedBatch] = []
    for prefix, segs in by_prefix.items():
        if prefix in busy or (not_before and not_before.get(prefix, 0.0) > now_mono):
            continue
        segs.sort(key=lambda s: s.name.segment_id)
        ratio = (ratios or {}).get(prefix, DEFAULT_RATIO)
        current: list[SegmentInfo] = []
        size = 0
        batches: list[tuple[list[SegmentInfo], int]] = []
        for s in segs:
            est = int(s.size * ratio)
            if current and (size + est > policy.max_batch_bytes or len(current) >= policy.max_batch_segments):
                batches.append((current, size))
                current, size = [], 0
            current.append(s)
            size += est
        if current:
            batches.append((current, size))
        for group, est in batches:
            oldest_age = (now_ms - group[0].name.created_ms) / 1000
            if est >= policy.min_batch_bytes or len(group) >= policy.max_batch_segments:
                out.append(PlannedBatch(prefix, tuple(group), est, "full"))
            elif oldest_age >= policy.max_wait:
                out.append(PlannedBatch(prefix, tuple(group), est, "age"))
            else:
                break  # younger, smaller batches wait to grow; later ones are younger still
            # one batch per prefix per round keeps a prefix's batches in order
            break
    out.sort(key=lambda b: b.segments[0].name.segment_id)
    return out
