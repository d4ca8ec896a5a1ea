"""Who owns a table prefix: rendezvous hashing over the peer list, computed alike by every node.

Every table prefix ``<Database>_<Table>[_<SchemaHash>]`` has exactly one owner among the healthy
peers, and every node must agree on it with no coordination. Each peer scores each key with
``xxhash64(key + peer name)`` (UTF-8, no separator, as adx-mon does) and the highest score wins;
the peers sorted by falling score are the key's preference order, so the fallback for an
unhealthy owner is simply the next peer in that order: the owner of the ring without it, which is
how `cluster.view` computes it (a ring over the healthy peers).

Why rendezvous (highest random weight) rather than a ring of virtual nodes or jump hashing:

- movement is minimal by construction: a key's score for a peer depends only on that key and that
  peer, so removing a peer moves exactly that peer's keys (each to its own runner-up) and adding
  one moves only the keys it now wins; no key ever moves between two peers that both stayed;
- balance needs no tuning: every key draws an independent uniform score per peer, so each peer
  owns a binomial share of the keys; a ring of virtual nodes needs many tokens per peer to come
  close, and jump hashing needs dense ordinals, which a peer list with holes (one pod
  unhealthy, or being drained) does not have;
- the fallback order comes for free, and any node computes it from nothing but the peer names.

Its cost is one hash per peer per lookup (O(N) rather than O(log N)), which is cheap at the
sizes of an ingestor set. Measured on a 2-core machine, peers ``ingestor-0..N-1``, 100,000 keys
``Metrics_ContainerCpuUsageSecondsTotal_<i>`` (``python -m tests.bench.bench_ring``); "join" adds
``ingestor-N``, "leave" removes the highest ordinal, as a StatefulSet scales:

=====  ==============  ===========  ============  ======  =================
peers  busiest / mean  moved, join  moved, leave  1/N     ``owner()`` per s
=====  ==============  ===========  ============  ======  =================
3      1.006           0.2484       0.3352        0.3333  1,880,000
10     1.021           0.0906       0.1001        0.1000  886,000
50     1.037           0.0201       0.0198        0.0200  234,000
=====  ==============  ===========  ============  ======  =================

Random ``[A-Za-z0-9]{4,40}`` keys give 1.006, 1.010 and 1.040. The targets are a busiest peer at
most 1.10x the mean and about 1/N of the keys moving; a peer's share is binomial, so the busiest
peer's excess shrinks as keys per peer grow. At 50 peers a lookup costs ~4 µs, far below the cost
of the segment it routes, so the ring keeps no cache: nothing in it grows with the keys seen.

The ring is a frozen snapshot, like dskit's: membership and health are tracked elsewhere, and a
new peer list makes a new ``Ring``.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

_hash = xxhash.xxh64_intdigest


class Ring:
    """A read-only set of peers that assigns each key its owner among them."""

    __slots__ = ("_encoded", "_peers")

    def __init__(self, peers: Iterable[str]) -> None:
        names = list(peers)
        if not names:
            raise ValueError("a ring needs at least one peer")
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate peer names: {', '.join(duplicates)}")
        if any(not n for n in names):
            raise ValueError("a peer name must not be empty")
        # Sorted so that ties (two equal 64-bit scores) go to the same peer whatever the input order.
        self._peers: tuple[str, ...] = tuple(sorted(names))
        self._encoded: tuple[bytes, ...] = tuple(n.encode() for n in self._peers)

    @property
    def peers(self) -> tuple[str, ...]:
        """The peers, sorted by name."""
        return self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __repr__(self) -> str:
        return f"Ring({list(self._peers)!r})"

    def owner(self, key: str) -> str:
        """The peer that owns `key` when every peer is healthy."""
        k = key.encode()
        scores = [_hash(k + p) for p in self._encoded]
        return self._peers[scores.index(max(scores))]
