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

adx-mon's `ingestor` command line works here too (docs/adxmon-flags.md): a flag adx-mon names
otherwise is an alias beside its field (`aliases=`, `switch=`), a flag with no meaning here is
declared in `ADXMON_ONLY` with the reason, said in one WARNING line at start (`warnings`); values
are read as adx-mon's urfave/cli reads them (`--flag=true`, `0x` integers, Go durations, repeated
flags and comma lists).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
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
from node.rows import filters
from node.rows.logs import DEFAULT_DATABASE as LOGS_DEFAULT_DATABASE
from node.rows.logs import DEFAULT_TABLE as LOGS_DEFAULT_TABLE
from node.rows.names import normalize_name
from node.rows.series import SeriesEncoder
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
class Switch:
    """A boolean flag of another name (adx-mon's) that sets a field: `--NAME` or `--NAME=true` to
    `when_true`, `--NAME=false` to `when_false`."""

    name: str
    when_true: Any
    when_false: Any


@dataclass(frozen=True)
class Flag:
    """How a field is given on the command line."""

    help: str
    parse: str = "str"
    """size | duration | addr | addr_or_empty | database | table | database_or_empty | table_or_empty |
    int | path | bool | str | choice | endpoint | lift | key_value | drop_metric | drop_label | add_label"""
    group: str = "node"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    append: bool = False
    """Repeatable, and each value a comma-separated list (as urfave/cli reads adx-mon's); so is the
    environment variable."""
    default_note: str | None = None
    """What the help says of the default, when its value alone would not say it."""
    aliases: tuple[str, ...] = ()
    """Other names of the flag (adx-mon's), without the dashes: each is `--NAME` and `INGESTOR_NAME` too."""
    switch: Switch | None = None
    """A boolean flag of another name that sets this field (adx-mon's `--enable-wal-fsync`)."""


@dataclass(frozen=True)
class AdxmonOnly:
    """A flag of adx-mon's `ingestor` with no meaning here: accepted, its value checked as adx-mon
    checks it, and said to do nothing in one WARNING line at start."""

    name: str
    why: str
    parse: str = "str"
    append: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return "adxmon_" + self.name.replace("-", "_")

    @property
    def warning(self) -> str:
        return f"accepted for adx-mon compatibility, has no effect here: {self.why}"


