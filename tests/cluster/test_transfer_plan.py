"""Transfer or upload (`node/transfer/plan.py`), on made-up segments."""

from __future__ import annotations

from node.transfer.plan import plan_transfers
from node.upload.batcher import MB
from tests.test_batcher import seg

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
