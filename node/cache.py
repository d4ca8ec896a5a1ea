"""The node's bounded caches, of two kinds: `Generations`, which forgets what goes cold, and
`BoundedCache`, which empties itself when full.

`Generations` is for the converters' per-name and per-series caches, where a miss is costly and
what was used lately is used again.

A cache is two dicts, generations. Every lookup that finds its entry in the old one moves it to
the young one; a turn drops the old generation and makes the young one old:

    get(k):  young[k]  or  old[k] -> copied into young  or  None (the caller computes and puts)
    turn():  old = young; young = {}

An entry used at least once between two turns is never dropped; one unused for two turns is gone,
with its memory (a name sent once by a pod that went away, the series of 10,000 metric names
sent once). A cache turns when its young generation holds half its size (so both together hold at
most `max_entries`, plus what one call added before the next check), and on a clock its owner
keeps (`node.ingest`: every `--max-segment-age`). A hit costs one dict lookup; a turn is O(1),
and the dropped generation is freed as a whole.

Not thread-safe: one converter at a time uses its caches (node/ingest.py runs conversions one at
a time).

`BoundedCache` is a dict that holds at most `max_entries`: a `put` that finds it full empties it
first. It is for caches whose misses are cheap and whose entries are all alike (the date text of a
second, a counter's child): nothing to choose between, and a lookup is a plain dict lookup (hot
loops may bind `cache.get`). It takes no lock: two threads putting at once at worst empty it twice
or leave it one entry over, which a cache can afford.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Generations(Generic[K, V]):
    """A map of at most `max_entries` entries (checked by `turn_if_full`) that forgets cold ones."""

    __slots__ = ("_half", "old", "young")

    def __init__(self, max_entries: int) -> None:
        self._half = max(1, max_entries // 2)
        self.young: dict[K, V] = {}
        """Entries used since the last turn: hot loops may read it directly (`young.get`)."""
        self.old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self.young.get(key)
        if value is None:
            value = self.old.get(key)
            if value is not None:
                self.young[key] = value
        return value

    def put(self, key: K, value: V) -> V:
        self.young[key] = value
        return value

    def turn(self) -> None:
        """Drop what was not used since the previous turn."""
        self.old = self.young
        self.young = {}

    def turn_if_full(self) -> bool:
        if len(self.young) < self._half:
            return False
        self.turn()
        return True

    def clear(self) -> None:
        self.young = {}
        self.old = {}

    def __len__(self) -> int:
        """Entries held (one used since the last turn may be counted in both generations)."""
        return len(self.young) + len(self.old)


class BoundedCache(dict[K, V]):
    """A dict of at most `max_entries` entries that empties itself when a `put` finds it full.

    Read it as a dict (`get`, `in`, `[]`); add to it with `put` only, on a miss.
    """

    __slots__ = ("max_entries",)

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.max_entries:
            self.clear()
        self[key] = value
        return value
