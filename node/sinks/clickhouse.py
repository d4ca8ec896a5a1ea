"""The ClickHouse sink: batches go to one or more ClickHouse servers per database.

Endpoints are `DB=DSN` strings, DB being the node's database (chdsn.py parses them):

    Metrics=clickhouse://user:pass@host:9000/metrics?secure=true   native protocol (TLS with secure)
    Logs=http://user:pass@host:8123/logs                           HTTP
    Logs=https://host:8443                                         HTTPS; database defaults to DB

Several DSNs for one database fan out: a batch is confirmed only when every one of them confirmed
it (one that already did is not sent it again by this process). Over HTTP the CSV rows go as they
are (`INSERT ... FORMAT CSV`, gzip, chunked); the native protocol needs Python values, so the rows
are parsed here, typed by the table's columns. Tables, types and deduplication are chschema.py's.
Errors: network, timeouts and server trouble are SinkError (retried), data or schema that will
never be taken are PermanentSinkError; either says in one line what failed where (a server's stack
trace is left out), which is all the uploader logs of a retry. clickhouse-driver's own WARNING
with a traceback for each failed connection is dropped (`_DriverLog`): what it says is in the error.

At start each endpoint is asked for its version once (`start`, at most `START_CHECK_SECONDS`
altogether); one that does not answer gets one WARNING, and the node starts anyway.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import csv
import dataclasses
import http.client
import io
import logging
import re
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from clickhouse_driver import Client  # type: ignore[import-untyped]
from clickhouse_driver import errors as ch_errors

from node.cache import BoundedCache
from node.errors import PermanentSinkError, SinkError
from node.sinks import chschema
from node.sinks.base import Batch
from node.sinks.chdsn import Endpoint, parse_dsns, parse_endpoint
from node.sinks.chschema import Conn, Layout, TableCache, base_type, error_from, quote, unsigned_bits
from node.sinks.startcheck import START_CHECK_SECONDS, check_all

log = logging.getLogger(__name__)

__all__ = ["ClickHouseConfig", "ClickHouseSink", "Endpoint", "EpochNanos", "HttpConn", "NativeConn", "csv_rows",
           "one_line", "parse_dsns", "parse_endpoint", "tls_context"]


class _DriverLog(logging.Filter):
    """Drops clickhouse-driver's WARNING "Failed to connect to HOST:PORT" and its 14-line traceback,
    logged on every failed connection before the driver raises: the sink turns what it raises into
    a one-line SinkError (`Code: 210. Connection refused (HOST:PORT)`), which the uploader logs with
    the attempt and the retry delay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


_DRIVER_LOG_FILTER = _DriverLog()
logging.getLogger("clickhouse_driver.connection").addFilter(_DRIVER_LOG_FILTER)

_STACK_TRACE = re.compile(r"[.,]?\s*Stack trace:.*", re.DOTALL)


def one_line(text: str, limit: int = 2000) -> str:
    """A server's error message as one line: without the stack trace a ClickHouse server (18.16
    over the native protocol, any version with `send_stacktrace`) appends, line breaks made spaces,
    at most `limit` characters."""
    return " ".join(_STACK_TRACE.sub("", text).split())[:limit]

@dataclass(frozen=True)
class ClickHouseConfig:
    """How the ClickHouse sink reaches its servers."""

    endpoints: tuple[Endpoint, ...]
    """Parsed `DB=DSN`s (`parse_dsns`); several for one database fan out to each."""
    ca_file: Path | None = None
    """CA bundle to verify the servers' TLS certificates (default: the system's)."""
    client_cert: Path | None = None
    """Client certificate (PEM) presented over TLS."""
    client_key: Path | None = None
    """Key of `client_cert` (default: in the certificate file)."""
    insecure_skip_verify: bool = False
    """Do not verify the server's certificate or host name (testing only)."""
    connect_timeout: float = 10.0
    """Seconds to establish a connection."""
    timeout: float = 300.0
    """Seconds any one send or receive may take before the upload is failed (and retried)."""
    dedup_window: int = chschema.DEFAULT_DEDUP_WINDOW
    """`non_replicated_deduplication_window` of the tables the sink creates (insert blocks remembered)."""
    http_compression: bool = True
    """gzip the CSV sent over HTTP."""
    insert_block_rows: int = 100_000
    """Rows per block over the native protocol (bounds the memory of the parsed rows)."""
    start_check_timeout: float = START_CHECK_SECONDS
    """Seconds `start` waits, at most, for every endpoint to say its version (0: no check)."""


