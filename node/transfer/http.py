"""adx-mon's segment transfer front door: `POST /transfer?filename=<segment file name>` over HTTPS
on --transfer-addr, the call adx-mon's collectors (and its ingestors) deliver segments with.

The body is a segment file, or several of one prefix merged (the magic once, then their blocks),
gzip-compressed (`Content-Encoding: gzip`, what a collector sends unless its gzip is disabled) or
not, usually chunked. The door reads it whole (as adx-mon does) within the process's memory budget,
then hands it to the node's one path for segments from outside (`node/transfer/intake.py`, shared
with the peers' gRPC transfer service): every block verified, published once through the transfer
ledger under a segment id of this node, then batched, transferred to its owner or uploaded like any
other segment. In order:

| check | answer |
| --- | --- |
| no `filename` | 400 |
| the name starts with a --drop-prefix | 202, the body read and thrown away |
| the node is not serving (starting, draining, leaving) | 429, `Connection: close` |
| not a segment name (`<Database>_<Table>[_<Schema>]_<Id>.wal`, node/wal/names.py: a path is never one) | 400 |
| a database no sink is configured for | 400 |
| a Content-Encoding other than gzip or none; a body that does not gunzip | 400 |
| a body (decoded) over the memory budget of the process | 413 |
| memory budget taken for longer than it waits (5 s) | 429, `Connection: close` |
| just the magic: nothing to store | 202 |
| the same bytes accepted before (name, size, CRC-32: the ledger's key) | 202, not stored again |
| over the disk limits (--max-disk-usage, --max-segment-count, per database, free space) | 429, `Connection: close` |
| the same segment being received by another call now | 423 |
| a block with a bad CRC, bad framing, or that does not decompress (Snappy or S2) | 400, nothing written |
| a body that stalls (--stall-timeout, --min-request-rate) | 408, `Connection: close` |
| accepted: published in the WAL | 202 |
| anything else | 500, `Connection: close` |

What adx-mon's collector does with each: 202 deletes its copy; 400 drops it (it will never be
taken); 423 keeps it and retries; 429 and anything else mark this node unhealthy for a while and
retry. Answers, refusals and bytes are counted in `ingestor_requests_total{signal="segments",
transport="adxmon"}` and `ingestor_request_bytes_total`; refusals are logged once a minute per
kind, as on the HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cluster.addr import parse_hostport
from node.errors import (
    AlreadyExistsError,
    BindError,
    ClientGoneError,
    DecodeError,
    IngestorError,
    InvalidInputError,
    OverLimitsError,
    RequestTooLargeError,
    StalledError,
    UnavailableError,
    UnsupportedMediaError,
    status_of,
)
from node.ratelog import RateLimitedLog
from node.receivers import listener
from node.receivers.body import BodyLimits, Pace
from node.receivers.http import add_probes, answer_and_close
from node.transfer.certs import server_context
from node.transfer.door import FLAG, PORT_NAME, DoorConfig
from node.transfer.intake import Held, Incoming, Intake, SegmentBusyError
from node.transfer.ledger import ClaimLostError
from node.transfer.protocol import MAX_CHUNK
from node.wal.format import MAGIC
from node.wal.names import parse_filename
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)

PATH = "/transfer"
SIGNAL, TRANSPORT = "segments", "adxmon"
"""The labels of the door's requests in `ingestor_requests_total` and `ingestor_request_bytes_total`."""
BUDGET_WHAT = "adx-mon transfer"
"""How the door's bodies are named to the memory budget (and in `memory_refused{what}`)."""
INFLATE_STEP = 1 << 20
"""Compressed bytes gathered before they are inflated (in a thread), and the reservation step."""
NEVER = 10.0 * 365 * 86400
"""An idle timeout of 0 (none), as aiohttp takes it."""


@dataclass(frozen=True)
class Answer:
    status: int
    close: bool = False
    retry_after: float | None = None


def answer_of(err: BaseException) -> Answer:
    """The door's answer to an error, in adx-mon's terms: the statuses of `node.errors.status_of`,
    but 423 for a segment being received by another call, and 429 with `Connection: close` for
    any "not now" (over limits, or the node not serving), which is how adx-mon says "overloaded"."""
    if isinstance(err, SegmentBusyError | ClaimLostError):
        return Answer(423)
    if isinstance(err, AlreadyExistsError):
        return Answer(202)
    if isinstance(err, OverLimitsError | UnavailableError):
        return Answer(429, close=True, retry_after=err.retry_after_seconds)
    if isinstance(err, UnsupportedMediaError):
        return Answer(400)  # adx-mon senders know 400 (drop: it will never be taken); 415 would be retried for ever
    status = status_of(err).http_status
    return Answer(status, close=status >= 500 or isinstance(err, StalledError))