ADXMON_ONLY: tuple[AdxmonOnly, ...] = (
    AdxmonOnly("region", "adx-mon labels its health metric with it and substitutes it in the KQL of SummaryRules "
               "and Functions; this node runs no SummaryRules, Functions or management commands"),
    AdxmonOnly("cluster-labels", "adx-mon matches the criteria of SummaryRules, Functions and management commands "
               "against them and substitutes them in their KQL; this node runs none of those", append=True,
               parse="key_value", metavar="KEY=VALUE"),
    AdxmonOnly("partition-size", "adx-mon passes it to its coordinator, which never reads it; here every peer is "
               "on one ring", parse="int"),
    AdxmonOnly("slow-request-threshold", "adx-mon logs transfers slower than this; this node logs no slow requests "
               "and cuts a stalled or too slow body instead (--stall-timeout, --min-request-rate)",
               parse="duration"),
    AdxmonOnly("insecure-skip-verify", "adx-mon skips verifying its peers' TLS certificates with it; here a peer "
               "transfer is plaintext with --peer-token or mutual TLS verified against --tls-ca, never unverified "
               "(for ClickHouse: --clickhouse-insecure-skip-verify)", parse="bool"),
)
"""adx-mon's flags that mean nothing here, with the reason each WARNING line gives."""


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
    node_name: str = flag(socket.gethostname, "this node's name, as peers know it", default_note="host name",
                          aliases=("hostname",))
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
    lift_labels: tuple[str, ...] = flag((), "labels written as their own columns (named after the label), comma "
                                        "separated, repeatable; adx-mon's LABEL=COLUMN is read as LABEL",
                                        parse="lift", append=True, metavar="LABEL", default_note="none",
                                        aliases=("lift-label",))
    drop_metrics: tuple[str, ...] = flag((), "metrics not stored, as adx-mon's: a series whose name (__name__, "
                                         "before it becomes a table name) this regular expression matches anywhere "
                                         "(^NAME$ for one name) is neither stored nor refused; repeatable",
                                         parse="drop_metric", append=True, metavar="REGEX", default_note="none")
    drop_labels: tuple[str, ...] = flag((), "labels not stored, as adx-mon's: from the series of metrics "
                                        "METRIC_REGEX matches, the labels whose name LABEL_REGEX matches (both "
                                        "anywhere) are removed before Labels and SeriesId are made; repeatable",
                                        parse="drop_label", append=True, metavar="METRIC_REGEX=LABEL_REGEX",
                                        default_note="none")
    add_labels: tuple[str, ...] = flag((), "a string column NAME holding VALUE on every metrics row (after Value, "
                                       "before the lifted columns), as adx-mon's; not a label: Labels and SeriesId "
                                       "do not change; repeatable", parse="add_label", append=True,
                                       metavar="NAME=VALUE", default_note="none")
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
    wal_journal_tables: int = flag(_W.journal_tables, "a request that writes this many tables or more is "
                                   "acknowledged once it is one block of a journal, which is split into the tables' "
                                   "segments every 2 s (docs/wal.md)", parse="int",
                                   default_note=f"{_W.journal_tables}; 0: every table's block straight into its "
                                   "segment")
    wal_fsync: FsyncPolicy = flag(_W.fsync, "never | on-rotate | always (see docs/wal.md for the durability each "
                                  "gives); adx-mon's --enable-wal-fsync[=true] is on-rotate, =false never",
                                  parse="choice", choices=tuple(x.value for x in FsyncPolicy),
                                  switch=Switch("enable-wal-fsync", FsyncPolicy.ON_ROTATE.value,
                                                FsyncPolicy.NEVER.value))
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
                                choices=("local", "adx", "clickhouse"), group="upload",
                                default_note="local without endpoints; with them, what they are: "
                                "https://*.kusto.* adx, clickhouse:// tcp:// native:// or http(s)://...:8123|8443 "
                                "clickhouse")
    metrics_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a metrics database (ADX URL or "
                                                    "ClickHouse DSN), repeatable", append=True, metavar="DB=URL",
                                                    parse="endpoint", group="upload", default_note="none")
    logs_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a logs database, repeatable", append=True,
                                                 metavar="DB=URL", parse="endpoint", group="upload",
                                                 default_note="none")
    traces_kusto_endpoints: tuple[str, ...] = flag((), "sink endpoint of a traces database, repeatable",
                                                   append=True, metavar="DB=URL", parse="endpoint", group="upload",
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
    transfers: int = flag(_T.concurrency, "transfers to peers at once", parse="int", group="cluster",
                          aliases=("max-transfer-concurrency",))
    disable_peer_transfer: bool = flag(False, "transfer no segment to its owner among the peers: upload every one "
                                       "here (transfers from peers are still taken)", parse="bool",
                                       group="cluster")
    peer_token: str | None = flag(None, "shared secret peers present to the transfer service (prefer the "
                                  "environment INGESTOR_PEER_TOKEN or --peer-token-file)", group="cluster",
                                  default_note="none", secret=True)
    peer_token_file: Path | None = flag(None, "file holding the peer token", parse="path", group="cluster",
                                        default_note="none")
    tls_cert: Path | None = flag(None, "TLS certificate of the gRPC port and of the transfer front door (and of "
                                 "this node as a client); adx-mon calls it --ca-cert, though it is this node's "
                                 "certificate, not a CA",
                                 parse="path", group="cluster", default_note="none: plaintext", aliases=("ca-cert",))
    tls_key: Path | None = flag(None, "TLS key of --tls-cert", parse="path", group="cluster", default_note="none",
                                aliases=("key",))
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
                         min_free_disk=self.min_free_disk, journal_tables=self.wal_journal_tables)

    def batching(self) -> BatchPolicy:
        return BatchPolicy(min_batch_bytes=self.min_batch_size, max_batch_bytes=self.max_batch_size,
                           max_batch_segments=self.max_batch_segments,
                           max_wait=self.max_segment_age + min(BATCH_GRACE_SECONDS, self.max_segment_age))

    def uploads_config(self) -> UploadConfig:
        layout = self.layout
        return UploadConfig(interval=self.upload_interval, uploads=self.uploads, policy=self.batching(),
                            quarantine_dir=layout.quarantine, deliveries_dir=layout.deliveries)

    def transfers_config(self) -> TransferConfig:
        return TransferConfig(self.max_transfer_size, self.max_transfer_age, max(1, self.transfers),
                              disabled=self.disable_peer_transfer)


