"""ClickHouse endpoints: `DB=DSN` strings as adx-mon's users write them, parsed into `Endpoint`s.

    observability_logs=clickhouse://default:devpass@host:9000/observability_logs
    Metrics=tcp://h1:9000,h2:9000?dial_timeout=5s&secure=true
    Logs=https://user@host:8443/logs?skip_verify=1

DB is the node's database (node/names.py), whose batches go to this DSN. The DSN:

- scheme: `clickhouse`, `tcp` and `native` are the native protocol (port 9000, 9440 with TLS),
  `http` and `https` ClickHouse's HTTP interface (8123, 8443), as adx-mon and clickhouse-go read
  them. `http://...?secure=true` is HTTPS. A native scheme on port 8123 or 8443, or an HTTP one on
  9000 or 9440, is taken as written, with one warning (it is the other protocol's usual port).
- hosts: one or more `host[:port]`, comma-separated (`[v6]:port` too): the first is tried first,
  the others when it cannot be reached (`connection_open_strategy=round_robin`: in turn, native).
- path: the ClickHouse database of the tables (`database=` says it too), default DB. adx-mon
  ignores it and always uses DB (docs/sinks.md).
- user and password: from the DSN (`username=` / `password=` too), else CLICKHOUSE_USER /
  CLICKHOUSE_PASSWORD, else `default` and none.
- parameters with a meaning here (`MAPPED`): `secure`, `skip_verify`, `tls_server_name` (native),
  `dial_timeout`, `read_timeout` (Go durations: `5s`, `500ms`, `1m30s`; or seconds), `compress`
  (HTTP: gzip on or off), `connection_open_strategy`, `http_path` (HTTP), `username`, `password`,
  `database`. clickhouse-go's other parameters (`IGNORED`: `debug`, pool sizes, buffer sizes, ...)
  are accepted and ignored with one warning each, as is any other parameter (clickhouse-go would
  send it as a server setting; this sink sends only its own, which its exactly-once delivery
  depends on). A value that cannot mean anything (`secure=maybe`, `dial_timeout=soon`) is refused.

A refusal is a ValueError of one line that names the endpoint, its password replaced by `***`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from node.errors import InvalidNameError
from node.names import MAX_COLUMN_LEN, MAX_DATABASE_LEN, is_valid_name, show, validate_name

log = logging.getLogger("node.sinks.clickhouse")

NATIVE_SCHEMES = ("clickhouse", "tcp", "native")
HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {("clickhouse", False): 9000, ("clickhouse", True): 9440, ("http", False): 8123, ("https", True): 8443}
_OTHER_PROTOCOL_PORTS = {"clickhouse": (8123, 8443), "http": (9000, 9440), "https": (9000, 9440)}
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
_TRUE, _FALSE = ("1", "t", "true", "yes", "on"), ("0", "f", "false", "no", "off")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

MAPPED = frozenset({"secure", "skip_verify", "tls_server_name", "dial_timeout", "read_timeout", "compress",
                    "connection_open_strategy", "http_path", "username", "password", "database"})
"""DSN parameters this sink gives a meaning."""
IGNORED = frozenset({"debug", "compress_level", "max_compression_buffer", "block_buffer_size", "max_open_conns",
                     "max_idle_conns", "conn_max_lifetime", "client_info_product", "http_proxy"})
"""clickhouse-go's parameters that mean nothing to this sink: accepted, warned about once."""

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(text: str) -> None:
    """Log `text` at WARNING the first time this process sees it."""
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    log.warning("%s", text)


@dataclass(frozen=True)
class Endpoint:
    """One parsed `DB=DSN`."""

    database: str
    """The node's database whose batches go here."""
    scheme: str
    """`clickhouse` (native protocol, also for `tcp://` and `native://`), `http` or `https`."""
    host: str
    port: int
    target_database: str
    """The ClickHouse database the tables are created in (the DSN's path; default: `database`)."""
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    """TLS: `https`, or `secure=true`."""
    alt_hosts: tuple[tuple[str, int], ...] = ()
    """More hosts of a `h1:9000,h2:9000` DSN, tried when the first cannot be reached."""
    connect_timeout: float | None = None
    """`dial_timeout`: seconds to establish a connection (None: the sink's setting)."""
    timeout: float | None = None
    """`read_timeout`: seconds a send or receive may take (None: the sink's setting)."""
    skip_verify: bool = False
    """`skip_verify`: do not verify this server's certificate and host name."""
    tls_server_name: str = ""
    """`tls_server_name`: the name the server's certificate is checked against (native)."""
    compress: bool | None = None
    """`compress` over HTTP: gzip the rows or not (None: the sink's setting)."""
    round_robin: bool = False
    """`connection_open_strategy=round_robin`: start each connection at the next host (native)."""
    http_path: str = ""
    """`http_path`: the path ClickHouse's HTTP interface is under (behind a proxy)."""

    @property
    def native(self) -> bool:
        return self.scheme == "clickhouse"

    @property
    def hosts(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *self.alt_hosts)

    def __str__(self) -> str:
        tls = "?secure=true" if self.native and self.secure else ""
        where = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return f"{self.scheme}://{self.user}@{where}{self.http_path}/{self.target_database}{tls}"


