"""The node's gRPC port: OTLP metrics, logs and traces, health, reflection and the admin service.

Errors leave through `abort()`, which takes the status from `node.errors.status_of()` and adds a
`google.rpc.RetryInfo` (trailer `google.rpc.retryinfo-bin`, as OTLP exporters read it, and in
`grpc-status-details-bin`) when the client should come back later. What a client did wrong is
logged once per reason and minute, without a traceback (a hostile client must not flood the log);
the node's own failures always, with one.

The port's connections are bounded by `GrpcLimits`: idle ones closed, a cap per process, pings
paced, slow handshakes cut (see its fields).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cluster.addr import parse_hostport
from node.budget import EXPANSION
from node.config import NodeConfig
from node.errors import BindError, IngestorError, status_of
from node.gen.ingestor.v1 import admin_pb2, admin_pb2_grpc
from node.ingest import Ingest
from node.metrics import NodeMetrics
from node.ratelog import RateLimitedLog
from node.receivers import listener
from node.receivers.otlp import SIGNALS, OtlpSignal
from node.rows.batch import ConvertResult
from node.state import NodeState

log = logging.getLogger(__name__)
_said = RateLimitedLog(log)

OTLP_SERVICES = tuple(sig.service for sig in SIGNALS)
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: BaseException, what: str,
                reason: str | None = None) -> NoReturn:
    """End the call with the status that `err` maps to (and a retry hint where there is one).

    A refusal (an IngestorError: the client's mistake, or backpressure) is logged at most once a
    minute per `reason` (default: `what`) and kind of error, without a traceback; anything else is
    the node's fault: logged every time, with its traceback.
    """
    status = status_of(err)
    message = f"{what}: {err}" if isinstance(err, IngestorError) else f"{what}: internal error"
    if isinstance(err, IngestorError):
        _said.log(logging.INFO, f"{reason or what}:{type(err).__name__}", "%s refused (%s): %s", what,
                  status.grpc_code.name, err)
    else:
        log.error("%s failed", what, exc_info=err)
    if status.retry_after_seconds is not None:
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(status.retry_after_seconds)))
        detail = any_pb2.Any()
        detail.Pack(info)
        rich = status_pb2.Status(code=status.grpc_code.value[0], message=message, details=[detail])
        context.set_trailing_metadata((
            ("google.rpc.retryinfo-bin", info.SerializeToString()),
            ("grpc-status-details-bin", rich.SerializeToString()),
        ))
    await context.abort(status.grpc_code, message)
    raise AssertionError("unreachable: abort() raises")


class OtlpHandlers:
    """Export handlers of the three OTLP services.

    They take the raw request bytes and hand them to Ingest, which parses them (in pieces, off the
    event loop when large), so that a malformed protobuf is INVALID_ARGUMENT with the parser's
    message (grpc's own deserializer would report INTERNAL). The bytes are in memory already when
    a handler runs (grpc has read and inflated them); what parsing and conversion make of them,
    `EXPANSION` times as much, is reserved from the memory budget while Ingest works.
    """

    def __init__(self, ingest: Ingest, metrics: NodeMetrics) -> None:
        self._ingest = ingest
        self._metrics = metrics

    def _handler(self, sig: OtlpSignal) -> grpc.RpcMethodHandler[Any, Any]:
        metrics, signal = self._metrics, sig.signal
        export: Callable[..., Awaitable[ConvertResult]] = getattr(self._ingest, sig.ingest_method)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metrics.request_bytes.labels(signal, "grpc").inc(len(raw))
            try:
                result = await export(raw, reserve=len(raw) * EXPANSION)
            except Exception as e:
                metrics.requests.labels(signal, "grpc", status_of(e).grpc_code.name).inc()
                await abort(context, e, f"{signal} export")
            metrics.requests.labels(signal, "grpc", "OK").inc()
            data: bytes = sig.response(result).SerializeToString()
            return data

        return grpc.unary_unary_rpc_method_handler(handle)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        return [grpc.method_handlers_generic_handler(sig.service, {"Export": self._handler(sig)}) for sig in SIGNALS]


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, status: Callable[[], admin_pb2.NodeStatus]) -> None:
        self._status = status

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self._status()


class Health:
    """The gRPC health service: SERVING for every service only while the node is ready."""

    def __init__(self, state: NodeState, services: Sequence[str]) -> None:
        self.servicer = health_aio.HealthServicer()
        self._state = state
        self._services = ("", *services)

    async def update(self) -> None:
        serving = not self._state.not_ready_reason()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._services:
            await self.servicer.set(name, status)


MAX_STREAMS_PER_CONNECTION = 32
"""Calls in flight on one connection (HTTP/2 MAX_CONCURRENT_STREAMS): more wait in the client, not
refused. An OTLP exporter sends ~10 at once (the collector's default consumers), a peer
--transfers (4); with --max-connections, calls in flight per process are at most their product."""
KEEPALIVE_SECONDS, KEEPALIVE_TIMEOUT_SECONDS = 60.0, 20.0
"""The node pings a connection after this long without data, and drops it when the ping goes
unanswered this long: a dead client's calls end within a minute and a half."""
MIN_CLIENT_PING_SECONDS = 10.0
"""A client may ping this often (keepalive); pinging faster twice (`max_ping_strikes`) closes the
connection with GOAWAY ENHANCE_YOUR_CALM. Pings are not calls: they keep no connection from being idle."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass(frozen=True)
class GrpcLimits:
    """What the gRPC port of one process holds at most; defaults from NodeConfig."""

    idle_timeout: float = NodeConfig.idle_timeout
    """A connection with no call in flight for this long is closed (`grpc.max_connection_idle_ms`,
    a GOAWAY: clients reconnect when they next call)."""
    max_connections: int = NodeConfig.max_connections
    """Connections open at once (`grpc.max_allowed_incoming_connections`); over it a new connection
    is closed as it is accepted, before its handshake, and its client retries with backoff. 0: no
    limit."""
    handshake_timeout: float = NodeConfig.stall_timeout
    """A connection that has not finished its TLS and HTTP/2 handshake by then is closed
    (`grpc.server_handshake_timeout_ms`; grpc's default is 120 s)."""

    @classmethod
    def of(cls, config: NodeConfig) -> GrpcLimits:
        return cls(config.idle_timeout, config.max_connections, config.stall_timeout)

    def options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout)),
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout)),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ("grpc.keepalive_time_ms", _ms(KEEPALIVE_SECONDS)),
            ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_SECONDS)),
            ("grpc.keepalive_permit_without_calls", 1),  # a client's keepalive on an idle connection is no abuse
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_CLIENT_PING_SECONDS)),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.max_connections > 0:
            options.append(("grpc.max_allowed_incoming_connections", self.max_connections))
        return options


