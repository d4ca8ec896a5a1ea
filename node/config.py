"""The node's configuration: one frozen dataclass, parsed at the edge from flags and environment.

Each field of `NodeConfig` declares its flag once, beside its default (`flag(...)`): the help
text, how the text parses, the group. The parser, the environment variables and `from_args` are
derived from those declarations, and so are the components' own configurations (`wal`,
`batching`, `uploads`, `transfers`). Where a component has a default of its own (the WAL's segment
limits, the batch sizes, the transfer thresholds), the field refers to it: each default is said
once.

Every flag `--some-flag` can also be given as the environment variable `INGESTOR_SOME_FLAG`; a
flag on the command line wins over the environment. Defaults follow adx-mon where the design
notes say nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.addr import parse_hostport
from cluster.units import parse_duration, parse_size
from node.errors import InvalidNameError
from node.logformat import FORMATS as LOG_FORMATS
from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN, validate_name
from node.rows.logs import DEFAULT_DATABASE as LOGS_DEFAULT_DATABASE
from node.rows.logs import DEFAULT_TABLE as LOGS_DEFAULT_TABLE
from node.transfer.router import TransferConfig
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig
from node.wal.openfiles import descriptor_limit
from node.wal.openfiles import per_process as open_files_per_process
from node.wal.repository import WalConfig
from node.wal.segment import FsyncPolicy

if TYPE_CHECKING:
    from node.storage import StorageLayout

ENV_PREFIX = "INGESTOR_"
MiB = 1 << 20
BATCH_GRACE_SECONDS = 30.0
"""A batch smaller than --min-batch-size waits at most --max-segment-age plus this (or plus
--max-segment-age again, when that is shorter)."""


@dataclass(frozen=True)
class Flag:
    """How a field is given on the command line."""

    help: str
    parse: str = "str"
    """size | duration | addr | addr_or_empty | database | table | database_or_empty | table_or_empty | labels |
    int | path | bool | str | choice"""
    group: str = "node"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    append: bool = False
    """Repeatable; the environment variable takes a comma-separated list."""
    default_note: str | None = None
    """What the help says of the default, when its value alone would not say it."""


REQUIRED: Any = object()
"""The default of a field that must be given."""


def flag(default: Any, help: str, *, secret: bool = False, **how: Any) -> Any:
    """A field with its flag: `name: int = flag(10, "what it does", parse="int")`. A callable
    default is a factory; `secret` keeps the value out of the configuration's repr."""
    meta = {"flag": Flag(help, **how)}
    if default is REQUIRED:
        return field(metadata=meta)
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def _show_size(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
                       ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _show_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


_W = WalConfig(directory=Path("."))
_B = BatchPolicy()
_U = UploadConfig()
_T = TransferConfig()


@dataclass(frozen=True)
class NodeConfig:
    """Everything `ingestor serve` is told."""

    storage_dir: Path = flag(REQUIRED, "directory of the WAL and the local sink (required)", parse="path",
                             default_note="")
    node_name: str = flag(socket.gethostname, "this node's name, as peers know it", default_note="host name")
    grpc_addr: str = flag("0.0.0.0:4317", "OTLP/gRPC, transfer, health, reflection and admin", parse="addr")
    http_addr: str = flag("0.0.0.0:4318", "remote write, OTLP/HTTP, /metrics, /healthz, /readyz", parse="addr")
    transfer_addr: str = flag("0.0.0.0:9090", "adx-mon's segment transfer front door (POST /transfer, HTTPS): "
                              "where adx-mon collectors deliver; empty (--transfer-addr=) turns it off",
                              parse="addr_or_empty")
    default_metrics_database: str = flag("Metrics", "database of series without an adxmon_database label",
                                         parse="database")
    default_logs_database: str = flag(LOGS_DEFAULT_DATABASE, "database of log records without kusto.database (on "
                                      "the record or its resource); empty (--default-logs-database=): such records "
                                      "are refused", parse="database_or_empty")
    default_logs_table: str = flag(LOGS_DEFAULT_TABLE, "table of log records without kusto.table (on the record or "
                                   "its resource); empty (--default-logs-table=): such records are refused",
                                   parse="table_or_empty")
    default_traces_database: str = flag("Traces", "database of spans without kusto.database", parse="database")
    default_traces_table: str = flag("Traces", "table of spans without kusto.table", parse="table")
    lift_labels: tuple[str, ...] = flag((), "labels written as their own columns, comma separated, repeatable",
                                        parse="labels", append=True, default_note="none")
    max_segment_size: int = flag(_W.max_segment_size, "close a segment at this size", parse="size")
    max_segment_age: float = flag(_W.max_segment_age, "close a segment at this age", parse="duration")
    max_disk_usage: int = flag(_W.max_disk_usage, "refuse writes (429 / RESOURCE_EXHAUSTED) past this many bytes "
                               "of segments", parse="size", default_note="0: no limit")
    max_segment_count: int = flag(_W.max_segment_count, "refuse writes past this many segments", parse="int",
                                  default_note=f"{_W.max_segment_count}; 0: no limit")
    max_open_segments: int = flag(_W.max_open_segments, "active segment files held open at once (the node's "
                                  "receiver processes share them); past it, the one written least recently is "
                                  "closed and reopened at its next write, so that thousands of tables stay under "
                                  "ulimit -n", parse="int", default_note=f"{_W.max_open_segments}; 0: no limit")
    wal_fsync: FsyncPolicy = flag(_W.fsync, "never | on-rotate | always (see docs/wal.md for the durability each "
                                  "gives)", parse="choice", choices=tuple(x.value for x in FsyncPolicy))
    max_request_bytes: int = flag(64 * MiB, "largest request body, after decompression", parse="size")
    max_memory: int = flag(0, "bytes of requests and transfers in flight (received, decompressed, decoded) the "
                           "node holds at once; past it new work waits, then is refused with 429 / "
                           "RESOURCE_EXHAUSTED and a retry hint", parse="size",
                           default_note="0: half the container's memory limit, 1GiB without one")
    idle_timeout: float = flag(300.0, "close a connection (HTTP or gRPC) with no request for this long",
                               parse="duration")
    stall_timeout: float = flag(30.0, "cut a request body or transfer that gets no byte for this long",
                                parse="duration")
    min_request_rate: int = flag(4096, "cut a request body or transfer slower than this many bytes per second "
                                 "on average once it has lasted --stall-timeout", parse="size")
    max_connections: int = flag(1000, "open connections each port (HTTP, gRPC) takes at once, per receiver "
                                "process; past it HTTP drops its longest-idle connection for the new one (or "
                                "leaves new ones in the kernel's queue while every one is busy) and gRPC closes "
                                "the new one", parse="int", default_note="1000; 0: no limit")
    receivers: int = flag(1, "receiver processes sharing the ports with SO_REUSEPORT", parse="int",
                          default_note="1; 0: one per CPU")
    shutdown_grace: float = flag(60.0, "how long a SIGTERM may take to finish in-flight work", parse="duration")
    log_level: str = flag("info", "how much the node logs", parse="choice",
                          choices=("debug", "info", "warning", "error"))
    log_format: str = flag("text", "how log lines look: text, or json (one object per line: time, level, logger, "
                           "message, exc_info)", parse="choice", choices=LOG_FORMATS)

    storage_backend: str = flag("local", "where batches go: local (embedded ClickHouse under "
                                "<storage-dir>/local), adx, clickhouse", parse="choice",
                                choices=("local", "adx", "clickhouse"), group="upload")
    metrics_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a metrics database (ADX URL or "
                                                    "ClickHouse DSN), repeatable", append=True, metavar="DB=URL",
                                                    group="upload", default_note="none")
    logs_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a logs database, repeatable", append=True,
                                                 metavar="DB=URL", group="upload", default_note="none")
    traces_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a traces database, repeatable",
                                                   append=True, metavar="DB=URL", group="upload",
                                                   default_note="none")
    max_batch_size: int = flag(_B.max_batch_bytes, "largest batch, in uncompressed bytes of rows", parse="size",
                               group="upload")
    min_batch_size: int = flag(_B.min_batch_bytes, "a batch this large goes out at once; smaller ones wait up to "
                               "max-segment-age", parse="size", group="upload")
    max_batch_segments: int = flag(_B.max_batch_segments, "most segments in one batch", parse="int",
                                   group="upload")
    uploads: int = flag(_U.uploads, "batches uploaded at once", parse="int", group="upload")
    upload_interval: float = flag(_U.interval, "how often closed segments are batched", parse="duration",
                                  group="upload")
    max_disk_usage_per_database: int = flag(_W.max_disk_usage_per_database, "refuse writes for a database past "
                                            "this many bytes of its segments, so that one sink that is down fills "
                                            "only its own share", parse="size", group="upload",
                                            default_note="0: no limit")
    min_free_disk: int = flag(256 * MiB, "refuse writes while the storage volume has less free space than this, "
                              "so that the uploads that free it (and the local sink's store, on the same volume) "
                              "still have room", parse="size", group="upload", default_note="256MiB; 0: off")
    adx_auth: str = flag("default", "ADX authentication: default (azure-identity DefaultAzureCredential), token, "
                         "none", parse="choice", choices=("default", "token", "none"), group="upload")
    adx_token_file: Path | None = flag(None, "file holding the bearer token of --adx-auth token", parse="path",
                                       group="upload", default_note="none")
    adx_ingest_by_tags: bool = flag(False, "tag ADX ingestions with ingest-by:<batch id>", parse="bool",
                                    group="upload")
    clickhouse_ca_file: Path | None = flag(None, "CA bundle for ClickHouse TLS", parse="path", group="upload",
                                           default_note="the system's")
    clickhouse_client_cert: Path | None = flag(None, "client certificate for ClickHouse TLS", parse="path",
                                               group="upload", default_note="none")
    clickhouse_client_key: Path | None = flag(None, "client key for ClickHouse TLS", parse="path", group="upload",
                                              default_note="none")
    clickhouse_insecure_skip_verify: bool = flag(False, "do not verify the ClickHouse certificate", parse="bool",
                                                 group="upload")

    drop_prefix: tuple[str, ...] = flag((), "segments whose file name starts with this (<Database>_<Table>) are "
                                        "dropped on arrival at the transfer front door, answered 202, as adx-mon "
                                        "does; repeatable", append=True, metavar="PREFIX", group="upload",
                                        default_note="none")

    peers: tuple[str, ...] = flag((), "static peer list (this node included, by --node-name), repeatable",
                                  append=True, metavar="NAME=HOST:PORT,...", group="cluster", default_note="none")
    statefulset: str | None = flag(None, "peers are the pods <statefulset>-<i>", group="cluster",
                                   default_note="from this host's name <set>-<ordinal> when --service is given")
    service: str | None = flag(None, "the StatefulSet's headless Service: peers at <set>-<i>.<service>",
                               group="cluster", default_note="none")
    replicas: int = flag(0, "peers <set>-0..N-1", parse="int", group="cluster",
                         default_note="0: probe names until they stop resolving")
    namespace: str | None = flag(None, "Kubernetes namespace (DNS names and the API watch)", group="cluster",
                                 default_note="the pod's")
    kubernetes_peers: bool = flag(False, "peers are the Ready pods of --statefulset, watched in the Kubernetes API "
                                  "(in-cluster or --kubeconfig)", parse="bool", group="cluster")
    kubeconfig: Path | None = flag(None, "kubeconfig for --kubernetes-peers and --drain-on-annotation outside a "
                                   "cluster", parse="path", group="cluster", default_note="in-cluster")
    drain_on_annotation: bool = flag(False, "watch this node's pod (named --node-name) for the shutdown-requested "
                                     "annotation: then upload everything and set shutdown-completed (the "
                                     "autoscaler's scale-down handshake)", parse="bool", group="cluster")
    peer_unhealthy_timeout: float = flag(60.0, "a peer that fails a transfer owns nothing for this long",
                                         parse="duration", group="cluster")
    max_transfer_size: int = flag(_T.max_size, "a table with this many segment bytes here is uploaded here, "
                                  "not transferred", parse="size", group="cluster")
    max_transfer_age: float = flag(_T.max_age, "a segment closed longer ago than this is uploaded here, not "
                                   "transferred", parse="duration", group="cluster")
    transfers: int = flag(_T.concurrency, "transfers to peers at once", parse="int", group="cluster")
    peer_token: str | None = flag(None, "shared secret peers present to the transfer service (prefer the "
                                  "environment INGESTOR_PEER_TOKEN or --peer-token-file)", group="cluster",
                                  default_note="none", secret=True)
    peer_token_file: Path | None = flag(None, "file holding the peer token", parse="path", group="cluster",
                                        default_note="none")
    tls_cert: Path | None = flag(None, "TLS certificate of the gRPC port (and of this node as a client)",
                                 parse="path", group="cluster", default_note="none: plaintext")
    tls_key: Path | None = flag(None, "TLS key of --tls-cert", parse="path", group="cluster", default_note="none")
    tls_ca: Path | None = flag(None, "CA of the cluster: with it, the gRPC port requires client certificates "
                               "(mutual TLS, which also authenticates peers) and peers' certificates are verified "
                               "against it", parse="path", group="cluster", default_note="none")

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every `DB=URL` given, whatever the signal."""
        return self.metrics_kusto_endpoints + self.logs_kusto_endpoints + self.traces_kusto_endpoints

    @property
    def layout(self) -> StorageLayout:
        from node.storage import StorageLayout

        return StorageLayout(Path(self.storage_dir))

    @property
    def wal_dir(self) -> Path:
        return self.layout.wal

    @property
    def memory_limit(self) -> int:
        """--max-memory, or when it is 0 (the default) half the container's memory (memory_budget)."""
        return self.max_memory or memory_budget()

    @property
    def multiprocess(self) -> bool:
        """Several receiver processes share the ports (and the storage directory)."""
        return self.receivers > 1

    def wal(self, worker: int) -> WalConfig:
        """The WAL of receiver process `worker`."""
        return WalConfig(directory=self.wal_dir, node_name=self.node_name, worker=worker, fsync=self.wal_fsync,
                         max_segment_size=self.max_segment_size, max_segment_age=self.max_segment_age,
                         max_disk_usage=self.max_disk_usage, max_segment_count=self.max_segment_count,
                         max_open_segments=open_files_per_process(self.max_open_segments, self.receivers,
                                                                   descriptor_limit()),
                         max_disk_usage_per_database=self.max_disk_usage_per_database,
                         min_free_disk=self.min_free_disk)

    def batching(self) -> BatchPolicy:
        return BatchPolicy(min_batch_bytes=self.min_batch_size, max_batch_bytes=self.max_batch_size,
                           max_batch_segments=self.max_batch_segments,
                           max_wait=self.max_segment_age + min(BATCH_GRACE_SECONDS, self.max_segment_age))

    def uploads_config(self) -> UploadConfig:
        layout = self.layout
        return UploadConfig(interval=self.upload_interval, uploads=self.uploads, policy=self.batching(),
                            quarantine_dir=layout.quarantine, deliveries_dir=layout.deliveries)

    def transfers_config(self) -> TransferConfig:
        return TransferConfig(self.max_transfer_size, self.max_transfer_age, max(1, self.transfers))


