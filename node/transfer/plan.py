"""Transfer or upload: which closed segments go to their owner now, and which stay here. Pure, no I/O.

`router.Router.plan` calls it each round with the ring's owners and the segments' ages.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from node.wal.table import SegmentInfo


@dataclass(frozen=True)
class PlannedTransfer:
    prefix: str
    owner: str
    segments: tuple[SegmentInfo, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


def plan_transfers(segments: Iterable[SegmentInfo], owner_of: Callable[[str], str], self_name: str,
                   ages: Mapping[str, float], max_size: int, max_age: float, busy: set[str],
                   excluded: Collection[str] = ()) -> tuple[list[PlannedTransfer], list[SegmentInfo]]:
    """Which closed segments go to their owner now, and which stay for this node to upload.

    A prefix that another peer owns is transferred when all its closed segments here add up to
    less than `max_size` (segment bytes): they go in one transfer, except the segments that have
    waited here `max_age` seconds or longer since they closed (`ages`, by segment id) and those
    in `excluded` (a peer refused their bytes), which stay. A prefix at or over `max_size` is hot:
    it already makes a full batch here, so it is uploaded where it is instead of piling onto its
    owner. Busy prefixes and prefixes this node owns stay whole.
    """
    by_prefix: dict[str, list[SegmentInfo]] = {}
    for s in segments:
        by_prefix.setdefault(s.prefix, []).append(s)
    transfers: list[PlannedTransfer] = []
    rest: list[SegmentInfo] = []
    for prefix, segs in by_prefix.items():
        if prefix in busy:
            rest.extend(segs)
            continue
        owner = owner_of(prefix)
        if owner == self_name or sum(s.size for s in segs) >= max_size:
            rest.extend(segs)
            continue
        segs.sort(key=lambda s: s.name.segment_id)
        send = []
        for s in segs:
            if s.name.segment_id in excluded or ages.get(s.name.segment_id, 0.0) >= max_age:
                rest.append(s)
            else:
                send.append(s)
        if send:
            transfers.append(PlannedTransfer(prefix, owner, tuple(send)))
    transfers.sort(key=lambda t: t.segments[0].name.segment_id)
    return transfers, rest
