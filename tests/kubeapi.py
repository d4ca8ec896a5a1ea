"""A small Kubernetes API server written for the tests (no real one can run on these machines).

It serves, as JSON, what the node's shutdown watcher and the operator use with the real
`kubernetes` client: pods (get, list with a label selector, create, merge patch, delete), nodes,
StatefulSets with the `scale` subresource, the `Ingestor` custom resource with its `status`
subresource, `metrics.k8s.io` NodeMetrics, and events. Objects carry a resourceVersion; a write
that names a stale one gets 409 Conflict. Lists can be watched (`?watch=1`): JSON lines of
ADDED / MODIFIED / DELETED events from a resourceVersion, until `timeoutSeconds`; a version older
than the kept history (`history` events) gets an ERROR event with a 410 Status, as a real server
does. Not served: field selectors, other kinds.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_ROUTES = [
    # (pattern, kind key, subresource)
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$"), "pods", None),
    (re.compile(r"^/api/v1/pods$"), "pods", None),
    (re.compile(r"^/api/v1/nodes(?:/(?P<name>[^/]+))?$"), "nodes", None),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$"), "events", None),
    (re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/statefulsets/(?P<name>[^/]+)/scale$"), "statefulsets",
     "scale"),
    (re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/statefulsets(?:/(?P<name>[^/]+))?$"), "statefulsets", None),
    (re.compile(r"^/apis/adx-mon\.azure\.com/v1/namespaces/(?P<ns>[^/]+)/ingestors/(?P<name>[^/]+)/status$"),
     "ingestors", "status"),
    (re.compile(r"^/apis/adx-mon\.azure\.com/v1/namespaces/(?P<ns>[^/]+)/ingestors(?:/(?P<name>[^/]+))?$"),
     "ingestors", None),
    (re.compile(r"^/apis/adx-mon\.azure\.com/v1/ingestors$"), "ingestors", None),
    (re.compile(r"^/apis/metrics\.k8s\.io/v1beta1/nodes(?:/(?P<name>[^/]+))?$"), "nodemetrics", None),
]
_KINDS = {"pods": ("v1", "Pod"), "nodes": ("v1", "Node"), "events": ("v1", "Event"),
          "statefulsets": ("apps/v1", "StatefulSet"), "ingestors": ("adx-mon.azure.com/v1", "Ingestor"),
          "nodemetrics": ("metrics.k8s.io/v1beta1", "NodeMetrics")}
_WITH_STATUS = {"pods", "statefulsets", "ingestors", "nodes"}


def merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class FakeKubeApi:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name)
        self._rv = itertools.count(1)
        self._changed = threading.Condition(self._lock)
        self._events: list[tuple[int, str, str, str, dict[str, Any]]] = []  # (rv, kind, namespace, type, object)
        self.history = 1000
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _handle(self, method: str) -> None:
                path, _, query = self.path.partition("?")
                server.requests.append((method, path))
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                if method == "GET" and params.get("watch") in ("1", "true"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    for event in server.watch(path, params):
                        self.wfile.write(json.dumps(event).encode() + b"\n")
                        self.wfile.flush()
                    return
                code, body = server.handle(method, path, params, self._body() if method in ("POST", "PATCH", "PUT")
                                           else None)
                self._send(code, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    _stopping = False

    def start(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        }))
        return path

    # -- the store --------------------------------------------------------------------------

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object directly (the test plays the controllers)."""
        with self._lock:
            return self._store(kind, copy.deepcopy(obj))

    def _store(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        api_version, k = _KINDS[kind]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", k)
        key = (kind, meta.get("namespace", ""), meta["name"])
        old = self._objects.get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-24T00:00:00Z")
        rv = next(self._rv)
        meta["resourceVersion"] = str(rv)
        self._objects[key] = obj
        self._record(rv, kind, key[1], "MODIFIED" if old else "ADDED", obj)
        return copy.deepcopy(obj)

    def _record(self, rv: int, kind: str, namespace: str, type_: str, obj: dict[str, Any]) -> None:
        """Called with the lock held."""
        self._events.append((rv, kind, namespace, type_, copy.deepcopy(obj)))
        del self._events[: -self.history]
        self._changed.notify_all()

    def _remove(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        """Called with the lock held."""
        obj = self._objects.pop(key, None)
        if obj is not None:
            rv = next(self._rv)
            obj["metadata"]["resourceVersion"] = str(rv)
            self._record(rv, key[0], key[1], "DELETED", obj)
        return obj

    def watch(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The events of a list path after `resourceVersion`, until `timeoutSeconds` or stop."""
        route = next(((m, kind) for pattern, kind, sub in _ROUTES if sub is None and (m := pattern.match(path))),
                      None)
        if route is None:
            yield {"type": "ERROR", "object": self._status(404, "NotFound", path)[1]}
            return
        m, kind = route
        ns = m.groupdict().get("ns")
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or 30)
        with self._lock:
            since = int(params.get("resourceVersion") or 0) or next(self._rv)
            if self._events and since < self._events[0][0] - 1:
                yield {"type": "ERROR", "object": self._status(410, "Expired", f"too old resource version: {since}")[1]}
                return
        while not self._stopping and time.monotonic() < deadline:
            with self._changed:
                lost = bool(self._events) and self._events[0][0] > since + 1  # fell behind the history
                batch = [] if lost else [e for e in self._events if e[0] > since]
                if not lost and not batch:
                    self._changed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    continue
            if lost:
                yield {"type": "ERROR", "object": self._status(410, "Expired", f"too old resource version: {since}")[1]}
                return
            for rv, k, namespace, type_, obj in batch:
                since = rv
                if k == kind and (ns is None or namespace == ns) and self._selected(obj, params):
                    yield {"type": type_, "object": obj}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._store(kind, merge(self._objects[(kind, namespace, name)], patch))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._remove((kind, namespace, name))

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (k, ns, _), o in sorted(self._objects.items())
                    if k == kind and (namespace is None or ns == namespace)]

    # -- HTTP -------------------------------------------------------------------------------

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                      "message": message, "code": code}

    def handle(self, method: str, path: str, params: dict[str, str], body: Any) -> tuple[int, Any]:
        route = next(((m, kind, sub) for pattern, kind, sub in _ROUTES if (m := pattern.match(path))), None)
        if route is None:
            return self._status(404, "NotFound", f"the server could not find the requested resource {path}")
        m, kind, sub = route
        groups = m.groupdict()
        ns, name = groups.get("ns") or "", groups.get("name")
        if kind in ("nodes", "nodemetrics"):
            ns = ""
        with self._lock:
            if name is None:
                if method == "GET":
                    items = [copy.deepcopy(o) for (k, n, _), o in sorted(self._objects.items())
                             if k == kind and (not groups.get("ns") or n == ns) and self._selected(o, params)]
                    api_version, k = _KINDS[kind]
                    return 200, {"apiVersion": api_version, "kind": f"{k}List", "items": items,
                                 "metadata": {"resourceVersion": str(next(self._rv))}}
                if method == "POST":
                    meta = body.setdefault("metadata", {})
                    if "name" not in meta:
                        meta["name"] = meta.get("generateName", "obj-") + uuid.uuid4().hex[:5]
                    meta["namespace"] = ns
                    if (kind, ns, meta["name"]) in self._objects:
                        return self._status(409, "AlreadyExists", f"{kind} {meta['name']} already exists")
                    return 201, self._store(kind, body)
                return self._status(405, "MethodNotAllowed", method)
            key = (kind, ns, name)
            obj = self._objects.get(key)
            if obj is None:
                return self._status(404, "NotFound", f'{kind} "{name}" not found')
            if method == "GET":
                return 200, self._view(obj, sub)
            if method == "DELETE":
                return 200, self._remove(key)
            if method in ("PATCH", "PUT"):
                given_rv = (body.get("metadata") or {}).get("resourceVersion")
                if given_rv and given_rv != obj["metadata"]["resourceVersion"]:
                    return self._status(409, "Conflict", "the object has been modified; please apply your changes "
                                                         "to the latest version and try again")
                if sub == "scale":
                    replicas = (body.get("spec") or {}).get("replicas")
                    new = merge(obj, {"spec": {"replicas": replicas}})
                elif sub == "status":
                    new = merge(obj, {"status": body.get("status")}) if method == "PATCH" else \
                        {**obj, "status": body.get("status")}
                else:
                    body = {k: v for k, v in body.items() if not (k == "status" and kind in _WITH_STATUS)}
                    new = merge(obj, body) if method == "PATCH" else {**body, "status": obj.get("status")}
                    new.setdefault("metadata", {})["name"] = name
                    new["metadata"]["namespace"] = ns
                    new["metadata"].pop("resourceVersion", None)
                stored = self._store(kind, new)
                return 200, self._view(stored, sub)
            return self._status(405, "MethodNotAllowed", method)

    @staticmethod
    def _view(obj: dict[str, Any], sub: str | None) -> dict[str, Any]:
        if sub != "scale":
            return copy.deepcopy(obj)
        meta = obj["metadata"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                             "resourceVersion": meta["resourceVersion"]},
                "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
                "status": {"replicas": obj.get("status", {}).get("replicas", 0)}}

    @staticmethod
    def _selected(obj: dict[str, Any], params: dict[str, str]) -> bool:
        from urllib.parse import unquote

        selector = unquote(params.get("labelSelector", ""))
        labels = obj.get("metadata", {}).get("labels") or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True
