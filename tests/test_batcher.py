"""The batching policy, on made-up segments."""

from __future__ import annotations

from pathlib import Path

from node.upload.batcher import MB, BatchPolicy, plan, plan_transfers
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


# -- transfer or upload ----------------------------------------------------------------------

OWNERS = {"Db_Mine": "me", "Db_Theirs": "peer-1", "Db_Hot": "peer-2"}


def test_small_young_segments_of_tables_others_own_go_to_the_owner_in_one_transfer() -> None:
    mine = [seg("Db_Mine", 5, MB, i) for i in range(2)]
    theirs = [seg("Db_Theirs", 5, MB, i) for i in range(3)]
    ages = {s.name.segment_id: 5.0 for s in [*mine, *theirs]}
    transfers, rest = plan_transfers([*theirs, *mine], OWNERS.__getitem__, "me", ages, 100 * MB, 90, set())
    [t] = transfers
    assert (t.prefix, t.owner, t.segments, t.size) == ("Db_Theirs", "peer-1", tuple(theirs), 3 * MB)
    assert rest == mine  # owned here: uploaded here


def test_a_hot_table_is_uploaded_where_it_is_not_piled_onto_its_owner() -> None:
    hot = [seg("Db_Hot", 5, 40 * MB, i) for i in range(3)]  # 120 MB here: a full batch already
    transfers, rest = plan_transfers(hot, OWNERS.__getitem__, "me", {}, 100 * MB, 90, set())
    assert transfers == [] and rest == hot
    transfers, rest = plan_transfers(hot[:2], OWNERS.__getitem__, "me", {}, 100 * MB, 90, set())
    assert [t.segments for t in transfers] == [tuple(hot[:2])] and rest == []


def test_old_refused_and_busy_segments_stay_here() -> None:
    segs = [seg("Db_Theirs", 5, MB, i) for i in range(4)]
    ids = [s.name.segment_id for s in segs]
    ages = {ids[0]: 90.0, ids[1]: 89.9, ids[2]: 1.0, ids[3]: 1.0}
    transfers, rest = plan_transfers(segs, OWNERS.__getitem__, "me", ages, 100 * MB, 90, set(), excluded={ids[2]})
    assert [t.segments for t in transfers] == [(segs[1], segs[3])]
    assert rest == [segs[0], segs[2]]  # waited 90 s or more; refused by a peer
    transfers, rest = plan_transfers(segs, OWNERS.__getitem__, "me", ages, 100 * MB, 90, {"Db_Theirs"})
    assert transfers == [] and rest == segs