# -- HTTP ---------------------------------------------------------------------------------------

def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


class HttpConn:
    """Statements over ClickHouse's HTTP interface, one HTTP request each."""

    def __init__(self, ep: Endpoint, config: ClickHouseConfig, context: ssl.SSLContext | None) -> None:
        self._ep, self._config, self._context = ep, config, context
        token = base64.b64encode(f"{ep.user}:{ep.password}".encode()).decode()
        self._auth = f"Basic {token}"

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        """A connection to the first of the endpoint's hosts that takes one."""
        ep = self._ep
        failures = []
        for host, port in ep.hosts:
            conn: http.client.HTTPConnection
            if ep.secure:
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                conn.connect()
                return conn
            except OSError as e:
                conn.close()
                failures.append(f"{host}:{port}: {e}" if ep.alt_hosts else str(e))
        raise OSError("; ".join(failures))

    def _post(self, params: Mapping[str, str], body: bytes | Iterable[bytes], where: str) -> str:
        ep, cfg = self._ep, self._config
        headers = {"Authorization": self._auth, "Content-Type": "text/plain; charset=UTF-8"}
        chunked = not isinstance(body, bytes)
        if not isinstance(body, bytes) and (cfg.http_compression if ep.compress is None else ep.compress):
            body = _gzip(body)
            headers["Content-Encoding"] = "gzip"
        try:
            conn = self._open(ep.connect_timeout or cfg.connect_timeout)
        except OSError as e:
            raise SinkError(f"{where}: {ep}: {e}") from None
        try:
            try:
                assert conn.sock is not None
                conn.sock.settimeout(ep.timeout or cfg.timeout)
                conn.request("POST", f"{ep.http_path}/?" + urlencode(params), body=body, headers=headers,
                             encode_chunked=chunked)
            except (OSError, http.client.HTTPException) as e:
                # The server may have answered (an error) and closed before taking the whole body.
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise SinkError(f"{where}: {ep}: {e}") from None
            else:
                resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            raise SinkError(f"{where}: {ep}: {e}") from None
        finally:
            conn.close()
        if resp.status != 200:
            code = resp.getheader("X-ClickHouse-Exception-Code")
            return_code = int(code) if code and code.isdigit() else None
            raise error_from(return_code, f"HTTP {resp.status}: {one_line(data)}", f"{where}: {ep}")
        return data

    def query(self, sql: str) -> list[list[str]]:
        return chschema.parse_tsv(self._post({}, (sql + " FORMAT TabSeparated").encode(), "query"))

    def command(self, sql: str) -> None:
        self._post({}, sql.encode(), "statement")

    def insert(self, database: str, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[bytes],
               settings: Mapping[str, str]) -> None:
        cols = ", ".join(quote(c) for c, _ in columns)
        params = {"query": f"INSERT INTO {quote(database)}.{quote(table)} ({cols}) FORMAT CSV", **settings}
        self._post(params, (c for c in chunks if c), f"insert into {database}.{table}")


# -- native protocol ----------------------------------------------------------------------------

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?")


