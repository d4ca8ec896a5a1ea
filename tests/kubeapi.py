"""A small Kubernetes API server written for the tests (no real one can run on these machines).

It serves, as JSON, what the node's shutdown watcher and the operator use with the real
`kubernetes` client: pods (get, list with a label selector, create, merge patch, delete), nodes,
StatefulSets with the `scale` subresource, the `Ingestor` custom resource with its `status`
subresource, `metrics.k8s.io` NodeMetrics, and events. Objects carry a resourceVersion; a write
that names a stale one gets 409 Conflict. Workloads and custom resources carry a generation, moved
by a change of anything but metadata and status. Patches are merge patches, and strategic merge
patches as far as `strategic_merge` goes. Once a CRD is stored (kubectl apply of
deploy/base/crd.yaml), the writes of its resources over HTTP are admitted as the API server
admits them (`tests/deploy/schema.py`: defaults, unknown fields, the schema; 422 Invalid);
`put` stores as it is told. Lists can be watched (`?watch=1`): JSON lines of
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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Resource:
    key: str
    """The store's name for the kind (its plural, unless two groups share one)."""
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Resource("namespaces", "", "v1", "namespaces", "Namespace", False, ("status",)),
    Resource("pods", "", "v1", "pods", "Pod", True, ("status",)),
    Resource("nodes", "", "v1", "nodes", "Node", False, ("status",)),
    Resource("events", "", "v1", "events", "Event", True),
    Resource("services", "", "v1", "services", "Service", True, ("status",)),
    Resource("serviceaccounts", "", "v1", "serviceaccounts", "ServiceAccount", True),
    Resource("secrets", "", "v1", "secrets", "Secret", True),
    Resource("configmaps", "", "v1", "configmaps", "ConfigMap", True),
    Resource("statefulsets", "apps", "v1", "statefulsets", "StatefulSet", True, ("status", "scale")),
    Resource("deployments", "apps", "v1", "deployments", "Deployment", True, ("status", "scale")),
    Resource("roles", "rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    Resource("rolebindings", "rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    Resource("clusterroles", "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Resource("clusterrolebindings", "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
             False),
    Resource("customresourcedefinitions", "apiextensions.k8s.io", "v1", "customresourcedefinitions",
             "CustomResourceDefinition", False, ("status",)),
    Resource("ingestors", "adx-mon.azure.com", "v1", "ingestors", "Ingestor", True, ("status",)),
    Resource("nodemetrics", "metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", False),
]
_BY_KEY = {r.key: r for r in RESOURCES}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_KINDS = {r.key: (r.api_version, r.kind) for r in RESOURCES}
_WITH_STATUS = {r.key for r in RESOURCES if "status" in r.subresources}
_GENERATIONS = {r.key for r in RESOURCES if "status" in r.subresources and r.group}
"""Kinds whose metadata.generation the server keeps (workloads and custom resources)."""
_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")


def route(path: str) -> tuple[Resource, str | None, str | None, str | None] | None:
    """(resource, namespace, name, subresource) of an API path, or None."""
    m = _PATH.match(path)
    if m is None:
        return None
    group, version = ("", "v1") if m["core"] else (m["group"], m["version"])
    res = _BY_PATH.get((group, version, m["plural"]))
    if res is None or (m["sub"] and m["sub"] not in res.subresources):
        return None
    return res, m["ns"], m["name"], m["sub"]


def discovery(path: str) -> dict[str, Any] | None:
    """The discovery documents kubectl and the clients read."""
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        groups: dict[str, list[str]] = {}
        for r in RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
    m = re.match(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))$", path)
    if m is None:
        return None
    group, version = ("", "v1") if m["core"] else (m["group"], m["version"])
    found = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not found:
        return None
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    resources = []
    for r in found:
        resources.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": verbs})
        for sub in r.subresources:
            resources.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                              "kind": "Scale" if sub == "scale" else r.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else "v1",
            "resources": resources}


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


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


