"""The node's HTTP port: Prometheus remote write, OTLP/HTTP, /metrics, /healthz, /readyz, and the
status page (`/`, `/status.json`: node/statuspage.py).

Statuses come from `node.errors.status_of()`: 400 for a body that will never decode (senders do
not retry), 413 over `--max-request-bytes`, 415 for a content type or encoding we do not speak,
429 with Retry-After over limits (disk, or the memory budget), 408 for a body that stalls, 499
(counted; nobody left to answer) for a client that went away mid-body, 503 with Retry-After while
not ready, 500 otherwise. Refusals are the client's doing or backpressure: logged once per status
and kind a minute (`RateLimitedLog`), without traceback, as are requests aiohttp cannot parse; a
500 is the node's fault, logged every time with its traceback.

What one client may take of the port: `HttpLimits` (idle connections, connections at once: see
`node/receivers/listener.py`) and the body's deadlines and memory (`node/receivers/body.py`).

Remote write with some series refused (a database with no sink): the accepted rows are already in
the WAL, so the request is answered 204 (a 4xx would make Prometheus drop the whole batch, a 5xx
would make it resend rows we hold), the refusals are logged and counted. Only when every series
is refused is the answer 400, with the reasons. OTLP/HTTP reports refusals as partial success.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from google.rpc import status_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import statuspage
from node.budget import MemoryBudget
from node.config import NodeConfig
from node.errors import BindError, DecodeError, IngestorError, StalledError, status_of
from node.ingest import Ingest
from node.metrics import NodeMetrics
from node.ratelog import RateLimitedLog
from node.receivers import listener
from node.receivers.body import OTLP, REMOTE_WRITE, BodyLimits, Held, read_body
from node.receivers.decode import JSON, PROTOBUF, decode_otlp, decode_remote_write, media_type
from node.receivers.otlp import SIGNALS, OtlpSignal
from node.state import NodeState

log = logging.getLogger(__name__)

SAID = web.AppKey("said", RateLimitedLog)
"""The port's one log of refusals, a line per status and kind a minute."""
NEVER = 10.0 * 365 * 86400
"""An idle timeout of 0 (none), as aiohttp takes it."""


@dataclass(frozen=True)
class HttpLimits:
    """What clients may take of the HTTP port of one process; defaults from NodeConfig, 0: no limit."""

    idle_timeout: float = NodeConfig.idle_timeout
    """A connection with no request in progress for this long is closed."""
    stall_timeout: float = NodeConfig.stall_timeout
    """A body that sends no byte for this long is cut (408)."""
    min_request_rate: int = NodeConfig.min_request_rate
    """Bytes/s a body must average once it has lasted `stall_timeout`."""
    max_connections: int = NodeConfig.max_connections
    """Connections at once (see node/receivers/listener.py)."""

    @classmethod
    def of(cls, config: NodeConfig) -> HttpLimits:
        return cls(config.idle_timeout, config.stall_timeout, config.min_request_rate, config.max_connections)


def _error_response(err: BaseException, what: str, json_body: bool | None, said: RateLimitedLog) -> web.Response:
    """The response for a refused request; `json_body` None means plain text."""
    status = status_of(err)
    message = f"{what}: {err}" if isinstance(err, IngestorError) else f"{what}: internal error"
    if isinstance(err, IngestorError):
        said.log(logging.INFO, f"{status.http_status} {type(err).__name__}", "%s refused with %d: %s", what,
                 status.http_status, err)
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


async def _refuse(request: web.Request, err: BaseException, what: str, json_body: bool | None,
                  said: RateLimitedLog) -> web.Response:
    """The answer to a refused request. A body cut for its pace is not read further: the answer is
    sent, then the connection closed (aiohttp would otherwise linger, reading what is left)."""
    resp = _error_response(err, what, json_body, said)
    if isinstance(err, StalledError):
        await answer_and_close(request, resp)
    return resp


async def answer_and_close(request: web.Request, resp: web.StreamResponse) -> None:
    """Send `resp` now and close the connection, without reading the rest of the body (aiohttp
    would otherwise linger on it): the answer to a body cut for its pace, on every HTTP port."""
    resp.force_close()
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except ConnectionError:
        pass
    request.protocol.force_close()