class EpochNanos:
    """RFC 3339 text -> integer nanoseconds since the epoch; the whole-second part is cached."""

    def __init__(self, max_entries: int = 65536) -> None:
        self._seconds: BoundedCache[str, int] = BoundedCache(max_entries)

    def __call__(self, text: str) -> int:
        head = text[:19]
        sec = self._seconds.get(head)
        tail = text[19:]
        if sec is not None and (tail == "Z" or (tail[:1] == "." and tail[-1:] == "Z" and tail[1:-1].isdigit())):
            return sec * 1_000_000_000 + (int(tail[1:-1][:9].ljust(9, "0")) if len(tail) > 1 else 0)
        m = _RFC3339.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"not an RFC 3339 time: {text[:40]!r}")
        y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
        whole = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        datetime(y, mo, d, h, mi, s)  # range check: raises ValueError for month 13 and such
        zone = m.group(8) or "Z"
        if zone == "Z":
            self._seconds.put(head, whole)
        else:
            sign = -1 if zone[0] == "+" else 1
            digits = zone[1:].replace(":", "")
            whole += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        return whole * 1_000_000_000 + int((m.group(7) or "0")[:9].ljust(9, "0"))


def _ticks(epoch: EpochNanos, div: int) -> Callable[[str], int]:
    return lambda s: epoch(s) // div


def _wrapped(modulus: int) -> Callable[[str], int]:
    """An unsigned column's value: a signed `long` (a SeriesId) becomes its two's complement."""
    return lambda s: int(s) % modulus if s else 0


