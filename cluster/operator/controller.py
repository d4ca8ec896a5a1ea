"""`ingestor operator`: the autoscaler of `Ingestor` resources (adx-mon.azure.com/v1).

Every `--interval` the operator lists the `Ingestor` resources and reconciles each one:

1. `spec.criteriaExpression` (adx-mon's) against the operator's `--cluster-labels`: false, or not
   an expression it can evaluate, and the resource is left alone but for its owner condition;
2. `spec.image`, when set, onto the StatefulSet's ingestor container;
3. the autoscaler: it reads the StatefulSet of the same name (`_target`) and its pods, samples
   the CPU of the nodes that host them (`metrics.k8s.io` NodeMetrics over the nodes' capacity),
   asks `cluster.operator.rules.decide` (the pure rules of cluster.md) what to do, and then does
   it: the StatefulSet's `scale` subresource, the `shutdown-requested` annotation on the pod to
   remove, and an event for every scale action;
4. the status, in one patch: `status.autoscaler`, and `status.conditions` in adx-mon's shape
   (`cluster/operator/adxmon.py`): the owner condition `ingestor.adx-mon.azure.com`, and
   `SpecFieldsApplied`, which names the spec fields kept and not acted on.

The CPU samples of the window are kept in memory; a restarted operator starts a new window (it
skips until it has one). All I/O is here; every decision is in `rules.py`, `criteria.py` and
`adxmon.py`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.annotations import SHUTDOWN_COMPLETED, SHUTDOWN_REQUESTED, parse_rfc3339, rfc3339
from cluster.operator import adxmon, criteria, rules

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "adx-mon.azure.com", "v1", "ingestors"
_ORDINAL = re.compile(r".*-(\d+)$")
_CPU = re.compile(r"^([0-9.]+)([numkMG]?)$")
_CPU_UNITS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
WATCH_RETRY = 2.0
"""Seconds between a failed watch of the Ingestor resources and the next."""
FALLBACK = "ingestor"
"""The StatefulSet of an Ingestor with no StatefulSet of its own name, when it is the only
Ingestor of its namespace: the name adx-mon's operator gives its StatefulSet (and deploy/ ours)."""


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
    cluster_labels: Mapping[str, str] = field(default_factory=dict)
    """The labels `spec.criteriaExpression` is evaluated against (`--cluster-labels`)."""
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

    def reconcile(self, resource: dict[str, Any],
                  siblings: list[dict[str, Any]] | None = None) -> rules.Decision | None:
        """Decide for one Ingestor and apply the decision; None when the operator does not handle it
        (its criteriaExpression) or its spec is invalid. `siblings`: every Ingestor listed with it
        (listed again when needed and not given)."""
        meta = resource["metadata"]
        namespace, name = meta.get("namespace") or self.namespace or "default", meta["name"]
        spec = resource.get("spec") or {}
        old = list((resource.get("status") or {}).get("conditions") or [])
        report = _Report(old, rfc3339(self.clock()), meta.get("generation"))
        expression = spec.get("criteriaExpression") or ""
        try:
            handled = criteria.evaluate(expression, self.cluster_labels)
        except criteria.CriteriaError as e:
            report.set(adxmon.OWNER, "False", e.reason, f"criteriaExpression {expression!r}: {e}")
            self._done(namespace, name, report, None)
            return None
        if not handled:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(self.cluster_labels.items())) or "none"
            report.set(adxmon.OWNER, "False", "CriteriaExpressionFalse",
                       f"criteriaExpression {expression!r} is false for this operator's cluster labels ({labels}): "
                       f"skipping")
            self._done(namespace, name, report, None)
            return None
        notes = adxmon.field_notes(spec)
        try:
            spec_ = rules.parse_spec(resource)
        except ValueError as e:
            report.fields(notes)
            report.set(adxmon.OWNER, "False", "InvalidSpec", f"invalid spec: {e}")
            self._done(namespace, name, report, {"lastAction": "Skip", "lastActionTime": report.now,
                                                 "reason": f"invalid spec: {e}"})
            return None
        target, sts = self._target(namespace, name, siblings)
        if spec.get("image"):
            notes += self._image(namespace, name, sts, str(spec["image"]))
        report.fields(notes)
        memory = self._memory.setdefault((namespace, name), _Memory())
        pods = self._pods(namespace, sts) if sts is not None else []
        cpu = None
        if sts is not None and spec_.enabled and spec_.collect_metrics:
            cpu = self.node_cpu_percent({p.spec.node_name for p in pods if p.spec and p.spec.node_name})
        status = (resource.get("status") or {}).get("autoscaler") or {}
        observed = rules.Observed(
            now=self.clock(),
            spec_replicas=None if spec.get("replicas") is None else int(spec["replicas"]),
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
        decision = rules.decide(spec_, observed)
        memory.samples = decision.samples
        self._apply(namespace, name, target, decision)
        if sts is None:
            report.set(adxmon.OWNER, "False", "StatefulSetNotFound", target)
        else:
            want = decision.set_replicas if decision.set_replicas is not None else int(sts.spec.replicas or 0)
            ready = int(sts.status.ready_replicas or 0)
            if ready == want:
                report.set(adxmon.OWNER, "True", "Ready", f"all {want} replicas of StatefulSet {target} are ready")
            else:
                report.set(adxmon.OWNER, "Unknown", "WaitForReady",
                           f"{ready} of {want} replicas of StatefulSet {target} are ready")
        self._done(namespace, name, report, None if decision.status is None else dict(decision.status))
        return decision

    def _target(self, namespace: str, name: str, siblings: list[dict[str, Any]] | None) -> tuple[str, Any | None]:
        """(the StatefulSet's name, the StatefulSet) of an Ingestor: the one of the same name, or,
        for the only Ingestor of its namespace, the StatefulSet `ingestor` (the name adx-mon's
        operator gives its StatefulSet, whatever the Ingestor's name). Without one: (why, None)."""
        sts = self._statefulset(namespace, name)
        if sts is not None:
            return name, sts
        why = f"no StatefulSet {name} in namespace {namespace}"
        if name != FALLBACK:
            if siblings is None:
                siblings = self.ingestors()
            others = sorted(o["metadata"]["name"] for o in siblings
                            if (o["metadata"].get("namespace") or namespace) == namespace
                            and o["metadata"]["name"] != name)
            if not others:
                sts = self._statefulset(namespace, FALLBACK)
                if sts is not None:
                    return FALLBACK, sts
                why += f" (nor {FALLBACK})"
            else:
                why += (f"; StatefulSet {FALLBACK} is not taken for it, as other Ingestors share the namespace "
                        f"({', '.join(others)})")
        return why + ": this operator does not create it: apply deploy/ in this namespace (docs/kubernetes.md)", None

    def _image(self, namespace: str, name: str, sts: Any | None, image: str) -> list[str]:
        """Put `spec.image` on the StatefulSet's ingestor container (a rolling update); the notes of
        what could not be done."""
        problem = adxmon.image_problem(image)
        if problem is not None:
            return [problem]
        if sts is None:
            return []
        containers = list(sts.spec.template.spec.containers or [])
        named = [c for c in containers if c.name == "ingestor"] or (containers if len(containers) == 1 else [])
        if not named:
            return [f"image: StatefulSet {sts.metadata.name} has no container named ingestor among "
                    f"{len(containers)}: not applied"]
        container = named[0]
        if container.image == image:
            return []
        body = {"spec": {"template": {"spec": {"containers": [{"name": container.name, "image": image}]}}}}
        self.apps.patch_namespaced_stateful_set(sts.metadata.name, namespace, body)
        log.info("ingestor %s/%s: image of StatefulSet %s -> %s (was %s)", namespace, name, sts.metadata.name,
                 image, container.image)
        self._event(namespace, name, "ImageUpdated",
                    f"StatefulSet {sts.metadata.name}: container {container.name} image {container.image} -> {image}")
        container.image = image
        return []

    def _apply(self, namespace: str, name: str, target: str, d: rules.Decision) -> None:
        if d.annotate_shutdown is not None:
            body = {"metadata": {"annotations": {SHUTDOWN_REQUESTED: rfc3339(self.clock())}}}
            self.core.patch_namespaced_pod(d.annotate_shutdown, namespace, body)
            log.info("ingestor %s/%s: asked pod %s to drain (%s)", namespace, name, d.annotate_shutdown, d.reason)
        if d.set_replicas is not None:
            self.apps.patch_namespaced_stateful_set_scale(target, namespace, {"spec": {"replicas": d.set_replicas}})
            log.info("ingestor %s/%s: replicas -> %d (%s)", namespace, name, d.set_replicas, d.reason)
        if d.event is not None:
            self._event(namespace, name, *d.event)

    def _done(self, namespace: str, name: str, report: _Report, autoscaler: dict[str, Any] | None) -> None:
        """Write the status (conditions, and status.autoscaler when given) in one patch, unless
        nothing would change; log what changed."""
        for line, level in report.changes():
            log.log(level, "ingestor %s/%s: %s", namespace, name, line)
        if autoscaler is None and report.conditions == report.old:
            return  # a resource left alone, said already: no write every --interval
        status: dict[str, Any] = {"conditions": report.conditions}
        if autoscaler is not None:
            status["autoscaler"] = autoscaler
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                          {"status": status})

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
        items = self.ingestors()
        for resource in items:
            try:
                self.reconcile(resource, items)
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


