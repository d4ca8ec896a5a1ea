"""One node: the WAL, the receivers on the gRPC and HTTP ports, and their lifecycle.

Start order: WAL recovery, then the servers bind and start, then the node turns SERVING (health
and /readyz flip only then). Stop order is the reverse: NOT_SERVING, stop accepting and let
in-flight requests finish within the grace period, then close the active segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from node import __version__
from node.budget import MemoryBudget, per_process
from node.config import NodeConfig, memory_budget
from node.gen.ingestor.v1 import admin_pb2, transfer_pb2_grpc
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.peers import ClusterParts, cluster_of, peer_auth, server_credentials
from node.ratelog import RateLimitedLog
from node.receivers.grpc import GrpcLimits, GrpcServer
from node.receivers.http import HttpLimits, HttpServer, build_app
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.sinks.factory import allowed_databases, make_sink
from node.state import NodeState, Phase
from node.transfer.ledger import LEDGER_FILE, TransferLedger
from node.transfer.service import TRANSFER_SERVICE, TransferService
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal.repository import Repository, SharedUsage, WalConfig, WalStats, directory_stats

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
BATCH_GRACE_SECONDS = 30.0
"""A batch smaller than min-batch-size waits at most max-segment-age plus this (or plus
max-segment-age again, when that is shorter)."""
BLOCKED_FILE = "blocked-databases"
LEAVING_FILE = "leaving"
"""Written by worker 0 when the node leaves the cluster: the other receivers stop taking data."""
LEAVE_SETTLE_SECONDS = 1.0
"""Time for requests that were already accepted to finish writing, before segments are closed."""
CLUSTER_FILE = "cluster.json"
"""Written by worker 0 every tick: the ring as it sees it, for the status other receivers serve."""


def tune_malloc() -> None:
    """Keep glibc from returning freed memory to the OS and faulting it back on every request.

    With large protobuf objects alive this halved parse speed here; it is what the environment
    variable MALLOC_TRIM_THRESHOLD_ does, set from inside the process.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_trim_threshold, 256 << 20)
        libc.mallopt(m_mmap_threshold, 64 << 20)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Node:
    """A running node. `await start()`, then `await stop()`; both once."""

    def __init__(self, config: NodeConfig, registry: CollectorRegistry | None = None, *, worker: int = 0,
                 shared: SharedUsage | None = None) -> None:
        """`worker` > 0 makes a receiver process of a multi-process node: it writes its own active
        segments and leaves recovery, the index of closed segments and uploads to worker 0."""
        self.config = config
        self.worker = worker
        self.metrics = NodeMetrics(registry or CollectorRegistry())
        self.wal = Repository(
            WalConfig(
                directory=config.wal_dir,
                node_name=config.node_name,
                worker=worker,
                fsync=config.wal_fsync,
                max_segment_size=config.max_segment_size,
                max_segment_age=config.max_segment_age,
                max_disk_usage=config.max_disk_usage,
                max_segment_count=config.max_segment_count,
                max_disk_usage_per_database=config.max_disk_usage_per_database,
                min_free_disk=config.min_free_disk,
            ),
            on_repair=self.metrics.wal_repairs.inc,
            shared=shared,
            on_vanished=lambda info: self.metrics.wal_vanished.inc(),
        )
        self.state = NodeState(over_limits=self.wal.over_limits)
        allowed = allowed_databases(config)
        converters = Converters(
            MetricsConverter(MetricsConfig(default_database=config.default_metrics_database,
                                           lift_labels=config.lift_labels, allowed_databases=allowed)),
            LogsConverter(LogsConfig(default_database=config.default_logs_database,
                                     default_table=config.default_logs_table, allowed_databases=allowed)),
            TracesConverter(TracesConfig(default_database=config.default_traces_database,
                                         default_table=config.default_traces_table, allowed_databases=allowed)),
        )
        self.uploader: Uploader | None = None
        self.cluster: ClusterParts | None = None
        if worker == 0:
            self.cluster = cluster_of(config, self.metrics)
            policy = BatchPolicy(min_batch_bytes=config.min_batch_size, max_batch_bytes=config.max_batch_size,
                                 max_batch_segments=config.max_batch_segments,
                                 max_wait=config.max_segment_age + min(BATCH_GRACE_SECONDS, config.max_segment_age))
            self.uploader = Uploader(self.wal, make_sink(config),
                                     UploadConfig(interval=config.upload_interval, uploads=config.uploads,
                                                  policy=policy),
                                     self.metrics, refresh=config.receivers > 1,
                                     router=self.cluster.router if self.cluster is not None else None)
        self.budget = MemoryBudget(per_process(config.max_memory or memory_budget(), config.receivers),
                                   on_change=self.metrics.memory_in_flight.set,
                                   on_refused=lambda what: self.metrics.memory_refused.labels(what).inc())
        """This process's share of --max-memory: requests and transfers in flight (node/budget.py)."""
        self.ledger = TransferLedger(config.storage_dir / LEDGER_FILE)
        self.transfer = TransferService(self.wal, self.state, self.ledger, peer_auth(config), self.metrics,
                                        budget=self.budget, stall_timeout=config.stall_timeout,
                                        min_request_rate=config.min_request_rate)
        self.ingest = Ingest(self.wal, converters, self.state, self.metrics, self.budget)
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started = time.time()
        self._stop_started = 0.0
        self.shutdown_watcher: Any = None
        self._was_ready: bool | None = None
        self.receivers_stopped = asyncio.Event()
        """Set by the supervisor once the other receiver processes have exited."""

    async def start(self) -> None:
        await self.start_wal()
        await self.start_servers()

    async def start_wal(self) -> None:
        """Recover the WAL (worker 0), or open it for writing (other workers)."""
        Path(self.config.storage_dir).mkdir(parents=True, exist_ok=True)
        recover = self.worker == 0
        report = await asyncio.to_thread(self.wal.start, recover=recover)
        await asyncio.to_thread(self.ledger.open)
        if recover:
            await asyncio.to_thread(self.ledger.compact)
            (self.config.storage_dir / LEAVING_FILE).unlink(missing_ok=True)
        if recover:
            log.info("node %s: WAL recovered %d segments (%d repaired)", self.config.node_name, report.segments,
                     report.repaired)
        if self.cluster is not None:
            await self.cluster.membership.start()
        if self.uploader is not None:
            await self.uploader.start()

    async def start_servers(self) -> None:
        """Bind the ports, start serving, then turn ready."""
        self.grpc = GrpcServer(self.config.grpc_addr, self.ingest, self.state, self.metrics, self.status,
                               self.config.max_request_bytes, reuse_port=self.config.receivers > 1,
                               extra=[(transfer_pb2_grpc.add_TransferServicer_to_server, self.transfer,
                                       TRANSFER_SERVICE)],
                               credentials=server_credentials(self.config), limits=GrpcLimits.of(self.config))
        host, port = split_addr(self.config.http_addr)
        limits = HttpLimits.of(self.config)
        self.http = HttpServer(build_app(self.ingest, self.state, self.metrics, self.config.max_request_bytes,
                                         limits, self.budget), host, port, reuse_port=self.config.receivers > 1,
                               limits=limits)
        await self.grpc.start()
        await self.http.start()
        self.state.set_phase(Phase.SERVING)
        await self.grpc.health.update()
        self._ticker = asyncio.create_task(self._tick(), name="node-tick")
        if self.worker == 0 and self.config.drain_on_annotation:
            from cluster.kube import core_api, current_namespace
            from node.shutdown import ShutdownWatcher

            namespace = self.config.namespace or current_namespace(self.config.kubeconfig)
            api = await asyncio.to_thread(core_api, self.config.kubeconfig)
            self.shutdown_watcher = ShutdownWatcher(self.config.node_name, namespace, api, self.leave)
            await self.shutdown_watcher.start()
        log.info("node %s (receiver %d) serving: gRPC on port %d, HTTP on port %d", self.config.node_name,
                 self.worker, self.grpc.port, self.http.port)

    async def _tick(self) -> None:
        """Once a second: close segments past max age, refresh gauges and health. A tick that
        fails (a full disk as it closes a segment or writes cluster.json) is logged and the next
        one runs: this loop ending would leave segments open, and their rows undelivered, until a
        restart."""
        said = RateLimitedLog(log, interval=60.0)
        while True:
            try:
                await self._tick_once()
            except Exception as e:
                said.log(logging.ERROR, type(e).__name__, "node %s: tick failed (retried every %.0fs): %s",
                         self.config.node_name, TICK_SECONDS, e)
            await asyncio.sleep(TICK_SECONDS)

    async def _tick_once(self) -> None:
        await asyncio.to_thread(self.wal.rotate_expired)
        if self.worker == 0:
            stats = await asyncio.to_thread(directory_stats, self.wal.directory)
            self.metrics.wal_bytes.set(stats.disk_usage)
            self.metrics.wal_segments.set(stats.segment_count)
            if self.config.max_disk_usage_per_database and self.config.receivers > 1:
                await asyncio.to_thread(self._publish_blocked, stats)
            if self.cluster is not None:
                await asyncio.to_thread(self._publish_cluster, stats)
        else:
            if self.config.max_disk_usage_per_database:
                await asyncio.to_thread(self._read_blocked)
            if self.state.phase is Phase.SERVING and (self.config.storage_dir / LEAVING_FILE).exists():
                self.state.detail = "leaving the cluster"
                self.state.set_phase(Phase.DRAINING)
                if self.grpc is not None:
                    await self.grpc.health.update()
                await asyncio.sleep(LEAVE_SETTLE_SECONDS)
                await asyncio.to_thread(self.wal.rotate_all)
        ready = not self.state.not_ready_reason()
        self.metrics.ready.set(1 if ready else 0)
        if ready != self._was_ready and self.grpc is not None:
            await self.grpc.health.update()
            self._was_ready = ready

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace if grace is None else grace
        self._stop_started = time.monotonic()
        log.info("node %s stopping: no longer ready, finishing in-flight requests (grace %.0fs)",
                 self.config.node_name, grace)
        self.state.set_phase(Phase.DRAINING)
        self.metrics.ready.set(0)
        if self.shutdown_watcher is not None:
            await self.shutdown_watcher.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.grpc is not None:
            await self.grpc.health.update()
        await asyncio.gather(
            self.grpc.stop(grace) if self.grpc is not None else asyncio.sleep(0),
            self.http.stop(grace) if self.http is not None else asyncio.sleep(0),
        )
        closed = await asyncio.to_thread(self.wal.stop)
        log.info("node %s: receivers stopped, %d active segments closed", self.config.node_name, len(closed))
        if self.uploader is not None:
            await self.drain(self._stop_started + grace)
            await self.uploader.stop()
        if self.cluster is not None:
            await self.cluster.membership.stop()
        await asyncio.to_thread(self.ledger.close)
        self.state.set_phase(Phase.STOPPED)
        log.info("node %s stopped", self.config.node_name)

    async def leave(self) -> bool:
        """Leave the cluster for good (scale-down): take no new data (readiness 503, health
        NOT_SERVING), close the active segments, and upload everything held here; nothing is
        transferred, since this node is the one going away. Returns whether nothing is left.
        The servers keep answering probes and status until SIGTERM."""
        assert self.uploader is not None
        log.info("node %s leaving: no new data; closing segments and uploading everything", self.config.node_name)
        self.state.detail = "leaving the cluster"
        self.state.set_phase(Phase.DRAINING)
        self.metrics.ready.set(0)
        if self.grpc is not None:
            await self.grpc.health.update()
        self.uploader.transfers_enabled = False
        if self.config.receivers > 1:
            await asyncio.to_thread((self.config.storage_dir / LEAVING_FILE).write_text, "leaving\n")
        await asyncio.sleep(LEAVE_SETTLE_SECONDS)
        await asyncio.to_thread(self.wal.rotate_all)
        if self.config.receivers > 1:  # the other receivers close theirs on their next tick
            deadline = time.monotonic() + 30
            while any((self.wal.directory / "active").iterdir()) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)

        def progress(segments: int, nbytes: int) -> None:
            self.state.detail = f"leaving the cluster: {segments} segments ({nbytes} bytes) left to upload"

        done = await self.uploader.drain(float("inf") if self.config.receivers <= 1 else time.monotonic() + 86400,
                                         progress)
        self.state.detail = "left the cluster: everything uploaded" if done else self.state.detail
        log.info("node %s: %s", self.config.node_name, self.state.detail)
        return done

    async def drain(self, deadline: float) -> bool:
        """Upload everything closed before `deadline` (monotonic); what is left stays on disk."""
        assert self.uploader is not None
        if self.config.receivers > 1:
            await self.receivers_stopped.wait()
        done = await self.uploader.drain(deadline)
        left = self.wal.closed_segments()
        if done:
            log.info("node %s: everything uploaded", self.config.node_name)
        else:
            log.warning("node %s: grace period over with %d segments (%d bytes) not uploaded; they stay on disk "
                        "and are uploaded after the next start", self.config.node_name, len(left),
                        sum(s.size for s in left))
        return done

    def _publish_blocked(self, stats: WalStats) -> None:
        """Supervisor: tell the other receivers which databases are over their share."""
        per_db: dict[str, int] = {}
        for prefix, (_, nbytes) in stats.closed.items():
            per_db[prefix.split("_")[0]] = per_db.get(prefix.split("_")[0], 0) + nbytes
        for prefix, nbytes in stats.active.items():
            per_db[prefix.split("_")[0]] = per_db.get(prefix.split("_")[0], 0) + nbytes
        limit = self.config.max_disk_usage_per_database
        blocked = sorted(db for db, n in per_db.items() if n >= limit * 0.99)
        self.wal.blocked_databases = frozenset(blocked)
        path = self.wal.directory / BLOCKED_FILE
        text = "\n".join(blocked)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _read_blocked(self) -> None:
        try:
            text = (self.wal.directory / BLOCKED_FILE).read_text()
        except FileNotFoundError:
            text = ""
        self.wal.blocked_databases = frozenset(x for x in text.split("\n") if x)

    def status(self) -> admin_pb2.NodeStatus:
        stats = directory_stats(self.wal.directory)
        c = self.config
        st = admin_pb2.NodeStatus(
            node_name=c.node_name,
            ready=not self.state.not_ready_reason(),
            readiness_reason=self.state.not_ready_reason(),
            disk_usage_bytes=stats.disk_usage,
            segment_count=stats.segment_count,
            limits=admin_pb2.Limits(max_disk_usage=c.max_disk_usage, max_segment_count=c.max_segment_count,
                                    max_segment_size=c.max_segment_size,
                                    max_segment_age_seconds=c.max_segment_age),
            version=__version__,
        )
        ring = self._cluster_status(stats) if self.worker == 0 else self._read_cluster()
        owners: dict[str, str] = ring.get("owners", {})
        for prefix in sorted(set(stats.closed) | set(stats.active)):
            db, table = prefix.split("_")[:2]
            n, closed_bytes = stats.closed.get(prefix, (0, 0))
            st.tables.add(database=db, table=table, closed_segments=n, closed_bytes=closed_bytes,
                          active_bytes=stats.active.get(prefix, 0), owner=owners.get(prefix, c.node_name))
        for p in ring.get("peers", []):
            st.peers.add(name=p["name"], address=p["address"], healthy=p["healthy"], self=p["name"] == c.node_name,
                         unhealthy_reason=p.get("reason", ""))
        st.owned_prefixes.extend(sorted(p for p, o in owners.items() if o == c.node_name))
        st.transfer_queue = ring.get("queue", 0)
        return st

    def _cluster_status(self, stats: WalStats) -> dict[str, Any]:
        """The ring as this node sees it: peers with health, the owner of each prefix held here."""
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

    def _publish_cluster(self, stats: WalStats) -> None:
        """Worker 0: the ring for the other receivers' status, and the cluster gauges."""
        ring = self._cluster_status(stats)
        healthy = sum(1 for p in ring["peers"] if p["healthy"])
        self.metrics.peers.labels("healthy").set(healthy)
        self.metrics.peers.labels("unhealthy").set(len(ring["peers"]) - healthy)
        self.metrics.owned_tables.set(sum(1 for o in ring["owners"].values() if o == self.config.node_name))
        if self.config.receivers > 1:
            path = self.config.storage_dir / CLUSTER_FILE
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(ring))
            os.replace(tmp, path)

    def _read_cluster(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.config.storage_dir / CLUSTER_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data