def converters(columns: Sequence[tuple[str, str]]) -> list[Callable[[str], Any]]:
    """For each (name, ClickHouse type): CSV field text -> the Python value clickhouse-driver sends."""
    out: list[Callable[[str], Any]] = []
    epoch = EpochNanos()
    for _, ch_type in columns:
        b = base_type(ch_type)
        if b.startswith("DateTime64"):
            precision = b[len("DateTime64("):].split(",")[0].rstrip(")").strip() or "3"  # bare DateTime64: 3
            out.append(_ticks(epoch, 10 ** (9 - int(precision))))
        elif b.startswith("DateTime"):
            out.append(lambda s: epoch(s) // 1_000_000_000)
        elif bits := unsigned_bits(b):
            out.append(_wrapped(1 << bits))
        elif b.startswith("Int"):
            out.append(lambda s: int(s) if s else 0)
        elif b.startswith("Float"):
            out.append(lambda s: float(s) if s else 0.0)
        elif b == "Bool":
            out.append(lambda s: s.strip().lower() in ("true", "1"))
        else:
            out.append(str)
    return out


def csv_rows(chunks: Iterable[bytes], columns: Sequence[tuple[str, str]]) -> Iterator[tuple[Any, ...]]:
    """Typed rows of CSV `chunks` (whole rows each); a row that does not fit is a PermanentSinkError."""
    convs = converters(columns)
    width = len(convs)
    n = 0
    for chunk in chunks:
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PermanentSinkError(f"rows after row {n}: not UTF-8: {e}") from None
        for fields in csv.reader(io.StringIO(text, newline="")):
            n += 1
            if len(fields) != width:
                raise PermanentSinkError(f"row {n}: {len(fields)} fields, the table has {width} columns")
            try:
                yield tuple([f(v) for f, v in zip(convs, fields, strict=True)])
            except (ValueError, OverflowError) as e:
                raise PermanentSinkError(f"row {n}: {e}") from None


class NativeConn:
    """Statements over the native protocol through one clickhouse-driver Client (not thread-safe)."""

    typed_values = True
    """Inserts send typed values (`converters`), not text: see chschema.deliver."""

    def __init__(self, ep: Endpoint, client: Any) -> None:
        self._ep, self.client = ep, client

    def _call(self, where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except SinkError:
            raise
        except ch_errors.ServerException as e:
            raise error_from(e.code, f"Code: {e.code}. {one_line(e.message)}", f"{where}: {self._ep}") from None
        except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError) as e:
            raise SinkError(f"{where}: {self._ep}: {one_line(str(e) or type(e).__name__)}") from None
        except ch_errors.Error as e:
            raise error_from(getattr(e, "code", None), one_line(str(e)), f"{where}: {self._ep}") from None
        except (ValueError, TypeError, OverflowError, struct.error) as e:
            raise PermanentSinkError(f"{where}: {self._ep}: a value does not fit its column: {one_line(str(e))}") \
                from None

    def query(self, sql: str) -> list[list[str]]:
        rows = self._call("query", lambda: self.client.execute(sql))
        return [[str(v) for v in row] for row in rows]

    def command(self, sql: str) -> None:
        self._call("statement", lambda: self.client.execute(sql))

    def insert(self, database: str, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[bytes],
               settings: Mapping[str, str]) -> None:
        cols = ", ".join(quote(c) for c, _ in columns)
        sql = f"INSERT INTO {quote(database)}.{quote(table)} ({cols}) VALUES"
        # Values go typed (parsed here by csv_rows): the text format settings mean nothing here
        # (and an old server's binary settings encoding knows no new settings).
        typed = {k: int(v) if v.isdigit() else v for k, v in settings.items() if k not in chschema.TEXT_SETTINGS}
        self._call(f"insert into {database}.{table}",
                   lambda: self.client.execute(sql, csv_rows(chunks, columns), settings=typed, types_check=False))


# -- the sink -----------------------------------------------------------------------------------

def tls_context(config: ClickHouseConfig, skip_verify: bool = False) -> ssl.SSLContext:
    """The TLS context of HTTPS endpoints (native ones give the same options to clickhouse-driver);
    `skip_verify`: an endpoint's own `skip_verify=true`."""
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.client_cert:
            ctx.load_cert_chain(str(config.client_cert), str(config.client_key) if config.client_key else None)
    except (OSError, ssl.SSLError) as e:
        raise SinkError(f"ClickHouse TLS configuration: {e}") from None
    if config.insecure_skip_verify or skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Target:
    """One endpoint and its table cache. Native connections last one upload: an idle connection
    would only hold up the server's restarts (it waits for open connections when it shuts down)."""

    def __init__(self, ep: Endpoint, config: ClickHouseConfig, context: ssl.SSLContext | None) -> None:
        self.endpoint, self._config = ep, config
        self.cache = TableCache()
        self._http = None if ep.native else HttpConn(ep, config, context)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Conn]:
        if self._http is not None:
            yield self._http
            return
        ep, c = self.endpoint, self._config
        verify = not (c.insecure_skip_verify or ep.skip_verify)
        connect_timeout = ep.connect_timeout or c.connect_timeout
        alt = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in ep.alt_hosts)
        client = Client(ep.host, port=ep.port, database="default", user=ep.user, password=ep.password,
                        secure=ep.secure, verify=verify, check_hostname=verify,
                        ca_certs=str(c.ca_file) if c.ca_file else None,
                        certfile=str(c.client_cert) if c.client_cert else None,
                        keyfile=str(c.client_key) if c.client_key else None,
                        server_hostname=ep.tls_server_name or None,
                        connect_timeout=connect_timeout, send_receive_timeout=ep.timeout or c.timeout,
                        sync_request_timeout=connect_timeout, client_name="telemetry-ingestor",
                        settings={"insert_block_size": c.insert_block_rows},
                        **({"alt_hosts": alt, "round_robin": ep.round_robin} if alt else {}))
        try:
            yield NativeConn(ep, client)
        finally:
            client.disconnect()


