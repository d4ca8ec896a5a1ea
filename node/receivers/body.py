"""A request body of the HTTP port read under the node's limits: its memory reserved from the
budget before the bytes come in, and deadlines while they come in.

What a body of N bytes (Content-Length), inflating to D bytes, holds at its peak and when it is
reserved (E = `node.budget.EXPANSION`, what decoding and conversion make of each decompressed byte):

    identity   N + E*N       all of it before the first byte is read
    snappy     N + D + E*D   when the block's preamble (its first bytes) has declared D: before the
                             rest is read, and after refusing a D over the limit (413); a D over
                             what N bytes can hold counts as that much (the decoder refuses it, 400)
    gzip       N + D + E*D   N before the first byte; D, counted by inflating into nothing (one
                             piece of output at a time), once the body is in: it cannot be known
                             earlier, and guessing a ratio would either refuse good requests or
                             admit bombs. The second step may wait, then refuse with 429 like the
                             first; nothing was decoded or written by then.
    chunked    (no Content-Length) the N part is reserved as the bytes come, doubling; the rest as above

Deadlines (`Pace`): a body that sends no byte for `stall_timeout`, or that, once it has lasted
`stall_timeout`, has averaged under `min_request_rate` bytes/s, is cut with StalledError (408).
Time spent waiting for the memory budget is the node's, not the client's: it does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from node.budget import EXPANSION, MemoryBudget
from node.errors import ClientGoneError, DecodeError, RequestTooLargeError, StalledError
from node.receivers.decode import SNAPPY_MAX_RATIO, check_snappy_length, gunzip_size, snappy_declared_length

CHUNKED_STEP = 1 << 20
"""The first reservation of a body without Content-Length; then it doubles as the body grows."""


@dataclass(frozen=True)
class BodyLimits:
    """How a request body is read. Zeros are no limit."""

    max_bytes: int
    """--max-request-bytes: the body, and what it inflates to."""
    stall_timeout: float = 0.0
    """--stall-timeout: no byte for this long cuts the body."""
    min_rate: int = 0
    """--min-request-rate: bytes/s a body must average once it has lasted `stall_timeout`."""


class Held:
    """Memory held from the budget for one request, in one or more steps, released together.
    A request needing more than the whole budget holds all of it: it runs alone."""

    def __init__(self, budget: MemoryBudget | None, what: str) -> None:
        self._budget = budget
        self._what = what
        self._stack = contextlib.AsyncExitStack()
        self.nbytes = 0

    async def add(self, nbytes: int) -> None:
        if self._budget is None:
            return
        nbytes = min(nbytes, self._budget.limit - self.nbytes)
        if nbytes <= 0:
            return
        await self._stack.enter_async_context(self._budget.reserve(nbytes, self._what))
        self.nbytes += nbytes

    async def release(self) -> None:
        await self._stack.aclose()
        self.nbytes = 0


class Pace:
    """The deadlines of one body's bytes (see the module's docstring)."""

    def __init__(self, limits: BodyLimits, declared: int | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stall = limits.stall_timeout
        self._rate = limits.min_rate
        self._declared = declared
        self.received = 0
        self._start = self._last = self._loop.time()

    def _deadline(self) -> float | None:
        if self._stall <= 0:
            return None
        deadline = self._last + self._stall
        if self._rate > 0:
            deadline = min(deadline, self._start + max(self._stall, self.received / self._rate))
        return deadline

    async def read(self, content: StreamReader) -> bytes:
        """The next bytes of the body (b"" at its end), or StalledError, ClientGoneError, DecodeError."""
        try:
            async with asyncio.timeout_at(self._deadline()):
                chunk = await content.readany()
        except TimeoutError:
            raise self._stalled() from None
        except ConnectionError as e:
            raise ClientGoneError(f"the client went away {self._where()}") from e
        except (HttpProcessingError, web.RequestPayloadError) as e:  # chunked framing the parser refused
            raise DecodeError(f"bad body framing {self._where()}: {e}") from e
        if chunk:
            self.received += len(chunk)
            self._last = self._loop.time()
        return chunk

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """The node is waiting (for memory): the client's clocks stop."""
        t0 = self._loop.time()
        try:
            yield
        finally:
            waited = self._loop.time() - t0
            self._start += waited
            self._last += waited

    def _where(self) -> str:
        of = f" of {self._declared}" if self._declared is not None else ""
        return f"after {self.received}{of} bytes of its body"

    def _stalled(self) -> StalledError:
        now = self._loop.time()
        if now - self._last >= self._stall:
            return StalledError(f"request body stalled: no byte for {self._stall:g}s {self._where()} "
                                f"(--stall-timeout)")
        elapsed = now - self._start
        return StalledError(f"request body too slow: {self.received / elapsed:.0f} bytes/s over {elapsed:.1f}s "
                            f"{self._where()}, under the {self._rate} bytes/s minimum (--min-request-rate)")


REMOTE_WRITE = ("snappy",)
OTLP = ("identity", "gzip")
"""The Content-Encodings each route decodes, its default first."""


async def read_body(request: web.Request, limits: BodyLimits, held: Held, encodings: tuple[str, ...]) -> bytes:
    """The body of `request`, with the memory its decoding will take already in `held`; a
    Content-Encoding not in `encodings` is read and reserved as it is (the decoder refuses it).

    Raises RequestTooLargeError, StalledError, ClientGoneError, DecodeError, OverMemoryError (and
    the decoders' errors a gzip or snappy body earns early); `held` is the caller's to release."""
    declared = request.content_length
    if declared is not None and declared > limits.max_bytes:
        raise RequestTooLargeError(f"body of {declared} bytes over the {limits.max_bytes}-byte limit")
    encoding = (request.headers.get("Content-Encoding") or encodings[0]).strip().lower()
    if encoding not in encodings:
        encoding = ""
    if declared is not None:
        await held.add(declared * (1 + EXPANSION) if encoding == "identity" else declared)
    raw = declared or 0  # bytes of body reserved so far
    pace = Pace(limits, declared)
    chunks: list[bytes] = []
    inflated: int | None = None
    while chunk := await pace.read(request.content):
        chunks.append(chunk)
        if pace.received > limits.max_bytes:
            raise RequestTooLargeError(f"body over the {limits.max_bytes}-byte limit")
        if pace.received > raw:  # chunked: reserve as it grows
            step = min(max(CHUNKED_STEP, raw, pace.received - raw), limits.max_bytes - raw)
            async with pace.paused():
                await held.add(step)
            raw += step
        if encoding == "snappy" and inflated is None:
            inflated = snappy_declared_length(b"".join(chunks)[:10])
            if inflated is not None:
                check_snappy_length(inflated, None, limits.max_bytes)
                if declared is not None:  # more than N bytes can hold: the decoder refuses it (400)
                    inflated = min(inflated, SNAPPY_MAX_RATIO * declared)
                async with pace.paused():
                    await held.add(inflated * (1 + EXPANSION))
    body = b"".join(chunks)
    del chunks
    if encoding == "identity" and declared is None:
        await held.add(len(body) * EXPANSION)
    elif encoding == "gzip" and body:
        inflated = await asyncio.to_thread(gunzip_size, body, limits.max_bytes)
        await held.add(inflated * (1 + EXPANSION))
    return body
