"""Peers from the Kubernetes API: a watch of the StatefulSet's pods, Ready ones only.

The source reads the StatefulSet once for its selector, lists the pods it selects, then watches
them from the list's resourceVersion. A pod is a peer while it is Ready, has an IP, is not being
deleted, and is named `<statefulset>-<ordinal>`; its address is `podIP:port`. The watch is
restarted from a new list when it expires (410 Gone), every `resync` seconds anyway, and after
any error, with a capped backoff; meanwhile `peers()` keeps answering with the last view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.addr import format_hostport
from cluster.backoff import Backoff
from cluster.kube import api_client as make_api_client
from cluster.kube import current_namespace
from cluster.membership import Peer

log = logging.getLogger(__name__)

WATCH_SECONDS = 2
"""Each watch call ends after this long (so that `stop()` is prompt), then resumes."""
RETRY_INITIAL = 0.5
RETRY_MAX = 10.0
"""Seconds between two tries after an error: doubling from RETRY_INITIAL to RETRY_MAX (without jitter,
as it always was)."""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return obj


def peer_of(pod: Mapping[str, Any], statefulset: str, port: int) -> Peer | None:
    """The peer a pod (as the API's JSON) stands for, or None when it is not one now."""
    name = _get(pod, "metadata", "name") or ""
    if not re.fullmatch(re.escape(statefulset) + r"-\d+", name) or _get(pod, "metadata", "deletionTimestamp"):
        return None
    ip = _get(pod, "status", "podIP")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (_get(pod, "status", "conditions") or []))
    if not ip or not ready:
        return None
    return Peer(name, format_hostport(ip, port))


class KubernetesMembership:
    def __init__(self, statefulset: str, port: int, namespace: str | None = None, kubeconfig: Path | None = None,
                 *, api_client: Any = None, resync: float = 300.0) -> None:
        self.statefulset = statefulset
        self.port = port
        self.namespace = namespace or current_namespace(kubeconfig)
        self._kubeconfig = kubeconfig
        self._api = api_client
        self._own_api = api_client is None
        self.resync = resync
        self._pods: dict[str, Mapping[str, Any]] = {}
        self._peers: tuple[Peer, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()
        """Set once the first list succeeded."""

    def peers(self) -> tuple[Peer, ...]:
        return self._peers

    async def start(self) -> None:
        if self._api is None:
            self._api = await asyncio.to_thread(make_api_client, self._kubeconfig)
        self._thread = threading.Thread(target=self._run, name="peers-k8s", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self.synced.wait, 5.0)  # a first view, if the API answers soon

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, WATCH_SECONDS + 5)
        if self._own_api and self._api is not None:
            self._api.close()

    # -- the watch thread -------------------------------------------------------------------

    def _publish(self) -> None:
        view = tuple(sorted(p for pod in self._pods.values() if (p := peer_of(pod, self.statefulset, self.port))))
        if view != self._peers:
            log.info("peers from the Kubernetes API (%s/%s): %s", self.namespace, self.statefulset,
                     ", ".join(p.name for p in view) or "none")
            self._peers = view

    def _selector(self, apps: Any) -> str:
        sts = apps.read_namespaced_stateful_set(self.statefulset, self.namespace, _request_timeout=10)
        labels = _get(sts, "spec", "selector", "match_labels") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core: Any = client.CoreV1Api(self._api)
        apps: Any = client.AppsV1Api(self._api)
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX, jitter=0.0)  # attempt > 0: failing
        while not self._stop.is_set():
            try:
                selector = self._selector(apps)
                listed = core.list_namespaced_pod(self.namespace, label_selector=selector or None,
                                                  _request_timeout=10, _preload_content=False)
                doc = json.loads(listed.data)
                self._pods = {p["metadata"]["name"]: p for p in doc.get("items", [])}
                version = doc.get("metadata", {}).get("resourceVersion")
                self._publish()
                self.synced.set()
                if backoff.attempt:
                    log.info("Kubernetes API reachable again; peers resynced")
                backoff.reset()
                until = time.monotonic() + self.resync
                while not self._stop.is_set() and time.monotonic() < until:
                    w = watch.Watch()
                    for event in w.stream(core.list_namespaced_pod, self.namespace, label_selector=selector or None,
                                          resource_version=version, timeout_seconds=WATCH_SECONDS,
                                          _request_timeout=WATCH_SECONDS + 5, deserialize=False):
                        if isinstance(event, str | bytes):
                            event = json.loads(event)
                        kind = event.get("type")
                        raw = event.get("raw_object") or event.get("object") or {}
                        if kind == "ERROR":
                            raise ApiException(status=int(raw.get("code", 500)), reason=raw.get("reason", "watch"))
                        name = _get(raw, "metadata", "name")
                        version = _get(raw, "metadata", "resourceVersion") or version
                        if not name:
                            continue
                        if kind == "DELETED":
                            self._pods.pop(name, None)
                        else:
                            self._pods[name] = raw
                        self._publish()
                        if self._stop.is_set():
                            w.stop()
                            break
            except Exception as e:
                if isinstance(e, ApiException) and e.status == 410:
                    log.info("pod watch expired (410): listing again")
                    continue
                if not backoff.attempt:
                    log.warning("Kubernetes API: %s; keeping the last %d peers, retrying", e, len(self._peers))
                with contextlib.suppress(Exception):
                    self._stop.wait(backoff.next())