def build_app(ingest: Ingest, state: NodeState, metrics: NodeMetrics, max_request_bytes: int,
              limits: HttpLimits | None = None, budget: MemoryBudget | None = None,
              status: Callable[[], dict[str, Any]] | None = None) -> web.Application:
    """The port's routes; `budget` None: bodies are not counted against a memory budget; `status`
    (node/statuspage.py `gather`): the status page at `/` and `/status.json`, None: none."""
    limits = limits or HttpLimits()
    app = web.Application(client_max_size=max_request_bytes)
    said = app[SAID] = RateLimitedLog(log)
    body_limits = BodyLimits(max_request_bytes, limits.stall_timeout, limits.min_request_rate)

    async def refused(request: web.Request, err: BaseException, what: str, signal: str,
                      json_body: bool | None) -> web.Response:
        resp = await _refuse(request, err, what, json_body, said)
        metrics.requests.labels(signal, "http", str(resp.status)).inc()
        if isinstance(err, StalledError):
            metrics.slow_clients.labels("http").inc()
        return resp

    async def remote_write(request: web.Request) -> web.Response:
        held = Held(budget, "remote write")
        try:
            body = await read_body(request, body_limits, held, REMOTE_WRITE)
            metrics.request_bytes.labels("metrics", "http").inc(len(body))
            # decoded in Ingest's converter thread; read_body has reserved the memory it takes (held)
            result = await ingest.remote_write(lambda: decode_remote_write(
                body, request.headers.get("Content-Encoding"), request.headers.get("Content-Type"), max_request_bytes))
            if result.rejected and not result.accepted:
                raise DecodeError("every series was refused: " + "; ".join(result.reasons))
        except Exception as e:
            return await refused(request, e, "remote write", "metrics", None)
        finally:
            await held.release()
        metrics.requests.labels("metrics", "http", "204").inc()
        return web.Response(status=204)

    def otlp(sig: OtlpSignal) -> Callable[[web.Request], Awaitable[web.Response]]:
        signal, export = sig.signal, sig.export(ingest)

        async def handle(request: web.Request) -> web.Response:
            is_json = media_type(request.headers.get("Content-Type"))[0] == JSON
            held = Held(budget, f"{signal} export")
            try:
                body = await read_body(request, body_limits, held, OTLP)
                metrics.request_bytes.labels(signal, "http").inc(len(body))
                # decoded in Ingest's converter thread; read_body has reserved the memory it takes (held)
                result = await export(lambda: decode_otlp(body, request.headers.get("Content-Type"),
                                                          request.headers.get("Content-Encoding"), sig.request_cls,
                                                          max_request_bytes))
            except Exception as e:
                return await refused(request, e, f"{signal} export", signal, is_json)
            finally:
                await held.release()
            response = sig.response(result)
            metrics.requests.labels(signal, "http", "200").inc()
            if is_json:
                return web.Response(content_type=JSON, text=json_format.MessageToJson(response))
            return web.Response(content_type=PROTOBUF, body=response.SerializeToString())

        return handle

    async def prometheus_metrics(request: web.Request) -> web.Response:
        data = generate_latest(metrics.exposition())
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_post("/api/v1/write", remote_write)
    app.router.add_post("/receive", remote_write)
    for sig in SIGNALS:
        app.router.add_post(sig.path, otlp(sig))
    app.router.add_get("/metrics", prometheus_metrics)
    add_probes(app, state.not_ready_reason)
    if status is not None:
        statuspage.add_routes(app, status)
    return app


def add_probes(app: web.Application, not_ready_reason: Callable[[], str]) -> None:
    """GET /healthz (the process answers) and /readyz (503 with the reason while the node is not
    ready): on the HTTP port, and on adx-mon's transfer port, where adx-mon's manifests probe."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reason = not_ready_reason()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's log of the connections it serves: a request it cannot parse (bad request line,
    headers or chunked framing: the client's mistake) goes to the port's rate-limited log at INFO,
    without traceback; anything else as aiohttp says it."""

    def __init__(self, said: RateLimitedLog) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._said = said

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if level >= logging.INFO and isinstance(exc_info, HttpProcessingError):
            self._said.log(logging.INFO, f"{exc_info.code} bad HTTP", "HTTP port: request refused with %d: %s",
                           exc_info.code, exc_info.message.splitlines()[0] if exc_info.message else exc_info)
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


class HttpServer:
    """Binds the HTTP port; `stop(grace)` stops accepting and lets in-flight requests finish."""

    def __init__(self, app: web.Application, host: str, port: int, reuse_port: bool = False,
                 limits: HttpLimits | None = None) -> None:
        limits = limits or HttpLimits()
        self._said = app[SAID] if SAID in app else RateLimitedLog(log)
        self.connections = listener.Connections(limits.max_connections)

        @web.middleware
        async def in_progress(request: web.Request, handler: Any) -> web.StreamResponse:
            self.connections.busy(request.protocol)
            try:
                resp: web.StreamResponse = await handler(request)
                return resp
            finally:
                self.connections.idle(request.protocol)

        app.middlewares.append(in_progress)
        # auto_decompress off: decode.py inflates bodies itself, bounded by --max-request-bytes
        # (aiohttp would gunzip first, then our gzip handling would see plain bytes).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=60.0, auto_decompress=False,
                                     keepalive_timeout=limits.idle_timeout if limits.idle_timeout > 0 else NEVER,
                                     logger=_ProtocolLog(self._said))
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self.port = port
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        try:
            self._sockets = listener.bind(self._host, self._port, self._reuse_port)
        except OSError as e:
            host = f"[{self._host}]" if ":" in self._host else self._host
            raise BindError.of(f"{host}:{self._port}", "HTTP", "--http-addr", e) from e
        self.port = int(self._sockets[0].getsockname()[1])
        self._accepting = [asyncio.create_task(listener.accept(sock, self.connections, server, self._said),
                                               name=f"http-accept-{i}") for i, sock in enumerate(self._sockets)]

    async def stop(self, grace: float) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self.connections.until_idle(grace)  # requests in progress finish, their bodies included
        # read at cleanup (no setter); never 0, which aiohttp takes as no limit at all
        self._runner._shutdown_timeout = max(0.1, grace - (loop.time() - t0))
        await self._runner.cleanup()