def redact(text: str) -> str:
    """`text` with the password of a URL in it replaced by `***`."""
    text = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", text)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", text)


def parse_bool(value: str) -> bool | None:
    """True or False for the spellings Go's strconv.ParseBool and this project's flags take, else None."""
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def parse_duration(value: str) -> float | None:
    """Seconds of a Go duration (`5s`, `500ms`, `1m30s`) or of a plain number of seconds; None if neither."""
    v = value.strip()
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", v):
        return float(v)
    pos, total = 0, 0.0
    while pos < len(v):
        m = _DURATION_PART.match(v, pos)
        if m is None:
            return None
        total += float(m[1]) * _UNIT_SECONDS[m[2]]
        pos = m.end()
    return total if v else None


def _hosts(text: str, default_port: int, shown: str) -> list[tuple[str, int, bool]]:
    """(host, port, port given) of each `host[:port]` of a comma-separated list."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("["):
            host, sep, rest = part[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"ClickHouse endpoint {shown!r}: invalid host {part[:80]!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = part.partition(":")
        if _HOST_RE.fullmatch(host) is None:
            raise ValueError(f"ClickHouse endpoint {shown!r}: missing or invalid host {host[:80]!r}")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"ClickHouse endpoint {shown!r}: port {port_text[:20]!r} out of range 1-65535")
            out.append((host, int(port_text), True))
        else:
            out.append((host, default_port, False))
    return out


def parse_endpoint(text: str, env: Mapping[str, str] | None = None) -> Endpoint:
    """Parse `DB=DSN` (see the module docstring); raise ValueError saying what is wrong (the
    password is never echoed). User and password missing from the DSN come from CLICKHOUSE_USER /
    CLICKHOUSE_PASSWORD in `env` (default: the process environment)."""
    env = os.environ if env is None else env
    shown = redact(text)
    database, sep, dsn = text.partition("=")
    if not sep:
        raise ValueError(f"ClickHouse endpoint {shown!r}: expected DB=DSN")
    try:
        validate_name(database, "database", MAX_DATABASE_LEN)  # the node's database: the WAL's limit
    except InvalidNameError as e:
        raise ValueError(f"ClickHouse endpoint {shown!r}: {e}") from None
    if any(c.isspace() or ord(c) < 32 for c in dsn):
        raise ValueError(f"ClickHouse endpoint {shown!r}: whitespace or control characters in the DSN")
    try:
        url = urlsplit(dsn)
    except ValueError as e:
        raise ValueError(f"ClickHouse endpoint {shown!r}: {e}") from None
    given_scheme = url.scheme.lower()
    if given_scheme not in NATIVE_SCHEMES + HTTP_SCHEMES:
        raise ValueError(f"ClickHouse endpoint {shown!r}: scheme must be clickhouse://, tcp://, native://, http:// "
                         "or https://")
    if url.fragment:
        raise ValueError(f"ClickHouse endpoint {shown!r}: unexpected #fragment")
    try:
        params = parse_qsl(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
    except ValueError:
        raise ValueError(f"ClickHouse endpoint {shown!r}: malformed query string") from None
    scheme = "clickhouse" if given_scheme in NATIVE_SCHEMES else given_scheme
    userinfo, _, hostlist = url.netloc.rpartition("@")
    user_text, has_password, password_text = userinfo.partition(":")
    user = unquote(user_text) if user_text else None
    password = unquote(password_text) if has_password else None
    target = unquote(url.path.removeprefix("/"))
    settings = _Settings(shown)
    for key, value in params:
        settings.take(key, value, scheme)
    if settings.secure is not None:
        if scheme == "https" and not settings.secure:
            warn_once(f"ClickHouse endpoint {shown}: secure=false ignored, https is always TLS")
        elif scheme == "http" and settings.secure:
            scheme = "https"  # as adx-mon does: TLS over the HTTP interface
    secure = scheme == "https" or (scheme == "clickhouse" and bool(settings.secure))
    default_port = DEFAULT_PORTS[(scheme, secure)]
    hosts = _hosts(hostlist, default_port, shown)
    for host, port, given in hosts:
        if given and port in _OTHER_PROTOCOL_PORTS[scheme]:
            other = "HTTP" if scheme == "clickhouse" else "native protocol"
            warn_once(f"ClickHouse endpoint {shown}: port {port} of {host} is usually ClickHouse's {other} port; "
                      f"{given_scheme}:// speaks the {'native protocol' if scheme == 'clickhouse' else 'HTTP'} "
                      f"(default port {default_port}): the node tries it as written")
    target = settings.database if settings.database is not None else target
    target = target or database
    if not is_valid_name(target):  # ClickHouse's database, never in a file name: the pattern's limit
        raise ValueError(f"ClickHouse endpoint {shown!r}: ClickHouse database {show(target)} must be "
                         f"1-{MAX_COLUMN_LEN} of [A-Za-z0-9] with single _ between them")
    if settings.username is not None:
        user = settings.username
    if settings.password is not None:
        password = settings.password
    (host, port, _), *alt = hosts
    return Endpoint(
        database, scheme, host, port, target,
        user or env.get("CLICKHOUSE_USER", "default"),
        password if password is not None else env.get("CLICKHOUSE_PASSWORD", ""),
        secure, tuple((h, p) for h, p, _ in alt), settings.dial_timeout, settings.read_timeout, settings.skip_verify,
        settings.tls_server_name, settings.compress, settings.round_robin, settings.http_path)


class _Settings:
    """The parameters of one DSN, checked one by one."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.secure: bool | None = None
        self.skip_verify = False
        self.tls_server_name = ""
        self.dial_timeout: float | None = None
        self.read_timeout: float | None = None
        self.compress: bool | None = None
        self.round_robin = False
        self.http_path = ""
        self.username: str | None = None
        self.password: str | None = None
        self.database: str | None = None

    def _bool(self, key: str, value: str) -> bool:
        parsed = parse_bool(value)
        if parsed is None:
            raise ValueError(f"ClickHouse endpoint {self.shown!r}: {key}={value[:40]!r} is not true or false")
        return parsed

    def _seconds(self, key: str, value: str) -> float:
        seconds = parse_duration(value)
        if seconds is None or seconds <= 0:
            raise ValueError(f"ClickHouse endpoint {self.shown!r}: {key}={value[:40]!r} is not a duration such as 5s, "
                             "500ms or 1m30s")
        return seconds

    def _ignored(self, key: str, why: str) -> None:
        warn_once(f"ClickHouse endpoint {self.shown}: parameter {key} ignored: {why}")

    def take(self, key: str, value: str, scheme: str) -> None:
        native = scheme == "clickhouse"
        if key == "secure":
            self.secure = self._bool(key, value)
        elif key == "skip_verify":
            self.skip_verify = self._bool(key, value)
        elif key == "tls_server_name":
            if native:
                self.tls_server_name = value.strip()
            else:
                self._ignored(key, "over HTTPS the server's certificate is checked against the DSN's host")
        elif key == "dial_timeout":
            self.dial_timeout = self._seconds(key, value)
        elif key == "read_timeout":
            self.read_timeout = self._seconds(key, value)
        elif key == "compress":
            on = parse_bool(value)
            if on is None:
                on = value.strip().lower() != "none"  # a method: lz4, zstd, gzip, ...
            if native:
                if on:
                    self._ignored(key, "the native protocol goes uncompressed (clickhouse-driver needs the lz4 and "
                                       "clickhouse-cityhash packages for it)")
            else:
                self.compress = on
        elif key == "connection_open_strategy":
            strategy = value.strip().lower()
            if strategy not in ("in_order", "round_robin", "random"):
                raise ValueError(f"ClickHouse endpoint {self.shown!r}: connection_open_strategy={value[:40]!r} is not "
                                 "in_order, round_robin or random")
            if strategy == "round_robin" and native:
                self.round_robin = True
            elif strategy != "in_order":
                self._ignored(key, "hosts are tried in order")
        elif key == "http_path":
            if native:
                self._ignored(key, "it is for HTTP")
            elif re.fullmatch(r"/?[A-Za-z0-9._~/-]{0,200}", value) is None or ".." in value:
                raise ValueError(f"ClickHouse endpoint {self.shown!r}: http_path={value[:40]!r} is not a plain path")
            else:
                self.http_path = ("/" + value.strip("/")) if value.strip("/") else ""
        elif key == "username":
            self.username = value
        elif key == "password":
            self.password = value
        elif key == "database":
            self.database = value
        elif key in IGNORED:
            self._ignored(key, "it means nothing to this sink")
        else:
            self._ignored(key, "not a parameter this sink knows (clickhouse-go would send it as a server setting; "
                               "this sink sends only its own)")


def parse_dsns(texts: Iterable[str], env: Mapping[str, str] | None = None) -> tuple[Endpoint, ...]:
    """Parse every `DB=DSN` (`parse_endpoint`)."""
    return tuple(parse_endpoint(t, env) for t in texts)
