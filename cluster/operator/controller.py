"""`ingestor operator`: the autoscaler of `Ingestor` resources (adx-mon.azure.com/v1).

Every `--interval` the operator lists the `Ingestor` resources and reconciles each one: it reads
the StatefulSet of the same name and its pods, samples the CPU of the nodes that host them
(`metrics.k8s.io` NodeMetrics over the nodes' capacity), asks `cluster.operator.rules.decide` (the
pure rules of cluster.md) what to do, and then does it: the StatefulSet's `scale` subresource,
the `shutdown-requested` annotation on the pod to remove, the `status.autoscaler` of the resource,
and an event for every scale action. The CPU samples of the window are kept in memory; a restarted
operator starts a new window (it skips until it has one).

All I/O is here; every decision is in `cluster/operator/rules.py`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.annotations import SHUTDOWN_COMPLETED, SHUTDOWN_REQUESTED, parse_rfc3339, rfc3339
from cluster.operator import rules

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "adx-mon.azure.com", "v1", "ingestors"
_ORDINAL = re.compile(r".*-(\d+)$")
_CPU = re.compile(r"^([0-9.]+)([numkMG]?)$")
_CPU_UNITS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
WATCH_RETRY = 2.0
"""Seconds between a failed watch of the Ingestor resources and the next."""


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("250m", "2", "123456789n") in cores."""
    m = _CPU.match(str(quantity).strip())
    if m is None:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return float(m[1]) * _CPU_UNITS[m[2]]


@dataclass
class _Memory:
    samples: tuple[tuple[float, float], ...] = ()


@dataclass
class Operator:
    """Reconciles every `Ingestor` it can see (one namespace, or all)."""

    api: Any
    """A kubernetes ApiClient."""
    namespace: str | None = None
    clock: Callable[[], float] = time.time
    _memory: dict[tuple[str, str], _Memory] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    # -- reading ----------------------------------------------------------------------------

    def ingestors(self) -> list[dict[str, Any]]:
        if self.namespace:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        else:
            out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return list(out.get("items", []))

    def _statefulset(self, namespace: str, name: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _pods(self, namespace: str, sts: Any) -> list[Any]:
        labels = (sts.spec.selector.match_labels or {}) if sts.spec and sts.spec.selector else {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector or None).items
        return [p for p in pods if _ORDINAL.match(p.metadata.name) and p.metadata.name.startswith(sts.metadata.name)]

    def node_cpu_percent(self, node_names: set[str]) -> float | None:
        """Mean CPU utilisation (usage / capacity, %) of the named nodes; None when metrics are unavailable."""
        from kubernetes.client.exceptions import ApiException

        if not node_names:
            return None
        try:
            usage = self.custom.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
        except ApiException as e:
            log.warning("node metrics unavailable (metrics.k8s.io): %s %s", e.status, e.reason)
            return None
        by_node = {item["metadata"]["name"]: item.get("usage", {}).get("cpu") for item in usage.get("items", [])}
        percents = []
        for name in sorted(node_names):
            used = by_node.get(name)
            if used is None:
                log.warning("no metrics for node %s", name)
                return None
            node = self.core.read_node(name)
            capacity = (node.status.allocatable or {}).get("cpu") or (node.status.capacity or {}).get("cpu")
            if not capacity or cpu_cores(capacity) <= 0:
                return None
            percents.append(100.0 * cpu_cores(used) / cpu_cores(capacity))
        return sum(percents) / len(percents)

    # -- one reconcile ----------------------------------------------------------------------

    def reconcile(self, resource: dict[str, Any]) -> rules.Decision | None:
        """Decide for one Ingestor and apply the decision; None when its spec is invalid."""
        meta = resource["metadata"]
        namespace, name = meta.get("namespace") or self.namespace or "default", meta["name"]
        try:
            spec = rules.parse_spec(resource)
        except ValueError as e:
            self._status(namespace, name, {"lastAction": "Skip", "lastActionTime": rfc3339(self.clock()),
                                           "reason": f"invalid spec: {e}"})
            log.warning("ingestor %s/%s: invalid spec: %s", namespace, name, e)
            return None
        sts = self._statefulset(namespace, name)
        memory = self._memory.setdefault((namespace, name), _Memory())
        pods = self._pods(namespace, sts) if sts is not None else []
        cpu = None
        if sts is not None and spec.enabled and spec.collect_metrics:
            cpu = self.node_cpu_percent({p.spec.node_name for p in pods if p.spec and p.spec.node_name})
        status = (resource.get("status") or {}).get("autoscaler") or {}
        observed = rules.Observed(
            now=self.clock(),
            spec_replicas=int((resource.get("spec") or {}).get("replicas", 1)),
            statefulset=None if sts is None else rules.StatefulSetState(
                spec_replicas=int(sts.spec.replicas or 0), status_replicas=int(sts.status.replicas or 0),
                ready_replicas=int(sts.status.ready_replicas or 0)),
            cpu_percent=cpu,
            samples=memory.samples,
            last_scale_time=parse_rfc3339(status.get("lastScaleTime")),
            pods=tuple(rules.PodState(
                name=p.metadata.name, ordinal=int(_ORDINAL.match(p.metadata.name)[1]),  # type: ignore[index]
                shutdown_requested=parse_rfc3339((p.metadata.annotations or {}).get(SHUTDOWN_REQUESTED)),
                shutdown_completed=parse_rfc3339((p.metadata.annotations or {}).get(SHUTDOWN_COMPLETED)))
                for p in pods),
        )
        decision = rules.decide(spec, observed)
        memory.samples = decision.samples
        self._apply(namespace, name, decision)
        return decision

    def _apply(self, namespace: str, name: str, d: rules.Decision) -> None:
        if d.annotate_shutdown is not None:
            body = {"metadata": {"annotations": {SHUTDOWN_REQUESTED: rfc3339(self.clock())}}}
            self.core.patch_namespaced_pod(d.annotate_shutdown, namespace, body)
            log.info("ingestor %s/%s: asked pod %s to drain (%s)", namespace, name, d.annotate_shutdown, d.reason)
        if d.set_replicas is not None:
            self.apps.patch_namespaced_stateful_set_scale(name, namespace, {"spec": {"replicas": d.set_replicas}})
            log.info("ingestor %s/%s: replicas -> %d (%s)", namespace, name, d.set_replicas, d.reason)
        if d.status is not None:
            self._status(namespace, name, dict(d.status))
        if d.event is not None:
            self._event(namespace, name, *d.event)

    def _status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                          {"status": {"autoscaler": status}})

    def _event(self, namespace: str, name: str, reason: str, message: str) -> None:
        from kubernetes import client

        now = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}-", namespace=namespace),
            involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind="Ingestor", name=name,
                                                     namespace=namespace),
            reason=reason, message=message, type="Normal", count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="ingestor-operator"))
        try:
            self.core.create_namespaced_event(namespace, event)
        except Exception as e:  # an event is a courtesy: never fail the reconcile for it
            log.warning("cannot record event %s for %s/%s: %s", reason, namespace, name, e)

    def reconcile_all(self) -> int:
        n = 0
        for resource in self.ingestors():
            try:
                self.reconcile(resource)
                n += 1
            except Exception:
                meta = resource.get("metadata", {})
                log.exception("reconcile of ingestor %s/%s failed", meta.get("namespace"), meta.get("name"))
        return n

    def watch_ingestors(self, changed: Callable[[], None], stopping: threading.Event, seconds: int = 5) -> None:
        """Call `changed()` whenever an Ingestor is added or its spec changes, until `stopping`
        (blocking: run it in a thread). Status writes (ours) do not count."""
        from kubernetes import watch

        generations: dict[tuple[str, str], int] = {}
        trouble = WatchTrouble()
        while not stopping.is_set():
            try:
                args: tuple[str, ...]
                if self.namespace:
                    func, args = self.custom.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, PLURAL)
                else:
                    func, args = self.custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
                for event in watch.Watch().stream(func, *args, timeout_seconds=seconds,
                                                  _request_timeout=seconds + 5):
                    obj = event.get("object") or {}
                    meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
                    key = (meta.get("namespace", ""), meta.get("name", ""))
                    generation = hash(repr(obj.get("spec"))) if isinstance(obj, dict) else 0
                    if event.get("type") == "DELETED":
                        generations.pop(key, None)
                    elif generations.get(key) != generation:
                        generations[key] = generation
                        changed()
                    if stopping.is_set():
                        break
                trouble.ended()
            except Exception as e:
                trouble.failed(e)
                stopping.wait(WATCH_RETRY)


