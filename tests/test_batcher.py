"""The batching policy, on made-up segments."""

from __future__ import annotations

from pathlib import Path

from node.upload.batcher import MB, BatchPolicy, plan
from node.wal.names import FLAKE_EPOCH_MS, SegmentName
from node.wal.table import SegmentInfo

NOW = 1_795_000_000_000


def seg(prefix: str, age_s: float, size: int, seq: int = 0) -> SegmentInfo:
    db, table = prefix.split("_")
    ms = int(NOW - age_s * 1000) - FLAKE_EPOCH_MS
    sid = f"{(ms << 23) | seq:016x}"
    name = SegmentName(db, table, None, sid)
    return SegmentInfo(Path(name.filename), name, size, 1, 1)


POLICY = BatchPolicy(min_batch_bytes=100 * MB, max_batch_bytes=1000 * MB, max_batch_segments=50, max_wait=300)


def test_small_young_data_waits_and_old_data_goes_out_small() -> None:
    segs = [seg("Db_A", 10, 1 * MB, i) for i in range(3)]
    assert plan(segs, NOW, POLICY, set(), {"Db_A": 1.0}) == []
    old = [seg("Db_A", 400, 1 * MB, 0), *segs]
    [b] = plan(old, NOW, POLICY, set(), {"Db_A": 1.0})
    assert b.reason == "age" and len(b.segments) == 4 and b.estimated_bytes == 4 * MB


def test_full_batches_go_out_at_once_and_are_capped() -> None:
    segs = [seg("Db_A", 5, 30 * MB, i) for i in range(40)]  # 1.2 GB at ratio 1
    [b] = plan(segs, NOW, POLICY, set(), {"Db_A": 1.0})
    assert b.reason == "full"
    assert b.estimated_bytes <= 1000 * MB and b.estimated_bytes >= 100 * MB
    assert [s.name.segment_id for s in b.segments] == sorted(s.name.segment_id for s in segs)[: len(b.segments)]


def test_segment_count_cap() -> None:
    segs = [seg("Db_A", 5, 1000, i) for i in range(120)]
    [b] = plan(segs, NOW, POLICY, set(), {"Db_A": 1.0})
    assert len(b.segments) == 50 and b.reason == "full"


def test_busy_and_backing_off_prefixes_are_skipped() -> None:
    segs = [seg("Db_A", 400, MB), seg("Db_B", 400, MB), seg("Db_C", 400, MB)]
    got = plan(segs, NOW, POLICY, {"Db_A"}, not_before={"Db_B": 10.0}, now_mono=5.0)
    assert [b.prefix for b in got] == ["Db_C"]


def test_ratio_estimate_drives_fullness() -> None:
    segs = [seg("Db_A", 5, 25 * MB, i) for i in range(4)]  # 100 MB of segments
    assert plan(segs, NOW, POLICY, set(), {"Db_A": 0.5}) == []
    [b] = plan(segs, NOW, POLICY, set(), {"Db_A": 5.0})
    assert b.estimated_bytes >= 100 * MB