class _Gunzip:
    """Inflates a gzip body of one or more members (Go's reader reads them all), refusing output
    past `limit` before it is made."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._d = zlib.decompressobj(wbits=31)
        self._started = False

    def feed(self, data: bytes, have: int) -> bytes:
        """Inflate `data`; `have`: bytes already inflated. DecodeError, RequestTooLargeError."""
        out = bytearray()
        try:
            while data or (self._d.eof and self._d.unused_data):
                if self._d.eof:  # the next member
                    data, self._d = self._d.unused_data + data, zlib.decompressobj(wbits=31)
                self._started = True
                room = self._limit - have - len(out)
                out += self._d.decompress(data, room + 1)
                if len(out) > self._limit - have:
                    raise RequestTooLargeError(f"body inflates past {self._limit} bytes (the process's memory "
                                               "budget: --max-memory / --receivers)")
                data = self._d.unconsumed_tail
        except zlib.error as e:
            raise DecodeError(f"body is not valid gzip: {e}") from e
        return bytes(out)

    def finish(self) -> None:
        if not self._started or not self._d.eof:
            raise DecodeError("gzip body ends before its end (truncated or empty)")


class TransferDoor:
    """The front door on one HTTPS port: `await start()`, then `await stop(grace)`."""

    def __init__(self, intake: Intake, config: DoorConfig, not_ready_reason: Callable[[], str],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """`not_ready_reason` answers GET /readyz here too: adx-mon's StatefulSet probes its
        readiness on this port (HTTPS 9090), so a swapped image must answer it."""
        self._intake = intake
        self._metrics = intake.metrics
        self.config = config
        self._clock = clock
        self._said = RateLimitedLog(log)
        self._limits = BodyLimits(intake.budget.limit, config.stall_timeout, config.min_request_rate)
        self._in_progress = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

        @web.middleware
        async def counted(request: web.Request, handler: Any) -> web.StreamResponse:
            self._in_progress += 1
            self._quiet.clear()
            try:
                resp: web.StreamResponse = await handler(request)
                return resp
            finally:
                self._in_progress -= 1
                if not self._in_progress:
                    self._quiet.set()

        app = web.Application(middlewares=[counted])
        app.router.add_post(PATH, self._transfer)
        add_probes(app, not_ready_reason)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=60.0, auto_decompress=False,
                                     keepalive_timeout=config.idle_timeout if config.idle_timeout > 0 else NEVER)
        self._sites: list[web.SockSite] = []
        self.port = 0
        self.self_signed = False

    async def start(self) -> None:
        """Bind (BindError when the port is taken), then serve."""
        host, port = parse_hostport(self.config.addr, default_host="0.0.0.0", allow_port_zero=True)
        try:
            socks = listener.bind(host, port, reuse_port=False)
        except OSError as e:
            shown = f"[{host}]" if ":" in host else host
            raise BindError.of(f"{shown}:{port}", PORT_NAME, FLAG, e) from e
        try:
            ctx, self.self_signed = await asyncio.to_thread(server_context, self.config.tls_cert, self.config.tls_key,
                                                            self.config.names)
            await self._runner.setup()
            for sock in socks:
                site = web.SockSite(self._runner, sock, ssl_context=ctx)
                await site.start()
                self._sites.append(site)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        self.port = int(socks[0].getsockname()[1])
        how = ("a self-signed certificate made at start (collectors need insecure-skip-verify, or give --tls-cert "
               "and --tls-key)" if self.self_signed else f"certificate {self.config.tls_cert}")
        log.info("adx-mon transfer front door: POST %s on %s (port %d), HTTPS with %s", PATH, self.config.addr,
                 self.port, how)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish within `grace`, then cut the rest."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for site in self._sites:  # no new connections; those open keep their requests
            await site.stop()
        self._sites = []
        # aiohttp's shutdown closes every connection first and then drops what arrives: a body still
        # arriving would never end, and its collector never get an answer. Requests finish first.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._quiet.wait()
        # read at cleanup (no setter); never 0, which aiohttp takes as no limit at all
        self._runner._shutdown_timeout = max(0.1, grace - (loop.time() - t0))
        await self._runner.cleanup()

    # -- one request -----------------------------------------------------------------------

    async def _transfer(self, request: web.Request) -> web.StreamResponse:
        t0 = self._clock()
        filename = request.query.get("filename", "")
        rid = request.headers.get("X-Request-ID", "")[:64]
        what = f"adx-mon transfer of {filename[:300]!r} (request {rid or '-'})"
        incoming: Incoming | None = None
        async with contextlib.AsyncExitStack() as stack:  # the body's memory, given back however it ends
            memory = self._intake.held(stack, BUDGET_WHAT)
            try:
                if not filename:
                    raise InvalidInputError("missing filename")
                for prefix in self.config.drop_prefix:
                    if filename.startswith(prefix):
                        await self._discard(request)
                        self._said.log(logging.INFO, f"drop {prefix}", "%s dropped (--drop-prefix %s)", what, prefix)
                        return self._answer(202)
                self._intake.state.check_accepting()
                name = parse_filename(filename)
                if self.config.databases is not None and name.database not in self.config.databases:
                    raise InvalidInputError(f"database {name.database} has no sink configured on this node")
                body = await self._read(request, memory)
                if body == MAGIC:
                    log.debug("%s: an empty segment; nothing to store", what)
                    return self._answer(202)
                crc = await asyncio.to_thread(zlib.crc32, body)
                incoming = await self._intake.admit(filename, len(body), crc, memory, reserve=len(body), what=what)
                with memoryview(body) as view:
                    for off in range(0, len(view), MAX_CHUNK):
                        await incoming.feed(view[off: off + MAX_CHUNK])
                info = await incoming.commit()
            except AlreadyExistsError:
                log.debug("%s: accepted before; not stored again", what)
                return self._answer(202)
            except Exception as e:
                if incoming is not None:
                    await incoming.abort()
                return await self._refuse(request, e, what)
            except asyncio.CancelledError:  # the server is stopping past its grace
                if incoming is not None:
                    incoming.abort_now()
                raise
        self._accepted(info, what, t0)
        return self._answer(202)

    async def _read(self, request: web.Request, memory: Held) -> bytearray:
        """The body, gunzipped when it says so, held in `memory`; at most the process's budget."""
        limit = self._intake.budget.limit
        encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            raise UnsupportedMediaError(f"Content-Encoding {encoding[:40]!r}: gzip or none")
        gunzip = _Gunzip(limit) if encoding == "gzip" else None
        declared = request.content_length
        if gunzip is None and declared is not None and declared > limit:
            raise RequestTooLargeError(f"body of {declared} bytes, over the process's memory budget of {limit} "
                                       "(--max-memory / --receivers)")
        pace = Pace(self._limits, declared)
        body = bytearray()
        pending = bytearray()
        while chunk := await pace.read(request.content):
            if gunzip is None:
                body += chunk
                if len(body) > limit:
                    raise RequestTooLargeError(f"body over the process's memory budget of {limit} bytes "
                                               "(--max-memory / --receivers)")
            else:
                pending += chunk
                if len(pending) >= INFLATE_STEP:
                    body += await asyncio.to_thread(gunzip.feed, bytes(pending), len(body))
                    pending.clear()
            need = len(body) + len(pending)
            if need > memory.nbytes:
                async with pace.paused():
                    await memory.grow_to(max(need, memory.nbytes + INFLATE_STEP))
        self._metrics.request_bytes.labels(SIGNAL, TRANSPORT).inc(pace.received)
        if gunzip is not None:
            body += await asyncio.to_thread(gunzip.feed, bytes(pending), len(body))
            gunzip.finish()
            await memory.grow_to(len(body))
        return body

    async def _discard(self, request: web.Request) -> None:
        """Read a dropped body to its end (as adx-mon does), under the same pace as any body."""
        pace = Pace(self._limits, request.content_length)
        while await pace.read(request.content):
            pass
        self._metrics.request_bytes.labels(SIGNAL, TRANSPORT).inc(pace.received)

    def _answer(self, status: int, text: str = "", answer: Answer | None = None) -> web.Response:
        self._metrics.requests.labels(SIGNAL, TRANSPORT, str(status)).inc()
        headers = {}
        if answer is not None and answer.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(answer.retry_after)))
        resp = web.Response(status=status, text=text or None, headers=headers)
        if answer is not None and answer.close:
            resp.force_close()  # "Connection: close", as adx-mon answers when overloaded
        return resp

    async def _refuse(self, request: web.Request, err: Exception, what: str) -> web.Response:
        answer = answer_of(err)
        if isinstance(err, IngestorError):
            self._said.log(logging.INFO, f"{answer.status} {type(err).__name__}", "%s refused with %d: %s", what,
                           answer.status, err)
        else:
            log.error("%s failed", what, exc_info=err)
        if isinstance(err, StalledError):
            self._metrics.slow_clients.labels(TRANSPORT).inc()
        elif answer.close and not isinstance(err, ClientGoneError) and not request.content.is_eof():
            # The connection closes after this answer: read what the sender is still writing first (as
            # adx-mon does), or the close would reset the connection before the sender reads the answer.
            with contextlib.suppress(IngestorError, ConnectionError):
                await self._discard(request)
        message = f"{what}: {err}" if isinstance(err, IngestorError) else f"{what}: internal error"
        resp = self._answer(answer.status, message + "\n", answer)
        if isinstance(err, StalledError):
            await answer_and_close(request, resp)
        return resp

    def _accepted(self, info: SegmentInfo, what: str, t0: float) -> None:
        self._metrics.transfer_received_bytes.inc(info.size)
        log.debug("accepted %s as %s: %d blocks, %d rows, %.1f MB in %.2fs", what, info.name.filename, info.blocks,
                  info.rows, info.size / 1e6, self._clock() - t0)