class WatchTrouble:
    """What goes wrong with the watch, said once: a WARNING the first time each kind of error
    (an API status, or an exception's type) is met since the watch last worked, with its
    traceback when it is not an error of the API or the network; an INFO when it works again.
    The reconciles go on every --interval meanwhile."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def failed(self, e: Exception) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kind = f"{e.status} {e.reason}" if isinstance(e, ApiException) else type(e).__name__
        if kind in self._said:
            log.debug("watch of Ingestor resources failed again: %s", e)
            return
        self._said.add(kind)
        if isinstance(e, ApiException):
            log.warning("watch of Ingestor resources refused (retrying every %.0fs; reconciles go on every "
                        "--interval): %s %s", WATCH_RETRY, e.status, e.reason)
        elif isinstance(e, HTTPError | OSError):
            log.warning("watch of Ingestor resources failed (retrying every %.0fs; reconciles go on every "
                        "--interval): %s", WATCH_RETRY, e)
        else:
            log.warning("watch of Ingestor resources failed unexpectedly (retrying every %.0fs; reconciles go on "
                        "every --interval)", WATCH_RETRY, exc_info=e)

    def ended(self) -> None:
        """A watch ran to its end (its timeout): whatever failed before works now."""
        if self._said:
            log.info("watch of Ingestor resources works again")
            self._said.clear()


async def run(operator: Operator, interval: float, stop: asyncio.Event) -> None:
    """Reconcile every `interval` seconds, and at once when an Ingestor's spec changes."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stopping = threading.Event()
    watcher = threading.Thread(target=operator.watch_ingestors, args=(lambda: loop.call_soon_threadsafe(wake.set),
                                                                      stopping), name="ingestor-watch", daemon=True)
    watcher.start()
    failing = False
    try:
        while not stop.is_set():
            wake.clear()
            try:
                await asyncio.to_thread(operator.reconcile_all)
                failing = False
            except Exception as e:
                if not failing:
                    log.warning("cannot list Ingestor resources (retrying every %.0fs): %s", interval, e)
                failing = True
            stopped = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(wake.wait())
            await asyncio.wait({stopped, woken}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for f in (stopped, woken):
                f.cancel()
    finally:
        stopping.set()
        await asyncio.to_thread(watcher.join, 10)
