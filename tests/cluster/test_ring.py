"""The ownership ring: balance, minimal movement on a join or a leave, fallback order, determinism."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.health import PeerHealth
from cluster.membership import Peer, StaticMembership
from cluster.ring import Ring
from cluster.view import ClusterView

REALISTIC = [f"Metrics_ContainerCpuUsageSecondsTotal_{i}" for i in range(100_000)]
_rng = random.Random(20261124)
_ALNUM = string.ascii_letters + string.digits
RANDOM = [
    "".join(_rng.choices(_ALNUM, k=_rng.randint(4, 40))) for _ in range(100_000)
]
FEW_KEYS = REALISTIC[:300]

peer_name = st.text(alphabet=string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=20)
peer_sets = st.lists(peer_name, min_size=2, max_size=40, unique=True)


def pods(n: int) -> list[str]:
    return [f"ingestor-{i}" for i in range(n)]


def owners(ring: Ring, keys: list[str]) -> list[str]:
    return [ring.owner(k) for k in keys]


def check_movement(before: Ring, after: Ring, keys: list[str]) -> None:
    """Only the keys that must move do, and no more than 1.1x the share of the peer that changed.

    The changing peer's share is 1/N of the ring it is in: N before a leave, N + 1 after a join.
    """
    joined = set(after.peers) - set(before.peers)
    left = set(before.peers) - set(after.peers)
    assert len(joined) + len(left) == 1
    old, new = owners(before, keys), owners(after, keys)
    moved = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    for a, b in moved:
        assert a in left or b in joined, f"a key moved from {a} to {b}, both of which stayed"
    if left:  # exactly the leaving peer's keys move
        assert len(moved) == old.count(left.pop())
    else:  # exactly the keys the new peer now owns move
        assert len(moved) == new.count(joined.pop())
    n = max(len(before), len(after))
    assert len(moved) <= 1.10 * len(keys) / n, f"{len(moved) / len(keys):.4f} of the keys moved, 1/N = {1 / n:.4f}"


@pytest.mark.parametrize("keys", [REALISTIC, RANDOM], ids=["realistic", "random"])
@pytest.mark.parametrize("n", [3, 10, 50])
def test_busiest_peer_owns_at_most_110_percent_of_the_mean(n: int, keys: list[str]) -> None:
    counts = Counter(owners(Ring(pods(n)), keys))
    assert set(counts) == set(pods(n))
    assert max(counts.values()) <= 1.10 * len(keys) / n, counts.most_common(1)


@pytest.mark.parametrize("n", [3, 10, 50])
def test_a_join_or_a_leave_moves_only_the_keys_that_must_move(n: int) -> None:
    ring = Ring(pods(n))
    check_movement(ring, Ring(pods(n + 1)), REALISTIC)  # scale up: ingestor-n joins
    check_movement(ring, Ring(pods(n - 1)), REALISTIC)  # scale down: the highest ordinal leaves
    check_movement(ring, Ring(p for p in pods(n) if p != "ingestor-0"), REALISTIC)  # an arbitrary peer leaves


@settings(max_examples=10, deadline=None)
@given(peers=peer_sets, data=st.data())
def test_movement_on_generated_peer_sets(peers: list[str], data: st.DataObject) -> None:
    ring = Ring(peers)
    leaving = data.draw(st.sampled_from(peers), label="leaving")
    joining = data.draw(peer_name.filter(lambda p: p not in peers), label="joining")
    check_movement(ring, Ring(p for p in peers if p != leaving), REALISTIC)
    check_movement(ring, Ring([*peers, joining]), REALISTIC)


def preference(key: str, peers: list[str]) -> list[str]:
    """The key's preference order as the module docstring defines it: falling xxhash64(key + peer),
    ties to the first name."""
    return sorted(peers, key=lambda p: (-xxhash.xxh64_intdigest((key + p).encode()), p))


@settings(max_examples=40, deadline=None)
@given(peers=peer_sets)
def test_the_fallback_is_the_owner_of_the_ring_without_the_owner(peers: list[str]) -> None:
    ring = Ring(peers)
    for key in FEW_KEYS[:50]:
        order = preference(key, peers)
        assert order[0] == ring.owner(key)
        smaller = Ring(p for p in peers if p != order[0])
        assert smaller.owner(key) == order[1]
        assert [Ring(order[i:]).owner(key) for i in range(len(order))] == order


@settings(max_examples=40, deadline=None)
@given(peers=peer_sets, data=st.data())
def test_over_the_healthy_peers_the_owner_is_the_first_healthy_one_in_preference_order(
        peers: list[str], data: st.DataObject) -> None:
    """What `ClusterView` relies on: a ring over any subset of the peers gives each key the first
    peer of its preference order (over all of them) that is in the subset."""
    healthy = data.draw(st.lists(st.sampled_from(peers), min_size=1, unique=True), label="healthy")
    ring = Ring(healthy)
    for key in FEW_KEYS[:50]:
        assert ring.owner(key) == next(p for p in preference(key, peers) if p in healthy)


@settings(max_examples=20, deadline=None)
@given(peers=peer_sets, data=st.data())
def test_the_view_gives_an_unhealthy_owners_keys_to_the_next_healthy_peer(peers: list[str],
                                                                           data: st.DataObject) -> None:
    me = data.draw(st.sampled_from(peers), label="me")
    sick = data.draw(st.sets(st.sampled_from(peers)), label="unhealthy")
    health = PeerHealth(60, clock=lambda: 0.0)
    for name in sick:
        health.mark_unhealthy(name, "test")
    view = ClusterView(me, f"{me}:1", StaticMembership(Peer(p, f"{p}:1") for p in peers), health)
    counted = [p for p in peers if p not in sick or p == me]  # this node is always in its own ring
    for key in FEW_KEYS[:50]:
        assert view.owner(key) == next(p for p in preference(key, peers) if p in counted)


@settings(max_examples=25, deadline=None)
@given(peers=peer_sets, seed=st.randoms(use_true_random=False))
def test_the_order_of_the_peer_list_does_not_matter(peers: list[str], seed: random.Random) -> None:
    shuffled = list(peers)
    seed.shuffle(shuffled)
    a, b = Ring(peers), Ring(shuffled)
    assert a.peers == b.peers == tuple(sorted(peers))
    for key in FEW_KEYS:
        assert a.owner(key) == b.owner(key)


def test_two_rings_from_the_same_pods_agree_on_every_key() -> None:
    names = pods(10)
    a, b = Ring(names), Ring(reversed(names))
    assert owners(a, RANDOM[:20_000]) == owners(b, RANDOM[:20_000])


def test_the_score_is_xxhash64_of_key_then_peer_name() -> None:
    # Pinned: nodes of two versions must agree during a rolling upgrade, so the hash may not drift.
    peers = pods(5)
    ring = Ring(peers)
    for key in ["Metrics_Cpu", "Logs_KubeEvents_1a2b3c", *FEW_KEYS[:20]]:
        expected = sorted(peers, key=lambda p: -xxhash.xxh64_intdigest((key + p).encode()))
        assert [Ring(expected[i:]).owner(key) for i in range(len(expected))] == expected
        assert ring.owner(key) == expected[0]
    assert Ring(["ingestor-0", "ingestor-1", "ingestor-2"]).owner("Metrics_Cpu") == "ingestor-0"



def test_a_single_peer_owns_everything() -> None:
    ring = Ring(["only"])
    assert ring.owner("Db_T") == "only"


@pytest.mark.parametrize(
    ("peers", "message"),
    [([], "at least one"), (["a", "b", "a"], "duplicate peer names: a"), (["a", ""], "empty")],
    ids=["empty", "duplicate", "empty_name"],
)
def test_bad_peer_lists_are_refused(peers: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ring(peers)


def test_the_ring_is_read_only() -> None:
    ring = Ring(pods(3))
    with pytest.raises(AttributeError):
        ring.peers = ("x",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ring.extra = 1  # type: ignore[attr-defined]
    assert len(ring) == 3 and repr(ring) == "Ring(['ingestor-0', 'ingestor-1', 'ingestor-2'])"
