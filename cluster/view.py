"""This node's view of the cluster: the members, their health, and the ring over the healthy ones.

The owner of a table prefix is computed over the healthy members only (`PeerHealth`), so while
a peer is unhealthy its keys go to their next peer in hash order, and when it is healthy again
(or rejoins after a restart) they come back: nothing to coordinate, every node computes the same.
This node is always a member of its own ring, even when the membership source does not list it
yet (a pod not Ready yet, a static list without it): it can always own what no one else can take.
"""

from __future__ import annotations

from cluster.health import PeerHealth
from cluster.membership import Membership, Peer
from cluster.ring import Ring


class ClusterView:
    def __init__(self, self_name: str, self_address: str, membership: Membership, health: PeerHealth) -> None:
        self.self_name = self_name
        self.self_address = self_address
        self.membership = membership
        self.health = health
        self._ring_key: tuple[str, ...] = ()
        self._ring: Ring | None = None

    def members(self) -> dict[str, Peer]:
        """Every peer the membership source lists, and this node."""
        found = {p.name: p for p in self.membership.peers()}
        found.setdefault(self.self_name, Peer(self.self_name, self.self_address))
        return found

    def ring(self) -> Ring:
        """The ring over the healthy members (rebuilt only when that set changes)."""
        names = tuple(sorted(n for n in self.health.healthy(self.members()) if n))
        if self.self_name not in names:
            names = tuple(sorted((*names, self.self_name)))
        if self._ring is None or names != self._ring_key:
            self._ring, self._ring_key = Ring(names), names
        return self._ring

    def owner(self, prefix: str) -> str:
        return self.ring().owner(prefix)

    def peer(self, name: str) -> Peer | None:
        return self.members().get(name)
