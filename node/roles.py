"""The two roles a node's process can have, and what each does on the node's tick.

Every process of a node receives: it serves the ports and writes its own active segments
(node/server.py). One of them, the **supervisor** (receiver 0, the only process of a node with
`--receivers 1`), also holds everything that must exist once per node: it recovers the WAL,
keeps the index of closed segments, uploads them (through their owners on the ring when there
are peers), compacts the transfer ledger, watches for the scale-down annotation and leaves the
cluster. The other processes are **receivers**: they follow what the supervisor tells them
through `node/siblings.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from node.config import NodeConfig
from node.metrics import NodeMetrics
from node.peers import ClusterParts
from node.siblings import Siblings
from node.state import NodeState
from node.statuspage import summarize
from node.transfer.ledger import TransferLedger
from node.upload.uploader import Uploader
from node.wal.names import database_of
from node.wal.repository import Repository, WalStats, directory_stats

if TYPE_CHECKING:
    from node.shutdown import ShutdownWatcher

log = logging.getLogger(__name__)

LEAVE_SETTLE_SECONDS = 1.0
"""Time for requests that were already accepted to finish writing, before segments are closed."""
SIBLINGS_CLOSE_SECONDS = 30.0
"""How long a leaving supervisor waits for its siblings to close their active segments."""
LEAVE_POLL_SECONDS = 0.2
BLOCKED_AT = 0.99
"""A database is blocked for the receivers once its segments reach this share of
--max-disk-usage-per-database: the receivers see it a tick late, so they stop a little early."""
SIBLINGS_SEE_SECONDS = 2.5
"""How long a leaving supervisor gives its siblings to read its last word (they read the leaving
file at every one-second tick) before the leave is reported done."""
SIBLINGS_DRAIN_SECONDS = 86400.0
"""A multi-process node that leaves uploads for at most this long: its siblings may still write."""
SCAN_SECONDS_PER_SEGMENT = 0.0005
"""The supervisor's tick scans the WAL directory (every process's segments: the gauges, the
blocked databases, the ring's owners) once a second, or once per this many seconds per segment
when that is longer: a scan costs ~7 ms of CPU per 1,000 segments, so the idle cost stays flat
(~1% of a core) however many segments wait on disk (10,000: one scan every 5 s)."""


class Role(Protocol):
    async def start(self) -> None: ...
    async def tick(self) -> None: ...
    def ring(self, stats: WalStats) -> dict[str, Any]:
        """Peers (with health), the owner of each prefix held here, the transfer queue; {} alone."""
        ...
    async def stop(self, deadline: float) -> None: ...


class Supervisor:
    """Receiver 0: recovery, the index of closed segments, uploads, the cluster, leaving."""

    def __init__(self, config: NodeConfig, wal: Repository, uploader: Uploader, cluster: ClusterParts | None,
                 ledger: TransferLedger, siblings: Siblings, state: NodeState, metrics: NodeMetrics) -> None:
        self.config = config
        self.wal = wal
        self.uploader = uploader
        self.cluster = cluster
        self.ledger = ledger
        self.siblings = siblings
        self.state = state
        self.metrics = metrics
        self.shutdown_watcher: ShutdownWatcher | None = None
        self._next_scan = 0.0
        self.published: dict[str, Any] = {}
        """What the last scan found, as the siblings get it in cluster.json: the ring (`ring()`) and
        the tables for the status page (node/statuspage.py `summarize`); {} before the first scan."""
        self.siblings_stopped = asyncio.Event()
        """Set once the other receiver processes have exited (at once for a node of one process)."""
        if not config.multiprocess:
            self.siblings_stopped.set()

    async def start(self) -> None:
        """After the WAL is recovered: a node that restarts is no longer leaving."""
        await asyncio.to_thread(self.ledger.compact)
        self.siblings.clear_leaving()
        if self.cluster is not None:
            await self.cluster.membership.start()
        await self.uploader.start()

    async def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_scan:
            return
        stats = await asyncio.to_thread(directory_stats, self.wal.directory)
        self._next_scan = now + stats.segment_count * SCAN_SECONDS_PER_SEGMENT
        self.metrics.wal_bytes.set(stats.disk_usage)
        self.metrics.wal_segments.set(stats.segment_count)
        if self.config.max_disk_usage_per_database and self.config.multiprocess:
            blocked = self._blocked(stats)
            self.wal.blocked_databases = blocked
            await asyncio.to_thread(self.siblings.publish_blocked, blocked)
        ring = self.ring(stats)
        if self.cluster is not None:
            healthy = sum(1 for p in ring["peers"] if p["healthy"])
            self.metrics.peers.labels("healthy").set(healthy)
            self.metrics.peers.labels("unhealthy").set(len(ring["peers"]) - healthy)
            self.metrics.owned_tables.set(sum(1 for o in ring["owners"].values() if o == self.config.node_name))
        owners: dict[str, str] = ring.get("owners", {})
        hashed = self.cluster.view.ring() if self.cluster is not None else None

        def owner(prefix: str) -> str:  # a table delivered lately, none of it here: its owner now
            found = owners.get(prefix)
            return found if found is not None else hashed.owner(prefix) if hashed is not None else self.config.node_name

        delivered = dict(self.uploader.last_delivered)  # a copy: the uploader adds to it on this loop
        tables = await asyncio.to_thread(summarize, stats, delivered, owner, self.config.node_name, time.time())
        self.published = {**ring, "tables": tables}
        await asyncio.to_thread(self.siblings.publish_ring, self.published)

    async def watch_annotation(self, leave: Callable[[], Awaitable[bool]]) -> None:
        """--drain-on-annotation: `leave()` when the operator asks this pod to (node/shutdown.py)."""
        from cluster.kube import core_api, current_namespace
        from node.shutdown import ShutdownWatcher

        namespace = self.config.namespace or current_namespace(self.config.kubeconfig)
        api = await asyncio.to_thread(core_api, self.config.kubeconfig)
        self.shutdown_watcher = ShutdownWatcher(self.config.node_name, namespace, api, leave)
        await self.shutdown_watcher.start()

    async def stop_watching(self) -> None:
        if self.shutdown_watcher is not None:
            await self.shutdown_watcher.stop()

    def _blocked(self, stats: WalStats) -> frozenset[str]:
        """The databases whose segments, closed and active, are over their share."""
        per_db: dict[str, int] = {}
        sizes = [(prefix, nbytes) for prefix, (_, nbytes) in stats.closed.items()] + list(stats.active.items())
        for prefix, nbytes in sizes:
            db = database_of(prefix)
            per_db[db] = per_db.get(db, 0) + nbytes
        limit = self.config.max_disk_usage_per_database
        return frozenset(db for db, n in per_db.items() if n >= limit * BLOCKED_AT)

    def ring(self, stats: WalStats) -> dict[str, Any]:
        if self.cluster is None:
            return {}
        view = self.cluster.view
        bad = view.health.unhealthy()
        peers = [{"name": p.name, "address": p.address, "healthy": p.name not in bad,
                  "reason": bad[p.name].reason if p.name in bad else ""}
                 for p in sorted(view.members().values())]
        ring = view.ring()
        owners = {prefix: ring.owner(prefix) for prefix in set(stats.closed) | set(stats.active)}
        return {"peers": peers, "owners": owners, "queue": self.cluster.router.queued}

    async def leave(self) -> bool:
        """Leave the cluster for good (the node has stopped taking data): close every active
        segment, the siblings' too, and upload everything held here; nothing is transferred,
        since this node is the one going away. Returns whether nothing is left."""
        self.uploader.transfers_enabled = False
        await asyncio.to_thread(self.siblings.announce_leaving, self.state.detail)
        await asyncio.sleep(LEAVE_SETTLE_SECONDS)
        await asyncio.to_thread(self.wal.rotate_all, compact=False)
        if self.config.multiprocess:  # the siblings close theirs on their next tick
            deadline = time.monotonic() + SIBLINGS_CLOSE_SECONDS
            while any(self.config.layout.wal_active.iterdir()) and time.monotonic() < deadline:
                await asyncio.sleep(LEAVE_POLL_SECONDS)

        def progress(segments: int, nbytes: int) -> None:
            self.state.detail = f"leaving the cluster: {segments} segments ({nbytes} bytes) left to upload"
            self.siblings.announce_leaving(self.state.detail)

        until = time.monotonic() + SIBLINGS_DRAIN_SECONDS if self.config.multiprocess else float("inf")
        done = await self.uploader.drain(until, progress)
        self.state.detail = "left the cluster: everything uploaded" if done else self.state.detail
        await asyncio.to_thread(self.siblings.announce_leaving, self.state.detail)
        if self.config.multiprocess:  # before the leave is reported done, every probe answers alike
            await asyncio.sleep(SIBLINGS_SEE_SECONDS)
        log.info("node %s: %s", self.config.node_name, self.state.detail)
        return done

    async def stop(self, deadline: float) -> None:
        """Upload what is closed until `deadline` (monotonic), then stop the uploads and the
        membership. What is left stays on disk for the next start."""
        await self.siblings_stopped.wait()  # their last segments are closed only then
        done = await self.uploader.drain(deadline)
        if done:
            log.info("node %s: everything uploaded", self.config.node_name)
        else:
            left = self.wal.closed_segments()
            log.warning("node %s: grace period over with %d segments (%d bytes) not uploaded; they stay on disk "
                        "and are uploaded after the next start", self.config.node_name, len(left),
                        sum(s.size for s in left))
        await self.uploader.stop()
        if self.cluster is not None:
            await self.cluster.membership.stop()


class Receiver:
    """Receivers 1..N-1 of a multi-process node: they follow the supervisor."""

    def __init__(self, config: NodeConfig, wal: Repository, siblings: Siblings,
                 stop_taking_data: Callable[[str], Awaitable[None]]) -> None:
        self.config = config
        self.wal = wal
        self.siblings = siblings
        self._stop_taking_data = stop_taking_data
        self._leaving: str | None = None
        """The supervisor's account of the leave, once it has begun."""

    async def start(self) -> None:
        pass

    async def tick(self) -> None:
        if self.config.max_disk_usage_per_database:
            self.wal.blocked_databases = await asyncio.to_thread(self.siblings.blocked)
        leaving = await asyncio.to_thread(self.siblings.leaving)
        if leaving is not None and leaving != self._leaving:
            first, self._leaving = self._leaving is None, leaving
            await self._stop_taking_data(leaving)  # the supervisor's words: probes answer alike
            if first:
                await asyncio.sleep(LEAVE_SETTLE_SECONDS)
                await asyncio.to_thread(self.wal.rotate_all, compact=False)

    def ring(self, stats: WalStats) -> dict[str, Any]:
        return self.siblings.ring()

    async def stop(self, deadline: float) -> None:
        pass