class ClickHouseSink:
    """Delivers batches to the ClickHouse servers configured for their database. Thread-safe."""

    name = "clickhouse"

    def __init__(self, config: ClickHouseConfig) -> None:
        self.config = config
        self._databases = frozenset(e.database for e in config.endpoints)
        self._targets: dict[str, list[_Target]] = {}
        self._lock = threading.Lock()
        self._confirmed: dict[str, set[int]] = {}
        """batch id -> indexes of the endpoints that confirmed it, while others have not."""

    def start(self) -> None:
        """Check the TLS files (SinkError: the node does not start), then ask every endpoint for its
        version, at once, waiting `start_check_timeout` at most: one that does not answer is one
        WARNING, and the node starts anyway (its rows wait in the WAL, their uploads retried)."""
        contexts = {skip: tls_context(self.config, skip) for skip in {e.skip_verify for e in self.config.endpoints
                                                                      if e.secure}}
        targets: dict[str, list[_Target]] = {}
        for ep in self.config.endpoints:
            targets.setdefault(ep.database, []).append(_Target(ep, self.config, contexts.get(ep.skip_verify)))
        self._targets = targets
        timeout = self.config.start_check_timeout
        versions: dict[str, str] = {}
        failures: dict[str, str] = {}
        if timeout > 0:
            quick = dataclasses.replace(self.config, connect_timeout=timeout, timeout=timeout)

            def check(ep: Endpoint) -> Callable[[], None]:
                def ask() -> None:
                    with _Target(ep, quick, contexts.get(ep.skip_verify)).connect() as conn:
                        versions[str(ep)] = conn.query("SELECT version()")[0][0]
                return ask

            failures = check_all({str(ep): check(ep) for ep in self.config.endpoints}, timeout)
        for ep in self.config.endpoints:
            name = str(ep)
            if name in failures:
                reason = failures[name].removeprefix(f"query: {name}: ")
                log.warning("ClickHouse sink: database %s -> %s does not answer at start (%s); the node starts "
                            "anyway, keeps the rows of %s in its WAL and retries their upload until it answers",
                            ep.database, name, reason, ep.database)
            elif name in versions:
                log.info("ClickHouse sink: database %s -> %s (ClickHouse %s)", ep.database, name, versions[name])
            else:
                log.info("ClickHouse sink: database %s -> %s", ep.database, name)

    def stop(self) -> None:
        """Nothing stays open between uploads."""

    def accepts(self, database: str) -> bool:
        return database in self._databases

    def upload(self, batch: Batch) -> None:
        targets = self._targets.get(batch.database)
        if not targets:
            raise PermanentSinkError(f"no ClickHouse endpoint for database {batch.database}")
        with self._lock:
            done = set(self._confirmed.get(batch.id, ()))
        errors: list[SinkError] = []
        for i, target in enumerate(targets):
            if i in done:
                continue
            try:
                self._upload_to(target, batch)
            except SinkError as e:
                errors.append(e)
            else:
                done.add(i)
        permanent = [e for e in errors if isinstance(e, PermanentSinkError)]
        with self._lock:
            if errors and not permanent:
                self._confirmed[batch.id] = done
                if len(self._confirmed) > 10_000:  # ids of batches that were never retried as they were
                    self._confirmed.pop(next(iter(self._confirmed)))
            else:
                self._confirmed.pop(batch.id, None)
        if errors:
            text = "; ".join(str(e) for e in errors)
            if len(targets) > 1:
                text = f"{len(errors)} of {len(targets)} endpoints failed: {text}"
            raise (PermanentSinkError if permanent else SinkError)(text)

    def _upload_to(self, target: _Target, batch: Batch) -> None:
        ep = target.endpoint
        t0 = time.perf_counter()
        with target.connect() as conn:
            inserted = chschema.deliver(conn, target.cache, ep.target_database, batch, self.config.dedup_window,
                                        layout=Layout.ADXMON)
        elapsed = time.perf_counter() - t0
        if inserted:
            mb = batch.uncompressed_bytes / 1e6
            log.debug("uploaded %s.%s to %s: %d rows, %.1f MB in %.2fs (%.1f MB/s)", batch.database, batch.table, ep,
                      batch.rows, mb, elapsed, mb / elapsed if elapsed > 0 else 0.0)