def _flags() -> list[tuple[dataclasses.Field[Any], Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(NodeConfig) if "flag" in f.metadata]


def _option(name: str) -> str:
    """`storage_dir` or `storage-dir` -> `--storage-dir`."""
    return "--" + name.replace("_", "-")


def _env_key(name: str) -> str:
    """`storage_dir` or `storage-dir` -> `INGESTOR_STORAGE_DIR`."""
    return ENV_PREFIX + name.replace("-", "_").upper()


def _switch_dest(field_name: str) -> str:
    return "switch_" + field_name


class FlagError(ValueError):
    """Flags that contradict each other or cannot be acted on: `ingestor serve` says it in one
    line, exit 2."""


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


def _bool(text: str) -> bool:
    """Go's spellings (1, t, true, TRUE, 0, f, false...), as adx-mon's flags take them, and yes/no, on/off."""
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("", "0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"not true or false: {text!r}")


_LEADING_ZERO = re.compile(r"[+-]?0[0-9_]+")
_GO_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[oObB][0-7_]+|[0-9_]+)")


def _int(text: str) -> int:
    """An integer as Go reads adx-mon's (0x, 0o and 0b prefixes, _ between digits). A leading zero,
    which Go reads as octal, is refused rather than read otherwise."""
    t = text.strip()
    try:
        return int(t, 0)
    except ValueError:
        pass
    if _LEADING_ZERO.fullmatch(t):
        raise ValueError(f"{text!r} has a leading zero (octal to adx-mon): write it without, or as 0o...")
    raise ValueError(f"not an integer: {text!r}")


def _size(text: str) -> int:
    """A size with a unit (100MB, 1GiB: parse_size), or a count of bytes as adx-mon's are (`_int`)."""
    t = text.strip()
    if _GO_INT.fullmatch(t):
        n = _int(t)
        if n < 0:
            raise ValueError(f"not a size: {text!r} (negative)")
        return n
    return parse_size(text)


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """Seconds of a Go duration (`1m30s`, `500ms`, `250us`: adx-mon's), or of plain seconds."""
    t = text.strip()
    parts = _GO_DURATION.findall(t)
    if parts and "".join(n + u for n, u in parts) == t:
        return sum(float(n) * _GO_UNITS[u] for n, u in parts)
    return parse_duration(t)


def _choice(text: str) -> str:
    """A choice, in any case (adx-mon takes `--storage-backend ADX`)."""
    return text.strip().lower()


def _lift(text: str) -> str:
    """A lifted label, or adx-mon's LABEL=COLUMN (kept whole: `from_args` keeps the label, `warnings`
    says what becomes of the column)."""
    label, _, _ = text.partition("=")
    if not label.strip():
        raise ValueError(f"{text!r}: expected LABEL or LABEL=COLUMN")
    return text.strip()


def _key_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r}: expected KEY=VALUE")
    return text


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """A parser that keeps the text `check` accepts (raises ValueError otherwise)."""
    def parse(text: str) -> str:
        check(text)
        return text
    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {
    "size": _size, "duration": _duration, "addr": _addr, "addr_or_empty": _addr_or_empty,
    "database": _name("database name", MAX_DATABASE_LEN),
    "table": _name("table name", MAX_TABLE_LEN),
    "database_or_empty": _name("database name", MAX_DATABASE_LEN, empty=True),
    "table_or_empty": _name("table name", MAX_TABLE_LEN, empty=True),
    "int": _int, "path": Path, "bool": _bool, "str": str, "choice": _choice, "endpoint": str, "lift": _lift,
    "key_value": _key_value, "drop_metric": _checked(filters.drop_metric_rule),
    "drop_label": _checked(filters.drop_label_rule), "add_label": _checked(filters.add_label_rule),
}

_ENDPOINT_START = re.compile(r"\s*[A-Za-z0-9_-]+\s*=")


