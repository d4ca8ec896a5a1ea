"""Azure Data Explorer sink: queued ingestion of gzip CSV, with the table and its mapping made on demand.

    Batch.iter_csv() ─▶ isal gzip ─▶ <temp>/adx-upload-*/<batch id>.csv.gz ─▶ blob in a TempStorage container
                                                                          └─▶ message on an ingestion queue:
        {"BlobPath": <blob url + SAS>, "RawDataSize": <CSV bytes>, "DatabaseName", "TableName",
         "AdditionalProperties": {"format": "csv", "ingestionMappingReference": "<Table>_<schema hash>",
                                  "ingestionMappingType": "Csv", "authorizationContext", ["tags"]}}

Before the first ingestion of a table with a schema (once per process per cluster, database, table and schema):

    .create-merge table ['T'] (['Timestamp']:datetime, ['SeriesId']:long, ...)
    .create-or-alter table ['T'] ingestion csv mapping "T_<schema hash>"
        '[{"Column":"Timestamp","DataType":"datetime","Properties":{"Ordinal":"0"}}, ...]'

The ingest (data management) endpoint of `https://c.region.kusto.windows.net` is `https://ingest-c.region...`
unless configured; loopback and IP hosts are used as they are (as azure-kusto-ingest does). Errors: throttling,
network, authentication and 5xx are SinkError (retried); a management command the service refuses as invalid
(HTTP 400 or an error marked permanent), or a schema that cannot be written as one, is PermanentSinkError.

At start, each cluster and ingest endpoint gets one TCP connection (name resolution, routing, a
port that listens; no request, so no credentials are asked for: those are found by the first
upload), at once, `START_CHECK_SECONDS` at most altogether: one that cannot be reached is one
WARNING, and the node starts anyway (its rows wait in the WAL, their uploads retried).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, AnyStr
from urllib.parse import urlsplit

import requests
from azure.core.exceptions import AzureError
from azure.kusto.data import ClientRequestProperties, KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.data_format import DataFormat, IngestionMappingKind
from azure.kusto.data.exceptions import (
    KustoApiError,
    KustoBlobError,
    KustoError,
    KustoMultiApiError,
    KustoServiceError,
)
from azure.kusto.ingest import (
    BlobDescriptor,
    FileDescriptor,
    IngestionProperties,
    QueuedIngestClient,
    StreamDescriptor,
)
from azure.kusto.ingest._resource_manager import _ResourceUri
from azure.storage.blob import BlobServiceClient, ExponentialRetry
from isal import isal_zlib

from node.errors import InvalidNameError, PermanentSinkError, SinkError
from node.names import COLUMN_RE, MAX_DATABASE_LEN, MAX_TABLE_LEN, validate_name
from node.sinks.base import CLICKHOUSE_TYPES, Batch
from node.sinks.startcheck import START_CHECK_SECONDS, check_all, connect
from node.wal.names import Schema, schema_hash

log = logging.getLogger(__name__)

AUTH_MODES = ("default", "token", "none")
APPLICATION = "telemetry-ingestor"
TEMP_PREFIX = "adx-upload-"

ADX_TYPES = frozenset(CLICKHOUSE_TYPES)
_URL_FORBIDDEN = re.compile(r"[\s;=,'\"`{}<>\\^|\x00-\x1f\x7f]")
# A blob above _PUT_SIZE goes up in blocks: what a blob upload holds in memory stays bounded.
_PUT_SIZE, _BLOCK_SIZE = 8 << 20, 4 << 20
_SAS_SIG = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)
# 400s that a change outside the batch (creating the database, granting access) can fix.
_RETRYABLE_BAD_REQUESTS = ("BadRequest_DatabaseNotExist", "BadRequest_EntityNotFound")


@dataclass(frozen=True)
class AdxConfig:
    """How the ADX sink reaches its clusters."""

    endpoints: dict[str, str]
    """Database -> Kusto cluster URL (`parse_endpoints` of the `--*-kusto-endpoints DB=URL` flags)."""
    auth: str = "default"
    """`default`: azure-identity's DefaultAzureCredential (workload identity, managed identity, Azure CLI, ...);
    `token`: a static bearer token from `token_file`, else from the environment variable `token_env`, read again
    at every request so that a rotated file is picked up; `none`: no Authorization header (local endpoints)."""
    token_file: Path | None = None
    """File holding the bearer token of `auth="token"`."""
    token_env: str = "INGESTOR_ADX_TOKEN"
    """Environment variable holding the bearer token of `auth="token"` when there is no `token_file`."""
    ingest_by_tags: bool = False
    """Tag every ingestion `ingest-by:<batch id>` and have ADX skip it when that tag already exists, so a
    retried batch lands once. ADX does not merge extents whose tags differ, and every batch has its own:
    this costs query speed, so it is off by default."""
    ingest_endpoints: dict[str, str] = field(default_factory=dict)
    """Database -> ingestion (data management) URL, for a cluster whose is not `ingest-<cluster host>`."""
    temp_dir: Path | None = None
    """Where a batch is compressed before its blob upload (default: the system's temporary directory). The
    sink owns it: `start()` deletes what a previous run left there."""
    compression_level: int = 1
    """isal gzip level, 0-3: 1 compresses metric rows ~10x at ~1.6 GB/s (zlib level 1: ~9.5x at 0.37 GB/s)."""
    storage_retries: int = 3
    """Retries of a failed blob upload within one attempt (the uploader retries the whole batch after)."""
    command_timeout: float = 120.0
    """Seconds a `.create-merge` or mapping command may take on the server."""
    start_check_timeout: float = START_CHECK_SECONDS
    """Seconds `start` waits, at most, for a TCP connection to every endpoint (0: no check)."""

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ValueError(f"ADX auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        if not 0 <= self.compression_level <= 3:
            raise ValueError("ADX compression level must be 0-3")
        for db in self.ingest_endpoints:
            if db not in self.endpoints:
                raise ValueError(f"ingest endpoint for {db!r}, which has no Kusto endpoint")


# -- configuration parsing ----------------------------------------------------------------------

def parse_endpoints(entries: Iterable[str]) -> dict[str, str]:
    """`["Metrics=https://c.region.kusto.windows.net", ...]` -> {"Metrics": "https://c.region..."}.

    Raises ValueError for an entry without `=`, a database name that is not 1-1024 of [A-Za-z0-9], a URL that
    is not a bare http(s) origin (no credentials, path, query, or characters that would break out of a Kusto
    connection string such as `;`), and a database given two different URLs.
    """
    out: dict[str, str] = {}
    for entry in entries:
        db, sep, url = entry.partition("=")
        if not sep:
            raise ValueError(f"bad Kusto endpoint {entry[:80]!r}: expected DB=URL")
        try:
            validate_name(db, "database", MAX_DATABASE_LEN)
        except InvalidNameError as e:
            raise ValueError(f"bad Kusto endpoint {entry[:80]!r}: {e}") from None
        url = normalize_url(url)
        if out.setdefault(db, url) != url:
            raise ValueError(f"database {db!r} has two Kusto endpoints: {out[db]} and {url}")
    return out


def normalize_url(url: str) -> str:
    """`https://Host:443/` -> `https://host:443`; ValueError for anything but a bare http(s) origin."""
    if _URL_FORBIDDEN.search(url):
        raise ValueError(f"bad Kusto URL {url[:80]!r}: forbidden character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad Kusto URL {url[:80]!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad Kusto URL {url[:80]!r}: expected http(s)://host[:port]")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"bad Kusto URL {url[:80]!r}: credentials do not belong in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad Kusto URL {url[:80]!r}: no path, query or fragment allowed")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def is_local_host(host: str) -> bool:
    """Loopback names and IP literals: endpoints of emulators and tests, which have no `ingest-` twin."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ingest_url(cluster_url: str) -> str:
    """The data management endpoint of a cluster: `https://ingest-<host>`, as ADX names it.

    A host that already starts with `ingest-`, and local and IP hosts, are returned as they are.
    """
    parts = urlsplit(cluster_url)
    host = parts.hostname or ""
    if host.startswith("ingest-") or is_local_host(host):
        return cluster_url
    return cluster_url.replace("://", "://ingest-", 1)


# -- schema and management commands (pure) --------------------------------------------------------

def check_schema(schema: Schema) -> Schema:
    """Return `schema` if every column name and type can be written into a command, else ValueError."""
    if not schema:
        raise ValueError("empty schema")
    seen = set()
    for column, adx_type in schema:
        if COLUMN_RE.fullmatch(column) is None:  # a column's own pattern: names and `_` (node/names.py)
            raise ValueError(f"invalid column name {column[:64]!r}")
        if adx_type not in ADX_TYPES:
            raise ValueError(f"column {column}: unknown type {adx_type[:64]!r}")
        if column.lower() in seen:
            raise ValueError(f"duplicate column {column}")
        seen.add(column.lower())
    return schema


def mapping_name(table: str, schema: Schema) -> str:
    """`<Table>_<schema hash>`: one mapping per schema, so tables whose columns change keep old ones valid."""
    return f"{table}_{schema_hash(schema)}"


def mapping_json(schema: Schema) -> str:
    """The CSV mapping: column i of a row goes to the column named at ordinal i."""
    return json.dumps([{"Column": c, "DataType": t, "Properties": {"Ordinal": str(i)}}
                       for i, (c, t) in enumerate(schema)], separators=(",", ":"))


def create_table_command(table: str, schema: Schema) -> str:
    """Create the table, or add the columns it lacks (an existing column of another type is an error)."""
    columns = ", ".join(f"['{c}']:{t}" for c, t in schema)
    return f".create-merge table ['{table}'] ({columns})"


def create_mapping_command(table: str, name: str, schema: Schema) -> str:
    return f".create-or-alter table ['{table}'] ingestion csv mapping \"{name}\" '{mapping_json(schema)}'"


def source_id(batch_id: str) -> uuid.UUID:
    """A v4-shaped UUID from the batch id: a retried batch keeps its ingestion source id and blob name."""
    return uuid.UUID(bytes=hashlib.sha256(batch_id.encode()).digest()[:16], version=4)


# -- errors ---------------------------------------------------------------------------------------

def redact(text: str) -> str:
    """Remove SAS signatures from a message that may quote a storage URL."""
    return _SAS_SIG.sub(r"\1REDACTED", text)


def describe(err: BaseException) -> str:
    """One line about `err` and its causes, SAS signatures removed."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen and len(parts) < 4:
        seen.add(id(e))
        inner = e.inner if isinstance(e, KustoBlobError) else None
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, KustoApiError) and e.error.code:
            text = f"{e.error.code}: {text}"
        parts.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
        e = inner or e.__cause__ or e.__context__
    return redact(" <- ".join(parts))


def is_permanent(err: BaseException) -> bool:
    """Whether the service refused a command as invalid, so that sending it again cannot succeed."""
    if not isinstance(err, KustoServiceError):
        return False
    status = getattr(err.http_response, "status_code", None)
    if status in (401, 403, 404, 408, 429) or (status is not None and status >= 500):
        return False
    codes: list[str] = []
    flagged = False
    if isinstance(err, KustoApiError):
        codes.append(err.error.code or "")
        flagged = bool(err.error.permanent)
    elif isinstance(err, KustoMultiApiError):
        codes.extend(e.code or "" for e in err.get_api_errors())
        flagged = any(e.permanent for e in err.get_api_errors())
    if any(code.startswith(_RETRYABLE_BAD_REQUESTS) for code in codes):
        return False
    return status == 400 or flagged


# -- clients --------------------------------------------------------------------------------------

class _IngestClient(QueuedIngestClient):
    """QueuedIngestClient whose blob upload rewinds the file for each container and has bounded retries.

    The library's own loop over containers hands the next container a stream that the failed attempt already
    consumed in part, which would enqueue a blob missing its head; and its storage clients back off for about
    a minute per container, which the uploader's own backoff makes redundant.
    """

    def __init__(self, kcsb: KustoConnectionStringBuilder, storage_retries: int) -> None:
        super().__init__(kcsb, auto_correct_endpoint=False)
        self._storage_retries = storage_retries

    def upload_blob(self, containers: list[_ResourceUri], descriptor: FileDescriptor | StreamDescriptor,
                    database: str, table: str, stream: IO[AnyStr], proxy_dict: dict[str, str] | None,
                    timeout: int, max_retries: int) -> BlobDescriptor:
        blob_name = f"{database}__{table}__{descriptor.source_id}__{descriptor.stream_name}"
        start = stream.tell()
        error: Exception | None = None
        for container in containers[:max(1, max_retries)]:
            stream.seek(start)
            retry = ExponentialRetry(initial_backoff=1, increment_base=3, retry_total=self._storage_retries)
            try:
                with BlobServiceClient(container.account_uri, proxies=proxy_dict, retry_policy=retry,
                                       max_single_put_size=_PUT_SIZE, max_block_size=_BLOCK_SIZE) as service:
                    blob = service.get_blob_client(container=container.object_name, blob=blob_name)
                    blob.upload_blob(stream, overwrite=True, timeout=timeout)
                    url = blob.url
            except (AzureError, OSError) as e:
                error = e
                self._resource_manager.report_resource_usage_result(container.storage_account_name, False)
                continue
            self._resource_manager.report_resource_usage_result(container.storage_account_name, True)
            return BlobDescriptor(url, descriptor.size, descriptor.source_id)
        raise KustoBlobError(error or RuntimeError("no temporary storage container"))


@dataclass
class _Cluster:
    engine: KustoClient
    ingest: _IngestClient


class AdxSink:
    """Delivers batches to the ADX cluster of their database. Thread-safe: `upload` runs in worker threads."""

    name = "adx"

    def __init__(self, config: AdxConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._clusters: dict[str, _Cluster] = {}  # by cluster URL
        self._mappings: dict[tuple[str, str, str, Schema], str] = {}  # (cluster, db, table, schema) -> mapping
        self._key_locks: dict[tuple[str, str, str, Schema], threading.Lock] = {}
        self._credential: object | None = None
        for db, url in config.endpoints.items():
            try:
                validate_name(db, "database", MAX_DATABASE_LEN)
            except InvalidNameError as e:
                raise ValueError(str(e)) from None
            for u in (url, self._ingest_url(db)):
                parts = urlsplit(u)
                if config.auth != "none" and parts.scheme != "https" and not is_local_host(parts.hostname or ""):
                    raise ValueError(f"refusing to send ADX credentials over plain http to {u}")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Build the clients (no request is sent) and delete batches a previous run left compressed."""
        if self.config.auth == "token":
            try:
                self._read_token()
            except (OSError, ValueError) as e:
                raise SinkError(f"ADX token: {e}") from e
        elif self.config.auth == "default":
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        if self.config.temp_dir is not None:
            self.config.temp_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.config.temp_dir.glob(TEMP_PREFIX + "*"):
                shutil.rmtree(stale, ignore_errors=True)
        with self._lock:
            for db, url in self.config.endpoints.items():
                if url not in self._clusters:
                    self._clusters[url] = _Cluster(KustoClient(self._kcsb(url)),
                                                   _IngestClient(self._kcsb(self._ingest_url(db)),
                                                                 self.config.storage_retries))
        self._check_endpoints()

    def _check_endpoints(self) -> None:
        """One TCP connection to every cluster and ingest endpoint, at once (see the module's doc)."""
        timeout = self.config.start_check_timeout
        if timeout <= 0:
            return
        uses: dict[str, list[tuple[str, str]]] = {}  # url -> (database, "cluster" | "ingest")
        for db, url in sorted(self.config.endpoints.items()):
            uses.setdefault(url, []).append((db, "cluster"))
            uses.setdefault(self._ingest_url(db), []).append((db, "ingest"))

        def probe(url: str) -> Callable[[], None]:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            return lambda: connect(parts.hostname or "", port, timeout)

        failures = check_all({url: probe(url) for url in uses}, timeout)
        for url, reason in failures.items():
            dbs = sorted({db for db, _ in uses[url]})
            roles = " and ".join(sorted({role for _, role in uses[url]}))
            log.warning("ADX sink: the %s endpoint %s of database %s cannot be reached at start (%s); the node starts "
                        "anyway, keeps the rows of %s in its WAL and retries their upload until it answers", roles,
                        url, ", ".join(dbs), reason, ", ".join(dbs))

    def stop(self) -> None:
        with self._lock:
            clusters, self._clusters = list(self._clusters.values()), {}
        for c in clusters:
            c.ingest.close()
            c.engine.close()  # type: ignore[no-untyped-call]

    def accepts(self, database: str) -> bool:
        return database in self.config.endpoints

    # -- upload -----------------------------------------------------------------------------

    def upload(self, batch: Batch) -> None:
        """Ensure the table and mapping, compress the rows to a temporary file, and queue its ingestion.

        Returns once the ingestion message is on an ADX queue: from there ADX owns the data (its queued
        ingestion retries on its side; failures it reports are not waited for).
        """
        db, table = batch.database, batch.table
        url = self.config.endpoints.get(db)
        if url is None:
            # Retried rather than quarantined: configuring the endpoint delivers the batch.
            raise SinkError(f"no Kusto endpoint configured for database {db}")
        cluster = self._cluster(url)
        schema = batch.read_schema()  # blocks without a header line: the default of their kind (base.py)
        if schema is None:
            if not any(batch.iter_csv()):
                return  # no row: nothing to ingest
            raise PermanentSinkError(f"{batch.id}: no schema header line (sample kind {batch.kind})")
        try:
            validate_name(table, "table", MAX_TABLE_LEN)
            check_schema(schema)
        except (InvalidNameError, ValueError) as e:
            raise PermanentSinkError(f"{db}.{table}: {e}") from None
        mapping = self._ensure_table(url, cluster.engine, db, table, schema)
        try:
            work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.config.temp_dir))
        except OSError as e:
            raise SinkError(f"{batch.id}: no temporary directory for the upload: {e}") from e
        try:
            path = work / f"{batch.id}.csv.gz"
            try:
                compress(batch.iter_csv(), path, self.config.compression_level)
            except OSError as e:
                raise SinkError(f"{batch.id}: compressing to {work}: {e}") from e
            if batch.uncompressed_bytes == 0:
                return  # nothing to ingest: ADX refuses empty blobs
            tags = [batch.id] if self.config.ingest_by_tags else None
            props = IngestionProperties(
                database=db, table=table, data_format=DataFormat.CSV,
                ingestion_mapping_reference=mapping, ingestion_mapping_kind=IngestionMappingKind.CSV,
                ingest_by_tags=tags, ingest_if_not_exists=tags)
            descriptor = FileDescriptor(str(path), size=batch.uncompressed_bytes, source_id=source_id(batch.id))
            try:
                cluster.ingest.ingest_from_file(descriptor, props)
            except (KustoError, AzureError, OSError, requests.RequestException) as e:
                raise SinkError(f"{db}.{table}: queued ingestion of {batch.id} failed: {describe(e)}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.debug("queued %s to %s.%s: %d rows, %d bytes", batch.id, db, table, batch.rows, batch.uncompressed_bytes)

    def _ensure_table(self, url: str, engine: KustoClient, db: str, table: str, schema: Schema) -> str:
        """Create or merge the table and its mapping once per process; return the mapping's name."""
        key = (url, db, table, schema)
        name = self._mappings.get(key)
        if name is not None:
            return name
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent uploads of one table send the commands once
            name = self._mappings.get(key)
            if name is not None:
                return name
            name = mapping_name(table, schema)
            for command in (create_table_command(table, schema), create_mapping_command(table, name, schema)):
                self._command(engine, db, command)
            log.info("ADX %s.%s: table merged and mapping %s created (%d columns)", db, table, name, len(schema))
            self._mappings[key] = name
        return name

    def _command(self, engine: KustoClient, db: str, command: str) -> None:
        props = ClientRequestProperties()  # type: ignore[no-untyped-call]
        props.set_option(ClientRequestProperties.request_timeout_option_name,
                         timedelta(seconds=self.config.command_timeout))
        try:
            engine.execute_mgmt(db, command, props)
        except (KustoError, requests.RequestException) as e:
            what = f"{db}: {command.split(' (', 1)[0].split(' ingestion ', 1)[0]} failed: {describe(e)}"
            if is_permanent(e):
                raise PermanentSinkError(what) from None
            raise SinkError(what) from None

    # -- helpers ----------------------------------------------------------------------------

    def _cluster(self, url: str) -> _Cluster:
        with self._lock:
            cluster = self._clusters.get(url)
        if cluster is None:
            raise SinkError("ADX sink is not started")
        return cluster

    def _ingest_url(self, db: str) -> str:
        explicit = self.config.ingest_endpoints.get(db)
        return explicit if explicit is not None else ingest_url(self.config.endpoints[db])

    def _kcsb(self, url: str) -> KustoConnectionStringBuilder:
        auth = self.config.auth
        kcsb: KustoConnectionStringBuilder
        if auth == "token":
            kcsb = KustoConnectionStringBuilder.with_token_provider(url, self._read_token)
        elif auth == "default":
            kcsb = KustoConnectionStringBuilder.with_azure_token_credential(url, self._credential)
        elif url.startswith("http://"):
            kcsb = KustoConnectionStringBuilder.with_no_authentication(url)
        else:
            kcsb = KustoConnectionStringBuilder(url)
        kcsb.application_for_tracing = APPLICATION
        return kcsb

    def _read_token(self) -> str:
        if self.config.token_file is not None:
            token = self.config.token_file.read_text().strip()
        else:
            token = os.environ.get(self.config.token_env, "").strip()
        if not token:
            source = self.config.token_file or f"${self.config.token_env}"
            raise ValueError(f"no ADX token in {source}")
        return token


def compress(chunks: Iterable[bytes], path: Path, level: int = 1) -> int:
    """Write `chunks` gzip-compressed to `path` as they come (memory: one chunk); return the bytes written."""
    z = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    written = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            out = z.compress(chunk)
            if out:
                written += f.write(out)
        written += f.write(z.flush())
    return written