def _flags() -> list[tuple[dataclasses.Field[Any], Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(NodeConfig) if "flag" in f.metadata]


def _addr(text: str) -> str:
    """A listening address: HOST:PORT, where an empty host is every interface and port 0 any free port."""
    parse_hostport(text, default_host="0.0.0.0", allow_port_zero=True)
    return text


def _addr_or_empty(text: str) -> str:
    """A listening address, or "" (the value meaning off)."""
    return _addr(text) if text.strip() else ""


def _name(what: str, limit: int, *, empty: bool = False) -> Callable[[str], str]:
    """A name's parser; with `empty`, "" (the value meaning none) is taken as it is."""
    def parse(text: str) -> str:
        if empty and not text.strip():
            return ""
        try:
            return validate_name(text, what, limit)
        except InvalidNameError as e:
            raise ValueError(str(e)) from e
    return parse


def _labels(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"not true or false: {text!r}")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "size": parse_size, "duration": parse_duration, "addr": _addr, "addr_or_empty": _addr_or_empty,
    "database": _name("database name", MAX_DATABASE_LEN),
    "table": _name("table name", MAX_TABLE_LEN), "labels": _labels,
    "database_or_empty": _name("database name", MAX_DATABASE_LEN, empty=True),
    "table_or_empty": _name("table name", MAX_TABLE_LEN, empty=True),
    "int": int, "path": Path, "bool": _bool, "str": str, "choice": str,
}


