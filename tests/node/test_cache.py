"""BoundedCache: the one cache that empties itself when full, and the caches built on it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.cache import BoundedCache
from node.rows.csvtext import Timestamps
from node.sinks.clickhouse import EpochNanos


def test_a_put_that_finds_it_full_empties_it_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3)
    assert cache.put("a", 1) == 1
    cache.put("b", 2)
    cache.put("c", 3)
    assert dict(cache) == {"a": 1, "b": 2, "c": 3} and cache.get("a") == 1 and "b" in cache
    assert cache.put("d", 4) == 4
    assert dict(cache) == {"d": 4}
    assert cache.get("a") is None


@given(max_entries=st.integers(1, 20), keys=st.lists(st.integers(0, 50), max_size=200))
def test_it_never_holds_more_than_its_size_and_keeps_the_last_put(max_entries: int, keys: list[int]) -> None:
    cache: BoundedCache[int, int] = BoundedCache(max_entries)
    for k in keys:
        if cache.get(k) is None:  # as its users do: put on a miss
            cache.put(k, k)
        assert len(cache) <= max_entries and cache[k] == k


def test_timestamps_and_epoch_nanos_stay_within_their_size() -> None:
    ts = Timestamps(9, max_entries=4)
    texts = [ts.format(i * 1_500_000_000) for i in range(10)]
    assert texts[1] == "1970-01-01T00:00:01.500000000Z"
    assert len(ts.cache) <= 4 and len(ts.prefixes) <= 4
    assert [ts.format(i * 1_500_000_000) for i in range(10)] == texts  # what went is computed again alike
    epoch = EpochNanos(max_entries=2)
    stamps = [f"2026-11-24T00:00:0{i}.5Z" for i in range(5)]
    assert [epoch(s) for s in stamps] == [epoch(s) for s in stamps]
    assert epoch(stamps[1]) == 1795478401_500_000_000
    assert len(epoch._seconds) <= 2