class _Report:
    """The status conditions of one reconcile, in adx-mon's shape and set as adx-mon sets them
    (`cluster/operator/adxmon.py`); `changes()` says what moved since the resource was read."""

    def __init__(self, old: Sequence[Mapping[str, Any]], now: str, generation: int | None) -> None:
        self.old = list(old)
        self.conditions: list[dict[str, Any]] = [dict(c) for c in old]
        self.now = now
        self.generation = generation

    def set(self, type_: str, status: str, reason: str, message: str) -> None:
        self.conditions = adxmon.set_condition(
            self.conditions, adxmon.condition(type_, status, reason, message, self.now, self.generation))

    def fields(self, notes: list[str]) -> None:
        if notes:
            self.set(adxmon.FIELDS, "False", "FieldsNotApplied", "; ".join(notes))
        else:
            self.set(adxmon.FIELDS, "True", "AllFieldsApplied", "the operator acts on every field set in the spec")

    def changes(self) -> list[tuple[str, int]]:
        """(line, log level) for each condition whose reason or message changed: a WARNING for what
        needs a person, an INFO for a resource skipped by its criteria, DEBUG otherwise."""
        out = []
        for c in self.conditions:
            before = adxmon.find(self.old, c["type"])
            if before is not None and (before.get("reason"), before.get("message")) == (c["reason"], c["message"]):
                continue
            if c["status"] == "False" and c["reason"] != "CriteriaExpressionFalse":
                level = logging.WARNING
            elif c["reason"] == "CriteriaExpressionFalse":
                level = logging.INFO
            else:
                level = logging.DEBUG
            out.append((f"{c['type']} {c['status']} {c['reason']}: {c['message']}", level))
        return out


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
