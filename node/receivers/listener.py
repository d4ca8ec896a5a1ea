"""The HTTP port's listening sockets and the connections they accept, at most `limit` at once.

At the limit, a new connection takes the place of the connection idle the longest (no request in
progress: between two requests, or one that never sent a request, or is still sending its
headers), as nginx reuses keep-alive connections when it runs out: idle connections cannot keep a
client with a request out. When every connection has a request in progress, the port stops
accepting and new connections wait in the kernel's listen queue until one ends. Idle connections
are also closed after --idle-timeout (aiohttp's keep-alive timeout, which runs from the moment a
connection opens and while its headers trickle in).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable

from aiohttp.web_protocol import RequestHandler

from node.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

ACCEPT_RETRY_SECONDS = 1.0
"""Pause after an accept that failed for want of descriptors or memory (asyncio's own choice)."""


class Connections:
    """The open connections of one port and which of them are idle, oldest idle first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """0: no limit."""
        self._open: set[RequestHandler] = set()
        self._idle: OrderedDict[RequestHandler, None] = OrderedDict()
        self._changed = asyncio.Event()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conn: RequestHandler) -> None:
        self._open.add(conn)
        self._idle[conn] = None

    def closed(self, conn: RequestHandler) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)
        self._changed.set()

    def busy(self, conn: RequestHandler) -> None:
        """A request is in progress on `conn`: it is not taken away."""
        self._idle.pop(conn, None)

    def idle(self, conn: RequestHandler) -> None:
        if conn in self._open:
            self._idle[conn] = None
            self._idle.move_to_end(conn)
            self._changed.set()

    @property
    def in_progress(self) -> int:
        """Connections with a request in progress."""
        return len(self._open) - len(self._idle)

    async def until_idle(self, timeout: float) -> None:
        """Until no request is in progress, or `timeout` seconds: what a stopping port waits for
        before its server closes the connections (aiohttp's shutdown closes them first and then
        drops what arrives, so a body still arriving would never end and its request never be
        answered)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_progress > 0:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return

    def _full(self) -> bool:
        return self.limit > 0 and len(self._open) >= self.limit

    async def room(self) -> None:
        """Until a new connection can be taken: under the limit, or one to take the place of."""
        while self._full() and not self._idle:
            self._changed.clear()
            await self._changed.wait()

    def make_room(self) -> None:
        """Close the longest idle connections while at the limit (a new one is coming in)."""
        while self._full() and self._idle:
            conn, _ = self._idle.popitem(last=False)
            self._open.discard(conn)
            conn.force_close()
            self.evicted += 1


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, telling `Connections` when it opens and closes."""

    def __init__(self, inner: RequestHandler, conns: Connections) -> None:
        self._inner = inner
        self._conns = conns

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        self._conns.opened(self._inner)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None  # close the transport: a half-closed client sends nothing more

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._conns.closed(self._inner)


def bind(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for `host:port` (every address it resolves to, as asyncio binds them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as e:
                raise OSError(e.errno, f"cannot bind the HTTP port to {addr}: {e.strerror}") from None
            sock.listen(socket.SOMAXCONN)  # the queue connections wait in while every one is busy
            sock.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def accept(sock: socket.socket, conns: Connections, protocol: Callable[[], RequestHandler],
                 said: RateLimitedLog) -> None:
    """Accept connections on `sock` for ever (until cancelled), as `conns` has room for them."""
    loop = asyncio.get_running_loop()
    while True:
        await conns.room()
        try:
            conn, _ = await loop.sock_accept(sock)
        except ConnectionAbortedError:
            continue
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: the next accept may succeed
            said.log(logging.WARNING, f"accept {errno.errorcode.get(e.errno or 0, e.errno)}",
                     "HTTP port: accept failed (retrying in %.0fs): %s", ACCEPT_RETRY_SECONDS, e)
            await asyncio.sleep(ACCEPT_RETRY_SECONDS)
            continue
        conns.make_room()
        try:
            await loop.connect_accepted_socket(lambda: _Tracked(protocol(), conns), conn)
        except OSError as e:  # reset before it could be set up
            conn.close()
            log.debug("HTTP port: a connection ended as it was accepted: %s", e)
