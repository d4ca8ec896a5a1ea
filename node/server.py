"""One process of a node: the WAL, the receivers on the gRPC and HTTP ports, and their lifecycle.

`Node` composes the parts every process has (the WAL, ingest, the memory budget, the transfer
service, the two servers) with its role (node/roles.py): the supervisor, which also recovers,
uploads and leaves, or a receiver of a multi-process node, which follows the supervisor. The
supervisor alone also serves adx-mon's transfer front door (--transfer-addr, node/transfer/http.py):
one process per node binds it, without SO_REUSEPORT, and indexes what it takes at once.

Start order: WAL recovery (the supervisor) or opening (a receiver), the role's parts, then the
servers bind and start (the front door last), then the node turns SERVING (health and /readyz flip
only then). Stop order is the reverse: NOT_SERVING, stop accepting and let in-flight requests
finish within the grace period (the three servers at once), let the segments being committed
finish, close the active segments, then the role uploads what it can until the grace ends.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry

from cluster.addr import parse_hostport
from cluster.membership import Membership
from cluster.tasks import cancel_and_wait
from node import statuspage
from node.budget import MemoryBudget, per_process
from node.config import NodeConfig
from node.errors import BindError
from node.gen.ingestor.v1 import admin_pb2
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.peers import cluster_of, peer_auth, server_credentials
from node.ratelog import RateLimitedLog
from node.receivers.grpc import GrpcLimits, GrpcServer
from node.receivers.http import HttpLimits, HttpServer, build_app
from node.roles import Receiver, Role, Supervisor
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter, cached_series
from node.rows.traces import TracesConfig, TracesConverter
from node.runtime import GcPauses
from node.siblings import Siblings
from node.sinks.base import Sink
from node.sinks.factory import allowed_databases
from node.state import NodeState, Phase
from node.status import node_status
from node.transfer.door import DoorConfig, door_off_warning
from node.transfer.http import TransferDoor
from node.transfer.intake import Intake
from node.transfer.ledger import TransferLedger
from node.transfer.service import TRANSFER_SERVICE, TransferService, add_to_server
from node.upload.uploader import Uploader
from node.wal.repository import Repository, SharedUsage, directory_stats

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
STOP_MARGIN_SECONDS = 5.0
"""Of the grace, kept after the uploads of a stop, for what follows them: the uploads already at
the sink finishing, the ledger, the exit (a tenth of the grace when that is less), so that the
process is gone within --shutdown-grace whatever is left to upload."""
TICK_ERROR_LOG_SECONDS = 60.0
"""A tick that keeps failing (a full disk) is logged once a minute."""


def converters_of(config: NodeConfig) -> Converters:
    allowed = allowed_databases(config)
    return Converters(
        MetricsConverter(MetricsConfig(default_database=config.default_metrics_database,
                                       lift_labels=config.lift_labels, allowed_databases=allowed,
                                       drop_metrics=config.drop_metrics, drop_labels=config.drop_labels,
                                       add_labels=config.add_labels,
                                       max_cached_series=cached_series(per_process(config.memory_limit,
                                                                                   config.receivers)))),
        LogsConverter(LogsConfig(default_database=config.default_logs_database,
                                 default_table=config.default_logs_table, allowed_databases=allowed)),
        TracesConverter(TracesConfig(default_database=config.default_traces_database,
                                     default_table=config.default_traces_table, allowed_databases=allowed)),
    )


class Node:
    """One process of a node. `await start()`, then `await stop()`; both once.

    `Node.supervisor(...)` is receiver 0 (the whole node when it has one process); `Node.receiver`
    is one of the others."""

    def __init__(self, config: NodeConfig, worker: int, registry: CollectorRegistry | None,
                 shared: SharedUsage | None) -> None:
        self.config = config
        self.worker = worker
        self.layout = config.layout
        self.metrics = NodeMetrics(registry or CollectorRegistry())
        self.wal = Repository(config.wal(worker), on_repair=self.metrics.wal_repairs.inc, shared=shared,
                              on_vanished=lambda info: self.metrics.wal_vanished.inc())
        self.state = NodeState(over_limits=self.wal.over_limits)
        self.siblings = Siblings.of(self.layout, config.receivers)
        self.budget = MemoryBudget(per_process(config.memory_limit, config.receivers),
                                   on_change=self.metrics.memory_in_flight.set,
                                   on_refused=lambda what: self.metrics.memory_refused.labels(what).inc())
        """This process's share of --max-memory: requests and transfers in flight (node/budget.py)."""
        self.ledger = TransferLedger(self.layout.ledger)
        self.intake = Intake(self.wal, self.state, self.ledger, self.metrics, self.budget)
        """The one path of segments from outside, for both doors: peers (gRPC) and adx-mon (HTTP)."""
        self.transfer = TransferService(self.intake, peer_auth(config), stall_timeout=config.stall_timeout,
                                        min_request_rate=config.min_request_rate)
        self.ingest = Ingest(self.wal, converters_of(config), self.state, self.metrics, self.budget)
        self.role: Role = Receiver(config, self.wal, self.siblings, self.stop_taking_data)
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.door: TransferDoor | None = None
        """adx-mon's transfer front door (the supervisor, with --transfer-addr), once started."""
        self.door_optional = False
        """When --transfer-addr is the default: a port taken is one WARNING line, not a failure."""
        self._ticker: asyncio.Task[None] | None = None
        self._was_ready: bool | None = None
        self.gc_pauses = GcPauses()
        """This process's collector pauses, drained into ingestor_gc_pause_seconds every tick."""

    @classmethod
    def supervisor(cls, config: NodeConfig, sink: Sink, membership: Membership | None,
                   registry: CollectorRegistry | None = None, shared: SharedUsage | None = None) -> Node:
        """Receiver 0, with the sink and the peer source `serve` built (and checked) once."""
        node = cls(config, 0, registry, shared)
        cluster = cluster_of(config, membership, node.metrics)
        uploader = Uploader(node.wal, sink, config.uploads_config(), node.metrics, refresh=config.multiprocess,
                            router=cluster.router if cluster is not None else None)
        node.role = Supervisor(config, node.wal, uploader, cluster, node.ledger, node.siblings, node.state,
                               node.metrics)
        return node

    @classmethod
    def receiver(cls, config: NodeConfig, worker: int, shared: SharedUsage | None = None) -> Node:
        assert worker > 0, "receiver 0 is the supervisor"
        return cls(config, worker, None, shared)

    @property
    def supervising(self) -> Supervisor | None:
        return self.role if isinstance(self.role, Supervisor) else None

    async def start(self) -> None:
        await self.start_wal()
        await self.start_servers()

    async def start_wal(self) -> None:
        """Recover the WAL (the supervisor) or open it for writing (a receiver), then start the
        role's parts."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        recover = self.supervising is not None
        report = await asyncio.to_thread(self.wal.start, recover=recover)
        await asyncio.to_thread(self.ledger.open)
        if recover:
            log.info("node %s: WAL recovered %d segments (%d repaired)", self.config.node_name, report.segments,
                     report.repaired)
        await self.role.start()

    async def start_servers(self) -> None:
        """Bind the ports, start serving, then turn ready."""
        c = self.config
        self.grpc = GrpcServer(c.grpc_addr, self.ingest, self.state, self.metrics, self.status, c.max_request_bytes,
                               reuse_port=c.multiprocess,
                               extra=[(add_to_server, self.transfer,
                                       TRANSFER_SERVICE)],
                               credentials=server_credentials(c), limits=GrpcLimits.of(c))
        host, port = parse_hostport(c.http_addr, default_host="0.0.0.0", allow_port_zero=True)
        limits = HttpLimits.of(c)
        self.http = HttpServer(build_app(self.ingest, self.state, self.metrics, c.max_request_bytes, limits,
                                         self.budget, status=lambda: statuspage.gather(self)),
                               host, port, reuse_port=c.multiprocess, limits=limits)
        await self.grpc.start()
        await self.http.start()
        await self._start_door()
        self.state.set_phase(Phase.SERVING)
        await self.grpc.health.update()
        self.gc_pauses.start()
        self._ticker = asyncio.create_task(self._tick(), name="node-tick")
        if self.supervising is not None and c.drain_on_annotation:
            await self.supervising.watch_annotation(self.leave)
        log.info("node %s (receiver %d) serving: gRPC on port %d, HTTP on port %d", c.node_name, self.worker,
                 self.grpc.port, self.http.port)

    async def _start_door(self) -> None:
        """adx-mon's transfer front door, in the supervisor when --transfer-addr is not empty."""
        if self.supervising is None or not self.config.transfer_addr:
            return
        door = TransferDoor(self.intake, DoorConfig.of(self.config), self.state.not_ready_reason)
        try:
            await door.start()
        except BindError as e:
            if not self.door_optional:
                raise
            log.warning("%s", door_off_warning(self.config.transfer_addr, e))
            return
        self.door = door

    async def _tick(self) -> None:
        """Once a second: close segments past max age, the role's work, readiness. A tick that
        fails (a full disk as it closes a segment or writes cluster.json) is logged and the next
        one runs: this loop ending would leave segments open, and their rows undelivered, until a
        restart."""
        said = RateLimitedLog(log, interval=TICK_ERROR_LOG_SECONDS)
        while True:
            try:
                await self._tick_once()
            except Exception as e:
                said.log(logging.ERROR, type(e).__name__, "node %s: tick failed (retried every %.0fs): %s",
                         self.config.node_name, TICK_SECONDS, e)
            await asyncio.sleep(TICK_SECONDS)

    async def _tick_once(self) -> None:
        await asyncio.to_thread(self.wal.rotate_expired)
        self.metrics.wal_journal_bytes.set(self.wal.journal_bytes)
        self.observe_gc_pauses()
        await self.role.tick()
        ready = not self.state.not_ready_reason()
        self.metrics.ready.set(1 if ready else 0)
        if ready != self._was_ready and self.grpc is not None:
            await self.grpc.health.update()
            self._was_ready = ready

    def observe_gc_pauses(self) -> None:
        pauses = self.metrics.gc_pause_seconds
        for generation, seconds in self.gc_pauses.drain():
            pauses.labels(str(generation)).observe(seconds)

    async def stop_taking_data(self, why: str) -> None:
        """Not ready, health NOT_SERVING: load balancers and clients go elsewhere. The servers
        keep answering probes and status."""
        self.state.detail = why
        self.state.set_phase(Phase.DRAINING)
        self.metrics.ready.set(0)
        if self.grpc is not None:
            await self.grpc.health.update()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("node %s stopping: no longer ready, finishing in-flight requests (grace %.0fs)",
                 self.config.node_name, grace)
        self.state.set_phase(Phase.DRAINING)
        self.metrics.ready.set(0)
        if self.supervising is not None:
            await self.supervising.stop_watching()
        await cancel_and_wait(self._ticker)
        self.gc_pauses.stop()
        if self.grpc is not None:
            await self.grpc.health.update()
        await asyncio.gather(
            self.grpc.stop(grace) if self.grpc is not None else asyncio.sleep(0),
            self.http.stop(grace) if self.http is not None else asyncio.sleep(0),
            self.door.stop(grace) if self.door is not None else asyncio.sleep(0),
        )
        await self.intake.settle()  # a commit outlives its cancelled call: the WAL and ledger stay until it ends
        closed = await asyncio.to_thread(self.wal.stop)
        log.info("node %s: receivers stopped, %d active segments closed", self.config.node_name, len(closed))
        await self.role.stop(deadline - min(STOP_MARGIN_SECONDS, grace / 10))
        await asyncio.to_thread(self.ledger.close)
        self.state.set_phase(Phase.STOPPED)
        log.info("node %s stopped", self.config.node_name)

    async def leave(self) -> bool:
        """Leave the cluster for good (scale-down): take no new data, close the active segments,
        upload everything held here. Returns whether nothing is left. The servers keep
        answering probes and status until SIGTERM."""
        supervisor = self.supervising
        assert supervisor is not None, "only the supervisor leaves"
        log.info("node %s leaving: no new data; closing segments and uploading everything", self.config.node_name)
        await self.stop_taking_data("leaving the cluster")
        return await supervisor.leave()

    def status(self) -> admin_pb2.NodeStatus:
        stats = directory_stats(self.wal.directory)
        return node_status(self.config, self.state, stats, self.role.ring(stats))