def strategic_merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, as far as the tests use one: a merge patch in which lists of
    objects that all have a `name` (containers, env, volumes...) are merged element by element by
    name (an element of the patch changes the base's of its name, or is appended), and the `$`
    directives (`$setElementOrder/...`, `$retainKeys`, `$patch`) are dropped. Other lists are
    replaced, as with a merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        elif _named(v) and _named(out.get(k)):
            merged = [copy.deepcopy(i) for i in out[k]]
            for item in v:
                at = next((n for n, old in enumerate(merged) if old["name"] == item["name"]), None)
                if at is None:
                    merged.append(strategic_merge({}, item))
                else:
                    merged[at] = strategic_merge(merged[at], item)
            out[k] = merged
        else:
            out[k] = strategic_merge(out.get(k), v)
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
                                           else None, self.headers.get("Content-Type") or "")
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
        if kind in _GENERATIONS:  # moved by a change of anything but metadata and status
            before = int((old or {}).get("metadata", {}).get("generation") or 0)
            changed = old is None or {k: v for k, v in obj.items() if k not in ("metadata", "status")} != \
                {k: v for k, v in old.items() if k not in ("metadata", "status")}
            meta["generation"] = before + 1 if changed else before
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
        found = route(path)
        if found is None or found[2] is not None:
            yield {"type": "ERROR", "object": self._status(404, "NotFound", path)[1]}
            return
        kind, ns = found[0].key, found[1]
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

    def _admit(self, res: Resource, obj: dict[str, Any], params: dict[str, str]) -> tuple[dict[str, Any],
                                                                                          tuple[int, Any] | None]:
        """A custom resource as the API server admits it once its CRD is stored (called with the
        lock held): defaults, unknown fields pruned (refused under `fieldValidation=Strict`), and
        validated against the CRD's schema (`tests/deploy/schema.py`). (object, None) or (_, error)."""
        crd = self._objects.get(("customresourcedefinitions", "", f"{res.plural}.{res.group}"))
        if crd is None or not res.group or "." not in res.group:
            return obj, None
        from tests.deploy.schema import admit, version_schema

        try:
            schema = version_schema(crd, res.version)
        except ValueError:
            return obj, self._status(404, "NotFound", f"{res.plural}.{res.group} serves no version {res.version}")
        strict = params.get("fieldValidation") == "Strict"
        stored, problems = admit(schema, obj, strict=strict)
        name = f'{res.kind}.{res.group} "{obj.get("metadata", {}).get("name")}"'
        if problems and strict and all("unknown field" in p for p in problems):
            return obj, self._status(400, "BadRequest", f"{name}: strict decoding error: "
                                                        + ", ".join(p.split(": ", 1)[1] for p in problems))
        if problems:
            return obj, self._status(422, "Invalid", f"{name} is invalid: " + ", ".join(problems))
        return stored, None

    def handle(self, method: str, path: str, params: dict[str, str], body: Any,
               content_type: str = "") -> tuple[int, Any]:
        if method == "GET" and (doc := discovery(path)) is not None:
            return 200, doc
        found = route(path)
        if found is None:
            return self._status(404, "NotFound", f"the server could not find the requested resource {path}")
        res, namespace, name, sub = found
        kind, ns = res.key, (namespace or "") if res.namespaced else ""
        if method in ("PATCH", "PUT", "POST") and not isinstance(body, dict):
            return self._status(415, "UnsupportedMediaType", "only merge and strategic merge patches are served")
        with self._lock:
            if name is None:
                if method == "GET":
                    items = [copy.deepcopy(o) for (k, n, _), o in sorted(self._objects.items())
                             if k == kind and (not namespace or n == ns) and self._selected(o, params)]
                    api_version, k = _KINDS[kind]
                    return 200, {"apiVersion": api_version, "kind": f"{k}List", "items": items,
                                 "metadata": {"resourceVersion": str(next(self._rv))}}
                if method == "POST":
                    meta = body.setdefault("metadata", {})
                    if "name" not in meta:
                        meta["name"] = meta.get("generateName", "obj-") + uuid.uuid4().hex[:5]
                    if res.namespaced:
                        meta["namespace"] = ns
                    if (kind, ns, meta["name"]) in self._objects:
                        return self._status(409, "AlreadyExists", f"{kind} {meta['name']} already exists")
                    body, refused = self._admit(res, body, params)
                    if refused is not None:
                        return refused
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
                    patch = strategic_merge if "strategic-merge-patch" in content_type else merge
                    new = patch(obj, body) if method == "PATCH" else {**body, "status": obj.get("status")}
                    new.setdefault("metadata", {})["name"] = name
                    if res.namespaced:
                        new["metadata"]["namespace"] = ns
                    new["metadata"].pop("resourceVersion", None)
                new, refused = self._admit(res, new, params)
                if refused is not None:
                    return refused
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
