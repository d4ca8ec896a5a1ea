"""The node's configuration: one frozen dataclass, parsed at the edge from flags and environment.

Every flag `--some-flag` can also be given as the environment variable `INGESTOR_SOME_FLAG`; a
flag on the command line wins over the environment. Defaults follow adx-mon where the design
notes say nothing else.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import InvalidNameError
from node.units import parse_duration, parse_size
from node.wal.names import validate_name
from node.wal.segment import FsyncPolicy

ENV_PREFIX = "INGESTOR_"
MiB = 1 << 20


@dataclass(frozen=True)
class NodeConfig:
    """Everything `ingestor serve` is told. Each field is documented by its flag's help text."""

    storage_dir: Path
    node_name: str = field(default_factory=socket.gethostname)
    grpc_addr: str = "0.0.0.0:4317"
    http_addr: str = "0.0.0.0:4318"
    default_metrics_database: str = "Metrics"
    default_logs_database: str | None = None
    default_logs_table: str | None = None
    default_traces_database: str = "Traces"
    default_traces_table: str = "Traces"
    lift_labels: tuple[str, ...] = ()
    max_segment_size: int = 1024 * MiB
    max_segment_age: float = 300.0
    max_disk_usage: int = 0
    max_segment_count: int = 10000
    wal_fsync: FsyncPolicy = FsyncPolicy.ON_ROTATE
    max_request_bytes: int = 64 * MiB
    max_memory: int = 0
    """0: from the cgroup's memory limit (`memory_budget`)."""
    idle_timeout: float = 300.0
    stall_timeout: float = 30.0
    min_request_rate: int = 4096
    max_connections: int = 1000
    receivers: int = 1
    shutdown_grace: float = 60.0
    log_level: str = "info"
    storage_backend: str = "local"
    metrics_kusto_endpoints: tuple[str, ...] = ()
    logs_kusto_endpoints: tuple[str, ...] = ()
    traces_kusto_endpoints: tuple[str, ...] = ()
    max_batch_size: int = 1000 * 1000 * 1000
    min_batch_size: int = 100 * 1000 * 1000
    max_batch_segments: int = 10000
    uploads: int = 2
    upload_interval: float = 5.0
    max_disk_usage_per_database: int = 0
    min_free_disk: int = 256 << 20
    adx_auth: str = "default"
    adx_token_file: Path | None = None
    adx_ingest_by_tags: bool = False
    clickhouse_ca_file: Path | None = None
    clickhouse_client_cert: Path | None = None
    clickhouse_client_key: Path | None = None
    clickhouse_insecure_skip_verify: bool = False
    peers: tuple[str, ...] = ()
    statefulset: str | None = None
    service: str | None = None
    replicas: int = 0
    namespace: str | None = None
    kubernetes_peers: bool = False
    kubeconfig: Path | None = None
    drain_on_annotation: bool = False
    peer_unhealthy_timeout: float = 60.0
    max_transfer_size: int = 100 * 1000 * 1000
    max_transfer_age: float = 90.0
    transfers: int = 4
    peer_token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every `DB=URL` given, whatever the signal."""
        return self.metrics_kusto_endpoints + self.logs_kusto_endpoints + self.traces_kusto_endpoints

    @property
    def wal_dir(self) -> Path:
        return self.storage_dir / "wal"


def _addr(text: str) -> str:
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return text


def _name(text: str) -> str:
    try:
        return validate_name("database or table", text)
    except InvalidNameError as e:
        raise ValueError(str(e)) from e


def _labels(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _flag(kind: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return {"size": parse_size, "duration": parse_duration, "addr": _addr, "name": _name,
                    "labels": _labels}[kind](text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    parse.__name__ = kind
    return parse


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    d = NodeConfig(storage_dir=Path("."))
    a = p.add_argument
    a("--storage-dir", type=Path, help="directory of the WAL and the local sink (required)")
    a("--node-name", default=None, help="this node's name, as peers know it (default: host name)")
    a("--grpc-addr", type=_flag("addr"), default=d.grpc_addr,
      help="OTLP/gRPC, transfer, health, reflection and admin (default %(default)s)")
    a("--http-addr", type=_flag("addr"), default=d.http_addr,
      help="remote write, OTLP/HTTP, /metrics, /healthz, /readyz (default %(default)s)")
    a("--default-metrics-database", type=_flag("name"), default=d.default_metrics_database,
      help="database of series without an adxmon_database label (default %(default)s)")
    a("--default-logs-database", type=_flag("name"), default=None,
      help="database of log records without kusto.database (default: none, such records are refused)")
    a("--default-logs-table", type=_flag("name"), default=None,
      help="table of log records without kusto.table (default: none, such records are refused)")
    a("--default-traces-database", type=_flag("name"), default=d.default_traces_database,
      help="database of spans without kusto.database (default %(default)s)")
    a("--default-traces-table", type=_flag("name"), default=d.default_traces_table,
      help="table of spans without kusto.table (default %(default)s)")
    a("--lift-labels", type=_flag("labels"), action="append", default=[],
      help="labels written as their own columns, comma separated, repeatable")
    a("--max-segment-size", type=_flag("size"), default=d.max_segment_size,
      help="close a segment at this size (default 1GiB)")
    a("--max-segment-age", type=_flag("duration"), default=d.max_segment_age,
      help="close a segment at this age (default 5m)")
    a("--max-disk-usage", type=_flag("size"), default=d.max_disk_usage,
      help="refuse writes (429 / RESOURCE_EXHAUSTED) past this many bytes of segments (default 0: no limit)")
    a("--max-segment-count", type=int, default=d.max_segment_count,
      help="refuse writes past this many segments (default %(default)s; 0: no limit)")
    a("--wal-fsync", choices=[x.value for x in FsyncPolicy], default=d.wal_fsync.value,
      help="never | on-rotate | always (default %(default)s; see docs/wal.md for the durability each gives)")
    a("--max-request-bytes", type=_flag("size"), default=d.max_request_bytes,
      help="largest request body, after decompression (default 64MiB)")
    a("--max-memory", type=_flag("size"), default=d.max_memory,
      help="bytes of requests and transfers in flight (received, decompressed, decoded) the node holds at once; "
           "past it new work waits, then is refused with 429 / RESOURCE_EXHAUSTED and a retry hint (default 0: "
           "half the container's memory limit, 1GiB without one)")
    a("--idle-timeout", type=_flag("duration"), default=d.idle_timeout,
      help="close a connection (HTTP or gRPC) with no request for this long (default 5m)")
    a("--stall-timeout", type=_flag("duration"), default=d.stall_timeout,
      help="cut a request body or transfer that gets no byte for this long (default 30s)")
    a("--min-request-rate", type=_flag("size"), default=d.min_request_rate,
      help="cut a request body or transfer slower than this many bytes per second on average once it has "
           "lasted --stall-timeout (default 4KiB)")
    a("--max-connections", type=int, default=d.max_connections,
      help="open connections each port (HTTP, gRPC) takes at once, per receiver process; past it HTTP drops "
           "its longest-idle connection for the new one (or leaves new ones in the kernel's queue while every one "
           "is busy) and gRPC closes the new one (default %(default)s; 0: no limit)")
    a("--receivers", type=int, default=d.receivers,
      help="receiver processes sharing the ports with SO_REUSEPORT (default %(default)s; 0: one per CPU)")
    a("--shutdown-grace", type=_flag("duration"), default=d.shutdown_grace,
      help="how long a SIGTERM may take to finish in-flight work (default 60s)")
    a("--log-level", choices=["debug", "info", "warning", "error"], default=d.log_level)
    u = p.add_argument_group("upload")
    b = u.add_argument
    b("--storage-backend", choices=["local", "adx", "clickhouse"], default=d.storage_backend,
      help="where batches go: local (embedded ClickHouse under <storage-dir>/local), adx, clickhouse "
           "(default %(default)s)")
    b("--metrics-kusto-endpoints", action="append", default=[], metavar="DB=URL",
      help="sink endpoint of a metrics database (ADX URL or ClickHouse DSN), repeatable")
    b("--logs-kusto-endpoints", action="append", default=[], metavar="DB=URL",
      help="sink endpoint of a logs database, repeatable")
    b("--traces-kusto-endpoints", action="append", default=[], metavar="DB=URL",
      help="sink endpoint of a traces database, repeatable")
    b("--max-batch-size", type=_flag("size"), default=d.max_batch_size,
      help="largest batch, in uncompressed bytes of rows (default 1GB)")
    b("--min-batch-size", type=_flag("size"), default=d.min_batch_size,
      help="a batch this large goes out at once; smaller ones wait up to max-segment-age (default 100MB)")
    b("--max-batch-segments", type=int, default=d.max_batch_segments,
      help="most segments in one batch (default %(default)s)")
    b("--uploads", type=int, default=d.uploads, help="batches uploaded at once (default %(default)s)")
    b("--upload-interval", type=_flag("duration"), default=d.upload_interval,
      help="how often closed segments are batched (default 5s)")
    b("--max-disk-usage-per-database", type=_flag("size"), default=d.max_disk_usage_per_database,
      help="refuse writes for a database past this many bytes of its segments, so that one sink that is "
           "down fills only its own share (default 0: no limit)")
    b("--min-free-disk", type=_flag("size"), default=d.min_free_disk,
      help="refuse writes while the storage volume has less free space than this, so that the uploads "
           "that free it (and the local sink's store, on the same volume) still have room (default 256MiB; "
           "0: off)")
    b("--adx-auth", choices=["default", "token", "none"], default=d.adx_auth,
      help="ADX authentication: default (azure-identity DefaultAzureCredential), token, none")
    b("--adx-token-file", type=Path, default=None, help="file holding the bearer token of --adx-auth token")
    b("--adx-ingest-by-tags", action="store_true", help="tag ADX ingestions with ingest-by:<batch id>")
    b("--clickhouse-ca-file", type=Path, default=None, help="CA bundle for ClickHouse TLS")
    b("--clickhouse-client-cert", type=Path, default=None, help="client certificate for ClickHouse TLS")
    b("--clickhouse-client-key", type=Path, default=None, help="client key for ClickHouse TLS")
    b("--clickhouse-insecure-skip-verify", action="store_true", help="do not verify the ClickHouse certificate")


    c = p.add_argument_group("cluster")
    k = c.add_argument
    k("--peers", action="append", default=[], metavar="NAME=HOST:PORT,...",
      help="static peer list (this node included, by --node-name), repeatable")
    k("--statefulset", default=None,
      help="peers are the pods <statefulset>-<i> (default: from this host's name <set>-<ordinal> when --service "
           "is given)")
    k("--service", default=None, help="the StatefulSet's headless Service: peers at <set>-<i>.<service>")
    k("--replicas", type=int, default=0, help="peers <set>-0..N-1 (default 0: probe names until they stop resolving)")
    k("--namespace", default=None, help="Kubernetes namespace (DNS names and the API watch)")
    k("--kubernetes-peers", action="store_true",
      help="peers are the Ready pods of --statefulset, watched in the Kubernetes API (in-cluster or --kubeconfig)")
    k("--kubeconfig", type=Path, default=None,
      help="kubeconfig for --kubernetes-peers and --drain-on-annotation outside a cluster")
    k("--drain-on-annotation", action="store_true",
      help="watch this node's pod (named --node-name) for the shutdown-requested annotation: then upload "
           "everything and set shutdown-completed (the autoscaler's scale-down handshake)")
    k("--peer-unhealthy-timeout", type=_flag("duration"), default=d.peer_unhealthy_timeout,
      help="a peer that fails a transfer owns nothing for this long (default 1m)")
    k("--max-transfer-size", type=_flag("size"), default=d.max_transfer_size,
      help="a table with this many segment bytes here is uploaded here, not transferred (default 100MB)")
    k("--max-transfer-age", type=_flag("duration"), default=d.max_transfer_age,
      help="a segment closed longer ago than this is uploaded here, not transferred (default 90s)")
    k("--transfers", type=int, default=d.transfers, help="transfers to peers at once (default %(default)s)")
    k("--peer-token", default=None,
      help="shared secret peers present to the transfer service (prefer the environment INGESTOR_PEER_TOKEN "
           "or --peer-token-file)")
    k("--peer-token-file", type=Path, default=None, help="file holding the peer token")
    k("--tls-cert", type=Path, default=None, help="TLS certificate of the gRPC port (and of this node as a client)")
    k("--tls-key", type=Path, default=None, help="TLS key of --tls-cert")
    k("--tls-ca", type=Path, default=None,
      help="CA of the cluster: with it, the gRPC port requires client certificates (mutual TLS, which also "
           "authenticates peers) and peers' certificates are verified against it")


def env_defaults(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Make `INGESTOR_<FLAG>` the default of each flag (the command line still wins)."""
    for action in p._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or flag == "--help":
            continue
        key = ENV_PREFIX + flag[2:].upper().replace("-", "_")
        if key in env:
            text = env[key]
            if action.type is not None and callable(action.type):
                try:
                    value = action.type(text)
                except (argparse.ArgumentTypeError, ValueError) as e:
                    p.error(f"{key}={text!r}: {e}")
            else:
                value = text
            # An appending flag keeps the environment's value apart: the command line replaces it.
            p.set_defaults(**{("env_" + action.dest) if action.default == [] else action.dest: value})


