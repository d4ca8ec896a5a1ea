"""A client that sends, byte for byte, what adx-mon's collector sends to `POST /transfer`
(ingestor/cluster/client.go `Client.Write`, with the replicator's options: HTTP/1.1, keep-alive).

Go writes the request as its `net/http` does for a body of unknown length (a pipe from the gzip
writer, or a bufio.Reader over the merged segment files when gzip is off)::

    POST /transfer?filename=<url.Values.Encode> HTTP/1.1
    Host: <host:port>
    User-Agent: adx-mon
    Transfer-Encoding: chunked
    Content-Encoding: gzip              (unless DisableGzip)
    Content-Type: text/csv
    X-Request-Id: <flake id, hex>
    Accept-Encoding: gzip

    <chunks of at most 4096 bytes (the 4 KiB bufio.Reader)>0\\r\\n\\r\\n

over TLS (ALPN http/1.1: HTTP/2 is disabled), one connection kept alive between requests.
`Collector(url, context)`: `write(filename, body)` does it all and returns the `Response`;
`begin` / `send` / `end` / `response` do it in steps (a sender that stalls half-way).
"""

from __future__ import annotations

import gzip as gziplib
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from tests.adxmon.segments import FlakeIds

CHUNK = 4096


def insecure_context() -> ssl.SSLContext:
    """What a collector with insecure-skip-verify uses."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def pinned_context(host: str, port: int) -> ssl.SSLContext:
    """A context that trusts only the certificate the server presents now, host name checked."""
    pem = ssl.get_server_certificate((host, port))
    ctx = ssl.create_default_context(cadata=pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class Collector:
    """One collector's connection to a node's transfer front door."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None, *, gzip: bool = True,
                 timeout: float = 60.0) -> None:
        u = urllib.parse.urlsplit(url)
        assert u.scheme == "https" and u.hostname and u.port, url
        self.host, self.port = u.hostname, u.port
        self.context = context or insecure_context()
        self.gzip = gzip
        self.timeout = timeout
        self.ids = FlakeIds(host=7)
        self._sock: ssl.SSLSocket | None = None
        self._reader = b""

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
        self._reader = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, whole or in steps --------------------------------------------------------

    def write(self, filename: str, body: bytes, *, gzip: bool | None = None,
              request_id: str | None = None, headers: dict[str, str] | None = None) -> Response:
        """Send `body` (a segment file, or merged ones) as `filename`; the node's answer."""
        payload = self.begin(filename, gzip=gzip, request_id=request_id, headers=headers, body=body)
        for i in range(0, len(payload), CHUNK):
            self.send(payload[i:i + CHUNK])
        self.end()
        return self.response()

    def begin(self, filename: str, *, gzip: bool | None = None, request_id: str | None = None,
              headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
        """Send the request's head; return the bytes of the body to send (gzipped when asked)."""
        if self._sock is None:
            self.connect()
        gz = self.gzip if gzip is None else gzip
        lines = [f"POST /transfer?{urllib.parse.urlencode({'filename': filename})} HTTP/1.1",
                 f"Host: {self.host}:{self.port}", "User-Agent: adx-mon", "Transfer-Encoding: chunked"]
        if gz:
            lines.append("Content-Encoding: gzip")
        lines += ["Content-Type: text/csv", f"X-Request-Id: {request_id or self.ids.next()}",
                  "Accept-Encoding: gzip"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._raw(("\r\n".join(lines) + "\r\n\r\n").encode())
        return gziplib.compress(body, compresslevel=6, mtime=0) if gz else body

    def send(self, data: bytes) -> None:
        """One chunk of the body (chunked framing)."""
        if data:
            self._raw(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end(self) -> None:
        self._raw(b"0\r\n\r\n")

    def _raw(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def response(self) -> Response:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                body += self._read_exactly(size)
                self._read_until(b"\r\n")
            self._read_until(b"\r\n")
        else:
            body = b""
        resp = Response(status, headers, body)
        if resp.closes:
            self.close_after_answer()
        return resp

    def close_after_answer(self) -> None:
        """The server said it closes: check it did (what is left to read is nothing), then forget it."""
        assert self._sock is not None
        assert self._read_rest() == b"", "the server said Connection: close but sent more"
        self.close()

    def server_closed(self) -> bool:
        """Whether the server closed the connection (nothing more to read, EOF)."""
        assert self._sock is not None
        try:
            return self._read_rest() == b""
        except (ConnectionError, ssl.SSLError):
            return True

    # -- reading -----------------------------------------------------------------------------

    def _recv(self) -> bytes:
        assert self._sock is not None
        try:
            return self._sock.recv(65536)
        except ssl.SSLZeroReturnError:
            return b""

    def _read_until(self, sep: bytes) -> bytes:
        while sep not in self._reader:
            data = self._recv()
            if not data:
                raise ConnectionError(f"connection closed before {sep!r}: {self._reader[:200]!r}")
            self._reader += data
        out, _, self._reader = self._reader.partition(sep)
        return out

    def _read_exactly(self, n: int) -> bytes:
        while len(self._reader) < n:
            data = self._recv()
            if not data:
                raise ConnectionError("connection closed mid-body")
            self._reader += data
        out, self._reader = self._reader[:n], self._reader[n:]
        return out

    def _read_rest(self) -> bytes:
        out = self._reader
        self._reader = b""
        while data := self._recv():
            out += data
        return out