def _argtype(kind: str) -> Callable[[str], Any]:
    def parse(text: str) -> object:
        try:
            return _PARSERS[kind](text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    parse.__name__ = kind
    return parse


def _default_text(f: dataclasses.Field[Any], spec: Flag) -> str:
    if spec.default_note is not None:
        return spec.default_note
    value: Any = f.default
    if spec.parse == "size":
        return _show_size(value)
    if spec.parse == "duration":
        return _show_duration(value)
    if isinstance(value, FsyncPolicy):
        return value.value
    return str(value)


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """One option per flagged field of NodeConfig, in groups. Every default is None here (not
    given): `from_args` leaves the field's own default in place."""
    groups = {"node": p, "upload": p.add_argument_group("upload"), "cluster": p.add_argument_group("cluster")}
    for f, spec in _flags():
        add = groups[spec.group].add_argument
        name = "--" + f.name.replace("_", "-")
        shown = _default_text(f, spec)
        text = f"{spec.help} (default {shown})" if shown else spec.help
        if spec.parse == "bool":
            add(name, action="store_true", default=None, help=text)
        elif spec.append:
            add(name, action="append", default=None, type=_argtype(spec.parse), metavar=spec.metavar, help=text)
        else:
            add(name, type=_argtype(spec.parse), default=None, choices=spec.choices or None, metavar=spec.metavar,
                help=text)


def env_defaults(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Make `INGESTOR_<FLAG>` the default of each flag (the command line still wins). An empty
    variable is no variable (`INGESTOR_STORAGE_DIR=$UNSET` is not the current directory)."""
    for f, spec in _flags():
        key = ENV_PREFIX + f.name.upper()
        if not env.get(key, "").strip():
            continue
        text = env[key]
        try:
            if spec.append:  # kept apart: a value on the command line replaces the environment's
                value: Any = [_PARSERS[spec.parse](x.strip()) for x in text.split(",") if x.strip()]
                p.set_defaults(**{"env_" + f.name: value})
                continue
            value = _PARSERS[spec.parse](text)
        except ValueError as e:
            p.error(f"{key}={text!r}: {e}")
        if spec.choices and value not in spec.choices:
            p.error(f"{key}={text!r}: choose from {', '.join(spec.choices)}")
        p.set_defaults(**{f.name: value})


def from_args(args: argparse.Namespace) -> NodeConfig:
    """The configuration the parsed flags (and environment) ask for; fields not given keep their
    defaults. Raises SystemExit for a missing --storage-dir or an unreadable --peer-token-file."""
    given: dict[str, Any] = {}
    for f, spec in _flags():
        value = getattr(args, f.name, None)
        if spec.append:
            value = value or getattr(args, "env_" + f.name, None)
            if value:
                given[f.name] = tuple(x for v in value for x in (v if isinstance(v, tuple) else (v,)))
        elif value is not None:
            given[f.name] = value
    if given.get("storage_dir") is None:
        raise SystemExit("ingestor serve: --storage-dir (or INGESTOR_STORAGE_DIR) is required")
    if "wal_fsync" in given:
        given["wal_fsync"] = FsyncPolicy(given["wal_fsync"])
    if given.get("receivers") == 0:
        given["receivers"] = os.cpu_count() or 1
    given["peer_token"] = _token(given.get("peer_token"), given.get("peer_token_file"))
    return NodeConfig(**given)


CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
DEFAULT_MEMORY_BUDGET = 1 << 30


def memory_budget(limits: Sequence[Path] = CGROUP_LIMITS) -> int:
    """The default of --max-memory: half the container's memory limit (cgroup v2, then v1), so that
    the WAL's buffers, caches and the sink's client keep the other half; 1 GiB without a limit."""
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number, v2 with "max"
            return max(64 * MiB, int(text) // 2)
    return DEFAULT_MEMORY_BUDGET


def _token(token: str | None, token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as e:
            raise SystemExit(f"ingestor serve: --peer-token-file: {e}") from e
        if not text:
            raise SystemExit(f"ingestor serve: --peer-token-file {token_file} is empty")
        return text
    return token.strip() if token and token.strip() else None


def parse(argv: Sequence[str], env: Mapping[str, str] | None = None) -> NodeConfig:
    """Parse `serve` flags alone (for tests and tools)."""
    p = argparse.ArgumentParser(prog="ingestor serve")
    add_serve_flags(p)
    env_defaults(p, os.environ if env is None else env)
    return from_args(p.parse_args(list(argv)))
