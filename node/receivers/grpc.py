"""The node's gRPC port: OTLP metrics, logs and traces, health, reflection and the admin service.

Errors leave through `abort()`, which takes the status from `node.errors.status_of()` and adds a
`google.rpc.RetryInfo` (trailer `google.rpc.retryinfo-bin`, as OTLP exporters read it, and in
`grpc-status-details-bin`) when the client should come back later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from node.errors import DecodeError, IngestorError, status_of
from node.gen.ingestor.v1 import admin_pb2, admin_pb2_grpc
from node.ingest import Ingest
from node.metrics import NodeMetrics
from node.receivers.otlp import SIGNALS, OtlpSignal
from node.state import NodeState

log = logging.getLogger(__name__)

OTLP_SERVICES = tuple(sig.service for sig in SIGNALS)
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: BaseException, what: str) -> NoReturn:
    """End the call with the status that `err` maps to (and a retry hint where there is one)."""
    status = status_of(err)
    message = f"{what}: {err}" if isinstance(err, IngestorError) else f"{what}: internal error"
    if isinstance(err, IngestorError):
        log.info("%s refused: %s", what, err)
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

    They take the raw request bytes and parse them here, so that a malformed protobuf is
    INVALID_ARGUMENT with the parser's message (grpc's own deserializer would report INTERNAL).
    """

    def __init__(self, ingest: Ingest, metrics: NodeMetrics) -> None:
        self._ingest = ingest
        self._metrics = metrics

    def _handler(self, sig: OtlpSignal) -> grpc.RpcMethodHandler[Any, Any]:
        metrics, signal, export = self._metrics, sig.signal, sig.export(self._ingest)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metrics.request_bytes.labels(signal, "grpc").inc(len(raw))
            try:
                try:
                    request = sig.request_cls.FromString(raw)
                except ProtobufDecodeError as e:
                    raise DecodeError(f"malformed {sig.request_cls.DESCRIPTOR.full_name}: {e}") from e
                result = await export(request)
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


class GrpcServer:
    """Owns the grpc.aio server and what is registered on it."""

    def __init__(self, addr: str, ingest: Ingest, state: NodeState, metrics: NodeMetrics,
                 status: Callable[[], admin_pb2.NodeStatus], max_request_bytes: int,
                 reuse_port: bool = False,
                 extra: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]] = (),
                 credentials: grpc.ServerCredentials | None = None) -> None:
        options = [
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
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
        if credentials is None:
            self.port = self.server.add_insecure_port(addr)
        else:
            self.port = self.server.add_secure_port(addr, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC port {addr}")

    async def start(self) -> None:
        await self.health.update()
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.health.update()
        await self.server.stop(grace)
