"""The node's HTTP port: Prometheus remote write, OTLP/HTTP, /metrics, /healthz, /readyz.

Statuses come from `node.errors.status_of()`: 400 for a body that will never decode (senders do
not retry), 413 over `--max-request-bytes`, 415 for a content type or encoding we do not speak,
429 with Retry-After over limits, 503 with Retry-After while not ready, 500 otherwise.

Remote write with some series refused (a database with no sink): the accepted rows are already in
the WAL, so the request is answered 204 (a 4xx would make Prometheus drop the whole batch, a 5xx
would make it resend rows we hold), the refusals are logged and counted. Only when every series
is refused is the answer 400, with the reasons. OTLP/HTTP reports refusals as partial success.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.errors import DecodeError, IngestorError, RequestTooLargeError, status_of
from node.ingest import Ingest
from node.metrics import NodeMetrics
from node.receivers.decode import JSON, PROTOBUF, decode_otlp, decode_remote_write, media_type
from node.receivers.otlp import SIGNALS, OtlpSignal
from node.state import NodeState

log = logging.getLogger(__name__)


def _error_response(err: BaseException, what: str, json_body: bool | None) -> web.Response:
    """The response for a refused request; `json_body` None means plain text."""
    status = status_of(err)
    message = f"{what}: {err}" if isinstance(err, IngestorError) else f"{what}: internal error"
    if isinstance(err, IngestorError):
        log.info("%s refused with %d: %s", what, status.http_status, err)
    else:
        log.error("%s failed", what, exc_info=err)
    headers = {}
    if status.retry_after_seconds is not None:
        headers["Retry-After"] = str(max(1, int(status.retry_after_seconds)))
    if json_body is None:
        return web.Response(status=status.http_status, text=message + "\n", headers=headers)
    body = status_pb2.Status(code=status.grpc_code.value[0], message=message)
    if json_body:
        return web.Response(status=status.http_status, headers=headers, content_type=JSON,
                            text=json_format.MessageToJson(body))
    return web.Response(status=status.http_status, headers=headers, content_type=PROTOBUF,
                        body=body.SerializeToString())


async def _body(request: web.Request, max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestTooLargeError(f"body of {request.content_length} bytes over the {max_bytes}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise RequestTooLargeError(f"body over the {max_bytes}-byte limit") from e


def build_app(ingest: Ingest, state: NodeState, metrics: NodeMetrics, max_request_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes)

    async def remote_write(request: web.Request) -> web.Response:
        try:
            body = await _body(request, max_request_bytes)
            metrics.request_bytes.labels("metrics", "http").inc(len(body))
            req = decode_remote_write(body, request.headers.get("Content-Encoding"),
                                      request.headers.get("Content-Type"), max_request_bytes)
            result = await ingest.remote_write(req)
            if result.rejected and not result.accepted:
                raise DecodeError("every series was refused: " + "; ".join(result.reasons))
        except Exception as e:
            resp = _error_response(e, "remote write", None)
            metrics.requests.labels("metrics", "http", str(resp.status)).inc()
            return resp
        if result.rejected:
            log.warning("remote write: %d samples refused, %d accepted: %s", result.rejected, result.accepted,
                        "; ".join(result.reasons))
        metrics.requests.labels("metrics", "http", "204").inc()
        return web.Response(status=204)

    def otlp(sig: OtlpSignal) -> Callable[[web.Request], Awaitable[web.Response]]:
        signal, export = sig.signal, sig.export(ingest)

        async def handle(request: web.Request) -> web.Response:
            is_json = media_type(request.headers.get("Content-Type"))[0] == JSON
            try:
                body = await _body(request, max_request_bytes)
                metrics.request_bytes.labels(signal, "http").inc(len(body))
                req = decode_otlp(body, request.headers.get("Content-Type"), request.headers.get("Content-Encoding"),
                                  sig.request_cls, max_request_bytes)
                result = await export(req)
            except Exception as e:
                resp = _error_response(e, f"{signal} export", is_json)
                metrics.requests.labels(signal, "http", str(resp.status)).inc()
                return resp
            response = sig.response(result)
            metrics.requests.labels(signal, "http", "200").inc()
            if is_json:
                return web.Response(content_type=JSON, text=json_format.MessageToJson(response))
            return web.Response(content_type=PROTOBUF, body=response.SerializeToString())

        return handle

    async def prometheus_metrics(request: web.Request) -> web.Response:
        data = generate_latest(metrics.exposition())
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reason = state.not_ready_reason()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    app.router.add_post("/api/v1/write", remote_write)
    app.router.add_post("/receive", remote_write)
    for sig in SIGNALS:
        app.router.add_post(sig.path, otlp(sig))
    app.router.add_get("/metrics", prometheus_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    """Binds the HTTP port; `stop(grace)` stops accepting and lets in-flight requests finish."""

    def __init__(self, app: web.Application, host: str, port: int, reuse_port: bool = False) -> None:
        # auto_decompress off: decode.py inflates bodies itself, bounded by --max-request-bytes
        # (aiohttp would gunzip first, then our gzip handling would see plain bytes).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=60.0, auto_decompress=False)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self.port = port
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_port=self._reuse_port or None)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        self._runner._shutdown_timeout = grace  # aiohttp reads it at cleanup; the constructor has no setter
        await self._runner.cleanup()
