"""A stand-in for an ADX cluster: the Kusto REST management endpoint and the ingestion service behind the queue.

`FakeKusto` answers `POST /v1/rest/mgmt` in the v1 JSON response format, the way azure-kusto-data parses it:

    {"Tables": [{"TableName": "Table_0", "Columns": [{"ColumnName": ..., "DataType": ..., "ColumnType": ...}],
                 "Rows": [[...], ...]}]}

It serves what the real clients send: `.get ingestion resources` (Azurite container and queue URLs with SAS
tokens), `.get kusto identity token`, `.create-merge table` and `.create-or-alter ... ingestion csv mapping`;
every request is recorded (`commands`, with its Authorization header), anything else is answered 400 and listed
in `unexpected`. Failures are injected per command prefix (`fail`).

`FakeKusto.ingest()` then plays the ingestion service: it takes the messages off the ingestion queue, downloads
each blob through the SAS URL in the message, and gunzips it.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from azure.storage.blob import BlobClient, BlobServiceClient, ContainerSasPermissions, generate_container_sas
from azure.storage.queue import QueueSasPermissions, QueueServiceClient, generate_queue_sas

from tests.sinks_adx.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

AUTH_CONTEXT = "fake-authorization-context"
_TABLE_RE = re.compile(r"\.create-merge table \['(\w+)'\] \((.*)\)$", re.S)
_MAPPING_RE = re.compile(r"\.create-or-alter table \['(\w+)'\] ingestion csv mapping \"(\w+)\" '(.*)'$", re.S)
_COLUMN_RE = re.compile(r"\['(\w+)'\]:(\w+)")


@dataclass
class Command:
    """One management request as the fake received it."""

    database: str
    text: str
    authorization: str | None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    status: int
    code: str
    permanent: bool
    times: int | None
    """How many more requests to fail; None: all."""


@dataclass
class Ingestion:
    """A queued ingestion, as the ingestion service would see it."""

    message: dict[str, Any]
    data: bytes
    """The blob, gunzipped."""

    @property
    def additional(self) -> dict[str, Any]:
        props: dict[str, Any] = self.message["AdditionalProperties"]
        return props


def table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any]:
    cols = [{"ColumnName": name, "DataType": typ.capitalize(), "ColumnType": typ} for name, typ in columns]
    return {"Tables": [{"TableName": "Table_0", "Columns": cols, "Rows": rows}]}


class FakeKusto:
    """A fake cluster whose temporary storage and queues live in `storage` (Azurite)."""

    def __init__(self, storage: Azurite, name: str) -> None:
        self.storage = storage
        self.container = f"{name}-tmp"
        self.queue = f"{name}-ready"
        self.failed_queue = f"{name}-failed"
        self.commands: list[Command] = []
        self.unexpected: list[str] = []
        self.failures: dict[str, Failure] = {}
        self.tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
        """(database, table) -> columns, as `.create-merge` left them."""
        self.mappings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        """(database, table, mapping name) -> the mapping's JSON."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        blobs = BlobServiceClient.from_connection_string(storage.connection_string)
        blobs.create_container(self.container)
        queues = QueueServiceClient.from_connection_string(storage.connection_string)
        for q in (self.queue, self.failed_queue):
            queues.create_queue(q)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/rest/mgmt":
                    fake._unexpected(f"POST {self.path}")
                    self._reply(404, {"error": {"code": "NotFound", "message": self.path}})
                    return
                payload = json.loads(body)
                status, answer = fake.handle(Command(payload.get("db", ""), payload["csl"],
                                                     self.headers.get("Authorization"),
                                                     json.loads(payload.get("properties") or "{}")))
                self._reply(status, answer)

            def do_GET(self) -> None:
                fake._unexpected(f"GET {self.path}")
                self._reply(404, {"error": {"code": "NotFound", "message": self.path}})

            def _reply(self, status: int, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.02), name="fake-kusto",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- requests ---------------------------------------------------------------------------

    def fail(self, prefix: str, status: int, code: str, permanent: bool = False, times: int | None = None) -> None:
        """Answer commands that start with `prefix` with an error (`times` times, or until `clear`)."""
        with self._lock:
            self.failures[prefix] = Failure(status, code, permanent, times)

    def clear(self) -> None:
        with self._lock:
            self.failures.clear()

    def sent(self, prefix: str) -> list[Command]:
        """The commands received that start with `prefix`."""
        with self._lock:
            return [c for c in self.commands if c.text.startswith(prefix)]

    def _unexpected(self, what: str) -> None:
        with self._lock:
            self.unexpected.append(what)

    def handle(self, cmd: Command) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.commands.append(cmd)
            for prefix, failure in self.failures.items():
                if cmd.text.startswith(prefix) and failure.times != 0:
                    if failure.times is not None:
                        failure.times -= 1
                    return failure.status, {"error": {
                        "code": failure.code, "message": "Request is invalid and cannot be executed.",
                        "@type": "Kusto.Data.Exceptions.KustoBadRequestException",
                        "@message": "injected by the test", "@permanent": failure.permanent}}
        text = cmd.text
        if text == ".get ingestion resources":
            return 200, self._resources()
        if text == ".get kusto identity token":
            return 200, table([("AuthorizationContext", "string")], [[AUTH_CONTEXT]])
        m = _TABLE_RE.match(text)
        if m:
            columns = _COLUMN_RE.findall(m[2])
            with self._lock:
                merged = self.tables.setdefault((cmd.database, m[1]), [])
                for name, typ in columns:
                    existing = dict(merged).get(name)
                    if existing is None:
                        merged.append((name, typ))
                    elif existing != typ:
                        return 400, {"error": {"code": "BadRequest_InvalidColumnType", "message": "bad",
                                               "@message": f"column {name} is {existing}", "@permanent": True}}
            schema = ", ".join(f"{n}:{t}" for n, t in merged)
            return 200, table([("TableName", "string"), ("Schema", "string"), ("DatabaseName", "string"),
                               ("Folder", "string"), ("DocString", "string")], [[m[1], schema, cmd.database, "", ""]])
        m = _MAPPING_RE.match(text)
        if m:
            mapping = json.loads(m[3])
            with self._lock:
                self.mappings[(cmd.database, m[1], m[2])] = mapping
            now = dt.datetime.now(dt.UTC).isoformat()
            return 200, table([("Name", "string"), ("Kind", "string"), ("Mapping", "string"),
                               ("LastUpdatedOn", "datetime"), ("Database", "string"), ("Table", "string")],
                              [[m[2], "Csv", m[3], now, cmd.database, m[1]]])
        self._unexpected(text)
        return 400, {"error": {"code": "BadRequest_SyntaxError", "message": "unknown command",
                               "@message": f"the fake does not know {text[:80]!r}", "@permanent": True}}

    def _resources(self) -> dict[str, Any]:
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        container_sas = generate_container_sas(ACCOUNT, self.container, account_key=ACCOUNT_KEY, expiry=expiry,
                                               permission=ContainerSasPermissions(read=True, write=True, add=True,
                                                                                  create=True))
        rows = [["TempStorage", f"{self.storage.blob_endpoint}/{self.container}?{container_sas}"]]
        for kind, q in (("SecuredReadyForAggregationQueue", self.queue), ("FailedIngestionsQueue", self.failed_queue),
                        ("SuccessfulIngestionsQueue", self.failed_queue)):
            sas = generate_queue_sas(ACCOUNT, q, account_key=ACCOUNT_KEY, expiry=expiry,
                                     permission=QueueSasPermissions(add=True, read=True, process=True))
            rows.append([kind, f"{self.storage.queue_endpoint}/{q}?{sas}"])
        # Never used by queued ingestion without status reporting, but the client wants one to be listed.
        rows.append(["IngestionsStatusTable", f"http://127.0.0.1:9/{ACCOUNT}/ingestionsstatus?sv=x"])
        return table([("ResourceTypeName", "string"), ("StorageRoot", "string")], rows)

    # -- the ingestion service --------------------------------------------------------------

    def ingest(self) -> list[Ingestion]:
        """Take every message off the ingestion queue; download and gunzip the blob of each."""
        client = QueueServiceClient.from_connection_string(self.storage.connection_string).get_queue_client(self.queue)
        out: list[Ingestion] = []
        while True:
            batch = list(client.receive_messages(max_messages=32))
            if not batch:
                return out
            for msg in batch:
                message = json.loads(base64.b64decode(msg.content))
                blob = BlobClient.from_blob_url(message["BlobPath"]).download_blob().readall()
                out.append(Ingestion(message, gzip.decompress(blob)))
                client.delete_message(msg)