def cannot_bind(addr: str) -> BindError:
    """Why grpc could not bind `addr` (it does not say): a bind of our own finds out."""
    try:
        host, port = parse_hostport(addr, default_host="0.0.0.0", allow_port_zero=True)
    except ValueError as e:
        return BindError(addr, "gRPC", "--grpc-addr", str(e))
    try:
        socks = listener.bind(host, port, reuse_port=False)
    except OSError as e:
        return BindError.of(addr, "gRPC", "--grpc-addr", e)
    for sock in socks:
        sock.close()
    return BindError(addr, "gRPC", "--grpc-addr", "grpc could not bind it (GRPC_VERBOSITY=debug says why)")


class GrpcServer:
    """Owns the grpc.aio server and what is registered on it."""

    def __init__(self, addr: str, ingest: Ingest, state: NodeState, metrics: NodeMetrics,
                 status: Callable[[], admin_pb2.NodeStatus], max_request_bytes: int,
                 reuse_port: bool = False,
                 extra: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]] = (),
                 credentials: grpc.ServerCredentials | None = None, limits: GrpcLimits | None = None) -> None:
        options = [
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *(limits or GrpcLimits()).options(),
        ]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers(OtlpHandlers(ingest, metrics).generic_handlers())
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(status), self.server)
        names = [*OTLP_SERVICES, ADMIN_SERVICE]
        for add, servicer, name in extra:
            add(servicer, self.server)
            names.append(name)
        self.health = Health(state, names)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(addr)
            else:
                self.port = self.server.add_secure_port(addr, credentials)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise cannot_bind(addr)

    async def start(self) -> None:
        await self.health.update()
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.health.update()
        await self.server.stop(grace)