def _pieces(kind: str, text: str) -> list[str]:
    """A repeatable flag's value split at its commas, as urfave/cli splits adx-mon's; for endpoints
    a piece that does not start with `DB=` is the previous DSN's next host
    (`DB=clickhouse://a:9000,b:9000/db` stays whole)."""
    pieces = text.split(",")
    if kind != "endpoint":
        return pieces
    out: list[str] = []
    for piece in pieces:
        if out and not _ENDPOINT_START.match(piece):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _items(kind: str, text: str) -> tuple[Any, ...]:
    """The items of one value of a repeatable flag, each trimmed and parsed; empty ones dropped."""
    return tuple(_PARSERS[kind](x.strip()) for x in _pieces(kind, text) if x.strip())


def _argtype(kind: str, *, append: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> object:
        try:
            return _items(kind, text) if append else _PARSERS[kind](text)
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


def _add(add: Callable[..., Any], names: Sequence[str], dest: str, kind: str, append: bool, text: str,
         metavar: str | None = None, choices: tuple[str, ...] = ()) -> None:
    """One option. A boolean takes `--flag`, `--flag=false` or `--flag false`, as adx-mon's do."""
    if kind == "bool":
        add(*names, dest=dest, nargs="?", const=True, default=None, type=_argtype("bool"), metavar="BOOL", help=text)
    elif append:
        add(*names, dest=dest, action="append", default=None, type=_argtype(kind, append=True), metavar=metavar,
            help=text)
    else:
        add(*names, dest=dest, type=_argtype(kind), default=None, choices=choices or None, metavar=metavar,
            help=text)


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """One option per flagged field of NodeConfig (with its aliases), in groups, then adx-mon's
    flags that mean nothing here. Every default is None here (not given): `from_args` leaves the
    field's own default in place."""
    groups = {"node": p, "upload": p.add_argument_group("upload"), "cluster": p.add_argument_group("cluster")}
    for f, spec in _flags():
        add = groups[spec.group].add_argument
        shown = _default_text(f, spec)
        text = f"{spec.help} (default {shown})" if shown else spec.help
        names = [_option(f.name), *(_option(a) for a in spec.aliases)]
        _add(add, names, f.name, spec.parse, spec.append, text, spec.metavar, spec.choices)
        if spec.switch is not None:
            sw = spec.switch
            _add(add, [_option(sw.name)], _switch_dest(f.name), "bool", False,
                 f"adx-mon's: true is {_option(f.name)} {sw.when_true}, false {_option(f.name)} {sw.when_false}")
    compat = p.add_argument_group("adx-mon compatibility", "adx-mon's flags that mean nothing here: accepted, "
                                  "their values checked, each said in one WARNING line at start")
    for a in ADXMON_ONLY:
        _add(compat.add_argument, [_option(a.name)], a.dest, a.parse, a.append, f"no effect: {a.why}",
             a.metavar or a.name.replace("-", "_").upper())


def env_defaults(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Make `INGESTOR_<FLAG>` (and `INGESTOR_<ALIAS>`) the default of each flag (the command line
    still wins). An empty variable is no variable (`INGESTOR_STORAGE_DIR=$UNSET` is not the
    current directory); two names of one flag that disagree are a usage error."""
    def read(key: str, kind: str, append: bool, choices: tuple[str, ...] = ()) -> Any:
        text = env.get(key, "")
        if not text.strip():
            return None
        try:
            value = _items(kind, text) if append else _PARSERS[kind](text)
        except ValueError as e:
            p.error(f"{key}={text!r}: {e}")
        if choices and value not in choices:
            p.error(f"{key}={text!r}: choose from {', '.join(choices)}")
        return value

    for f, spec in _flags():
        keys = [_env_key(f.name), *(_env_key(a) for a in spec.aliases)]
        found = [(key, value) for key in keys
                 if (value := read(key, spec.parse, spec.append, spec.choices)) is not None]
        if spec.append and found:  # kept apart: a value on the command line replaces the environment's
            p.set_defaults(**{"env_" + f.name: [value for _, value in found]})
        elif found:
            if len({value for _, value in found}) > 1:
                (a, _), (b, _) = found[:2]
                p.error(f"{a}={env[a]!r} and {b}={env[b]!r} name one flag and disagree: set one of them")
            p.set_defaults(**{f.name: found[0][1]})
        if spec.switch is not None:
            on = read(_env_key(spec.switch.name), "bool", False)
            if on is not None:
                p.set_defaults(**{_switch_dest(f.name): on})
    for x in ADXMON_ONLY:
        value = read(_env_key(x.name), x.parse, x.append)
        if value is not None:
            p.set_defaults(**{x.dest: [value] if x.append else value})


def from_args(args: argparse.Namespace) -> NodeConfig:
    """The configuration the parsed flags (and environment) ask for; fields not given keep their
    defaults. Raises SystemExit for a missing --storage-dir or an unreadable --peer-token-file,
    FlagError for flags that contradict each other (`storage_backend_of`, a switch and its field)."""
    given: dict[str, Any] = {}
    for f, spec in _flags():
        value = getattr(args, f.name, None)
        if spec.append:
            value = value or getattr(args, "env_" + f.name, None)
            if value:
                given[f.name] = tuple(x for v in value for x in (v if isinstance(v, tuple) else (v,)))
        elif value is not None:
            given[f.name] = value
        on = getattr(args, _switch_dest(f.name), None) if spec.switch is not None else None
        if spec.switch is not None and on is not None:
            wanted = spec.switch.when_true if on else spec.switch.when_false
            if f.name in given and given[f.name] != wanted:
                raise FlagError(f"{_option(spec.switch.name)}={str(on).lower()} is {_option(f.name)} {wanted}, "
                                f"but {_option(f.name)} {given[f.name]} is given too: pass one of them")
            given[f.name] = wanted
    if given.get("storage_dir") is None:
        raise SystemExit("ingestor serve: --storage-dir (or INGESTOR_STORAGE_DIR) is required")
    if "wal_fsync" in given:
        given["wal_fsync"] = FsyncPolicy(given["wal_fsync"])
    if "lift_labels" in given:  # adx-mon's LABEL=COLUMN: the column is named after the label here
        given["lift_labels"] = tuple(x.partition("=")[0].strip() for x in given["lift_labels"])
    try:  # the columns --add-labels and --lift-labels make together
        SeriesEncoder("Metrics", given.get("lift_labels", ()), None,
                      filters.MetricFilters(given.get("drop_metrics", ()), given.get("drop_labels", ()),
                                            given.get("add_labels", ())))
    except ValueError as e:
        raise FlagError(str(e)) from None
    if given.get("receivers") == 0:
        given["receivers"] = os.cpu_count() or 1
    given["storage_backend"] = storage_backend_of(given.get("storage_backend"), [
        (_option(name), entry) for name in ENDPOINT_FIELDS for entry in given.get(name, ())])
    given["peer_token"] = _token(given.get("peer_token"), given.get("peer_token_file"))
    return NodeConfig(**given)


# -- the backend, from the endpoints -------------------------------------------------------------------

ENDPOINT_FIELDS = ("metrics_kusto_endpoints", "logs_kusto_endpoints", "traces_kusto_endpoints")
CLICKHOUSE_SCHEMES = ("clickhouse", "tcp", "native")
CLICKHOUSE_HTTP_PORTS = (8123, 8443)
ADX_HOST_LABELS = ("kusto", "kustomfa")
_BACKEND_NAMES = {"adx": "an ADX", "clickhouse": "a ClickHouse"}


def _hosts(url: str) -> tuple[str, str, list[tuple[str, int | None]]]:
    """(scheme, what to show of the URL, [(host, port)]) of `scheme://[user[:pass]@]host[:port][,host...]/...`;
    the scheme is "" when there is none. What is shown leaves out credentials, path and query."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "", "a value that is not a URL", []
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    hosts: list[tuple[str, int | None]] = []
    for hostport in netloc.split(","):
        if hostport.startswith("["):
            host, _, tail = hostport[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        hosts.append((host.lower(), int(port) if port.isdigit() else None))
    more = "/..." if len(rest) > len(rest.split("/", 1)[0]) else ""
    return scheme.lower(), f"{scheme}://{netloc}{more}", hosts


def backend_of_endpoint(url: str) -> str | None:
    """"adx" or "clickhouse", from the endpoint's scheme and hosts alone, or None when they do not
    say: clickhouse://, tcp://, native://, and http(s):// on port 8123 or 8443 are ClickHouse;
    http(s)://*.kusto.* (and *.kustomfa.*) is ADX."""
    scheme, _, hosts = _hosts(url)
    if scheme in CLICKHOUSE_SCHEMES:
        return "clickhouse"
    if scheme not in ("http", "https"):
        return None
    for host, port in hosts:
        if any(label in ADX_HOST_LABELS for label in host.split(".")[1:-1]):
            return "adx"
        if port in CLICKHOUSE_HTTP_PORTS:
            return "clickhouse"
    return None


def _shown(entry: str) -> str:
    db, _, url = entry.partition("=")
    return f"{db}={_hosts(url)[1]}"


def storage_backend_of(backend: str | None, endpoints: Sequence[tuple[str, str]]) -> str:
    """The backend `--storage-backend` names, or when it names none the one the endpoints
    (`(flag, "DB=URL")`) are: local when there are none. Raises FlagError for endpoints given to the
    local backend, endpoints of both backends, an endpoint the backend given contradicts, or one
    whose backend cannot be told when none is given: no endpoint is ever silently ignored."""
    kinds = [(flag, entry, backend_of_endpoint(entry.partition("=")[2])) for flag, entry in endpoints]
    if backend == "local" and kinds:
        flag, entry, _ = kinds[0]
        raise FlagError(f"--storage-backend local uploads to no endpoint, but {flag} {_shown(entry)} is given: "
                        "drop the endpoints, or pass --storage-backend adx or clickhouse")
    if backend is not None:
        for flag, entry, kind in kinds:
            if kind is not None and kind != backend:
                raise FlagError(f"--storage-backend {backend}, but {flag} {_shown(entry)} is {_BACKEND_NAMES[kind]} "
                                f"endpoint: give {_BACKEND_NAMES[backend]} one, or pass --storage-backend {kind}")
        return backend
    if not kinds:
        return "local"
    first: dict[str, tuple[str, str]] = {}
    for flag, entry, kind in kinds:
        if kind is None:
            raise FlagError(f"cannot tell the backend of {flag} {_shown(entry)} from its scheme or host: pass "
                            "--storage-backend adx or clickhouse")
        first.setdefault(kind, (flag, entry))
    if len(first) > 1:
        (fa, ea), (fc, ec) = first["adx"], first["clickhouse"]
        raise FlagError(f"{fa} {_shown(ea)} is an ADX endpoint and {fc} {_shown(ec)} a ClickHouse one: a node "
                        "uploads to one backend; pass the endpoints of one")
    return next(iter(first))


# -- what is said at start ----------------------------------------------------------------------------

def warnings(cmdline: argparse.Namespace, merged: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    """The WARNING lines `ingestor serve` says at start, once each: every adx-mon flag with no
    effect here that is given (named as given: `--region` on the command line, else
    `INGESTOR_REGION`), every adx-mon `--lift-label LABEL=COLUMN` whose column is named otherwise
    here, and a --kubeconfig nothing reads. `cmdline`: the command line alone; `merged`: with the
    environment (serve_cli.with_environment)."""
    out = []
    for x in ADXMON_ONLY:
        if getattr(cmdline, x.dest, None) is not None:
            out.append(f"{_option(x.name)}: {x.warning}")
        elif env.get(_env_key(x.name), "").strip():
            out.append(f"{_env_key(x.name)}: {x.warning}")
    lifted = getattr(merged, "lift_labels", None) or getattr(merged, "env_lift_labels", None) or []
    for item in dict.fromkeys(x for v in lifted for x in v):
        label, sep, column = item.partition("=")
        if sep and normalize_name(column.strip()) != normalize_name(label.strip()):
            out.append(f"--lift-labels {item}: the column is named after the label here, "
                       f"{normalize_name(label.strip())}, not {column.strip()}")
    if getattr(merged, "kubeconfig", None) is not None and not (
            getattr(merged, "kubernetes_peers", None) or getattr(merged, "drain_on_annotation", None)):
        out.append("--kubeconfig: read only by --kubernetes-peers and --drain-on-annotation, and neither is given: "
                   "this node finds no peers in Kubernetes (adx-mon watches its StatefulSet's pods with it; here "
                   "pass --kubernetes-peers)")
    return out


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
    try:
        return from_args(p.parse_args(list(argv)))
    except FlagError as e:
        p.error(str(e))