def from_args(args: argparse.Namespace) -> NodeConfig:
    if args.storage_dir is None:
        raise SystemExit("ingestor serve: --storage-dir (or INGESTOR_STORAGE_DIR) is required")
    receivers = args.receivers if args.receivers > 0 else (os.cpu_count() or 1)
    return NodeConfig(
        storage_dir=args.storage_dir,
        node_name=args.node_name or socket.gethostname(),
        grpc_addr=args.grpc_addr,
        http_addr=args.http_addr,
        default_metrics_database=args.default_metrics_database,
        default_logs_database=args.default_logs_database,
        default_logs_table=args.default_logs_table,
        default_traces_database=args.default_traces_database,
        default_traces_table=args.default_traces_table,
        lift_labels=tuple(x for group in (args.lift_labels or [getattr(args, "env_lift_labels", ())])
                          for x in group),
        max_segment_size=args.max_segment_size,
        max_segment_age=args.max_segment_age,
        max_disk_usage=args.max_disk_usage,
        max_segment_count=args.max_segment_count,
        wal_fsync=FsyncPolicy(args.wal_fsync),
        max_request_bytes=args.max_request_bytes,
        max_memory=args.max_memory or memory_budget(),
        idle_timeout=args.idle_timeout,
        stall_timeout=args.stall_timeout,
        min_request_rate=args.min_request_rate,
        max_connections=args.max_connections,
        receivers=receivers,
        shutdown_grace=args.shutdown_grace,
        log_level=args.log_level,
        storage_backend=args.storage_backend,
        metrics_kusto_endpoints=_appended(args, "metrics_kusto_endpoints"),
        logs_kusto_endpoints=_appended(args, "logs_kusto_endpoints"),
        traces_kusto_endpoints=_appended(args, "traces_kusto_endpoints"),
        max_batch_size=args.max_batch_size,
        min_batch_size=args.min_batch_size,
        max_batch_segments=args.max_batch_segments,
        uploads=args.uploads,
        upload_interval=args.upload_interval,
        max_disk_usage_per_database=args.max_disk_usage_per_database,
        min_free_disk=args.min_free_disk,
        adx_auth=args.adx_auth,
        adx_token_file=args.adx_token_file,
        adx_ingest_by_tags=args.adx_ingest_by_tags,
        clickhouse_ca_file=args.clickhouse_ca_file,
        clickhouse_client_cert=args.clickhouse_client_cert,
        clickhouse_client_key=args.clickhouse_client_key,
        clickhouse_insecure_skip_verify=args.clickhouse_insecure_skip_verify,
        peers=_appended(args, "peers"),
        statefulset=args.statefulset,
        service=args.service,
        replicas=args.replicas,
        namespace=args.namespace,
        kubernetes_peers=args.kubernetes_peers,
        kubeconfig=args.kubeconfig,
        drain_on_annotation=args.drain_on_annotation,
        peer_unhealthy_timeout=args.peer_unhealthy_timeout,
        max_transfer_size=args.max_transfer_size,
        max_transfer_age=args.max_transfer_age,
        transfers=args.transfers,
        peer_token=_token(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
    )


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


def _token(args: argparse.Namespace) -> str | None:
    if args.peer_token_file is not None:
        try:
            text = Path(args.peer_token_file).read_text().strip()
        except OSError as e:
            raise SystemExit(f"ingestor serve: --peer-token-file: {e}") from e
        if not text:
            raise SystemExit(f"ingestor serve: --peer-token-file {args.peer_token_file} is empty")
        return text
    token: str | None = args.peer_token
    return token.strip() if token and token.strip() else None


def _appended(args: argparse.Namespace, dest: str) -> tuple[str, ...]:
    """An appending flag: the command line's values, else the environment's (comma separated)."""
    given = getattr(args, dest)
    if given:
        return tuple(given)
    env = getattr(args, "env_" + dest, "")
    return tuple(x.strip() for x in str(env).split(",") if x.strip())


def parse(argv: Sequence[str], env: Mapping[str, str] | None = None) -> NodeConfig:
    """Parse `serve` flags alone (for tests and tools)."""
    p = argparse.ArgumentParser(prog="ingestor serve")
    add_serve_flags(p)
    env_defaults(p, os.environ if env is None else env)
    return from_args(p.parse_args(list(argv)))
