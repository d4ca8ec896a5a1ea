"""The autoscaler's rules (cluster.md, "Autoscaler"), as one pure function: observed state in,
action and status out. No I/O and no clock: `cluster/operator/controller.py` reads the world and applies
the decision.

Each reconcile, for an `Ingestor` with `spec.autoscaler.enabled`:

1. skip while the StatefulSet is missing or not synced (`status.replicas` and `readyReplicas`
   both equal `spec.replicas`), or the CPU metrics are unavailable;
2. add this cycle's CPU sample, keep the samples of the last `cpuWindow`, use their mean;
3. skip if less than `max(scaleInterval, cpuWindow)` passed since the last scale action;
4. mean `> scaleUpCPUThreshold`: add `ceil(current * scaleUpBasePercent / 100)` replicas, at
   least 1, at most `scaleUpCapPerCycle`, never above `maxReplicas`;
5. mean `<= scaleDownCPUThreshold` and above `minReplicas`: one replica at a time, by the
   handshake: annotate the highest-ordinal pod with `shutdown-requested`; once it carries
   `shutdown-completed`, lower the replicas by one; not completed within 15 minutes: report it
   and do not scale;
6. `dryRun`: decide and record, change nothing;
7. record `status.autoscaler`, and an event for each scale action.

Decisions where cluster.md is silent (each is a row of the tests):

- A pending shutdown (requested, not completed, not timed out) blocks every other action: the
  node is already leaving, and a scale-up meanwhile would fight it. It is followed even when the
  CPU has risen since: a half-drained node that is sent back would hold data nobody uploads.
- A completed shutdown is acted on whatever the interval: the node already left.
- Replicas outside `[minReplicas, maxReplicas]` (someone edited the set) are brought back into
  range first, upward at once, downward through the handshake like any scale-down.
- Samples older than `cpuWindow` are dropped. Before any scale action was recorded
  (`lastScaleTime` absent), no action is taken until the samples span half a window: a new
  resource is not scaled on one sample. Afterwards the interval rule (3) applies, and
  `lastScaleTime` lives in the resource's status, so a restarted operator keeps it.
- Disabled: the operator keeps `spec.replicas` on the StatefulSet, and records `None`. Disabled
  and `spec.replicas` not set (an adx-mon resource may leave it out; adx-mon's operator would make
  it 1): the StatefulSet's replicas are left as they are.
- `spec.replicas` not set and autoscaling on: `minReplicas` and `maxReplicas` must both be given
  (they default to `spec.replicas` otherwise); the autoscaler decides within them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.annotations import rfc3339
from cluster.units import parse_duration

SHUTDOWN_TIMEOUT = 15 * 60.0

def _duration(value: Any, what: str) -> float:
    seconds = parse_duration(value, what)
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{what}: must be a positive duration, not {value!r}")
    return seconds


@dataclass(frozen=True)
class AutoscalerSpec:
    """`spec.autoscaler` of an `Ingestor`, defaults applied."""

    enabled: bool
    min_replicas: int
    max_replicas: int
    scale_up_cpu_threshold: float = 70.0
    scale_down_cpu_threshold: float = 40.0
    scale_interval: float = 300.0
    cpu_window: float = 900.0
    scale_up_base_percent: float = 25.0
    scale_up_cap_per_cycle: int = 5
    dry_run: bool = False
    collect_metrics: bool = True

    @property
    def effective_interval(self) -> float:
        """Intervals shorter than the window are clamped to it."""
        return max(self.scale_interval, self.cpu_window)


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _percent(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError(f"{what} must be a number from 0 to 100, not {value!r}")
    return float(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, not {value!r}")
    return value


def parse_spec(resource: Mapping[str, Any]) -> AutoscalerSpec:
    """The autoscaler spec of a whole `Ingestor` object; ValueError says what is wrong."""
    spec = resource.get("spec") or {}
    replicas = None if spec.get("replicas") is None else _int(spec["replicas"], "spec.replicas", 1)
    a = spec.get("autoscaler") or {}
    p = "spec.autoscaler."
    enabled = _bool(a.get("enabled", False), p + "enabled")
    if replicas is None and enabled and (a.get("minReplicas") is None or a.get("maxReplicas") is None):
        raise ValueError(f"{p}minReplicas and {p}maxReplicas are required when spec.replicas is not set")
    out = AutoscalerSpec(
        enabled=enabled,
        min_replicas=_int(a.get("minReplicas", replicas or 1), p + "minReplicas", 1),
        max_replicas=_int(a.get("maxReplicas", replicas or 1), p + "maxReplicas", 1),
        scale_up_cpu_threshold=_percent(a.get("scaleUpCPUThreshold", 70), p + "scaleUpCPUThreshold"),
        scale_down_cpu_threshold=_percent(a.get("scaleDownCPUThreshold", 40), p + "scaleDownCPUThreshold"),
        scale_interval=_duration(a.get("scaleInterval", "5m"), p + "scaleInterval"),
        cpu_window=_duration(a.get("cpuWindow", "15m"), p + "cpuWindow"),
        scale_up_base_percent=_percent(a.get("scaleUpBasePercent", 25), p + "scaleUpBasePercent"),
        scale_up_cap_per_cycle=_int(a.get("scaleUpCapPerCycle", 5), p + "scaleUpCapPerCycle", 1),
        dry_run=_bool(a.get("dryRun", False), p + "dryRun"),
        collect_metrics=_bool(a.get("collectMetrics", True), p + "collectMetrics"),
    )
    if out.max_replicas < out.min_replicas:
        raise ValueError(f"{p}maxReplicas ({out.max_replicas}) must be >= minReplicas ({out.min_replicas})")
    if out.scale_down_cpu_threshold >= out.scale_up_cpu_threshold:
        raise ValueError(f"{p}scaleDownCPUThreshold ({out.scale_down_cpu_threshold:g}) must be below "
                         f"scaleUpCPUThreshold ({out.scale_up_cpu_threshold:g})")
    return out


@dataclass(frozen=True)
class StatefulSetState:
    spec_replicas: int
    status_replicas: int
    ready_replicas: int

    @property
    def synced(self) -> bool:
        return self.status_replicas == self.spec_replicas and self.ready_replicas == self.spec_replicas


@dataclass(frozen=True)
class PodState:
    name: str
    ordinal: int
    shutdown_requested: float | None = None
    shutdown_completed: float | None = None


@dataclass(frozen=True)
class Observed:
    now: float
    spec_replicas: int | None
    """`spec.replicas`; None when not set (adx-mon's resources may leave it out)."""
    statefulset: StatefulSetState | None
    cpu_percent: float | None
    """This cycle's sample: mean CPU utilisation (%) of the nodes hosting the pods; None: unavailable."""
    samples: tuple[tuple[float, float], ...] = ()
    """(time, percent) kept from earlier cycles."""
    last_scale_time: float | None = None
    pods: tuple[PodState, ...] = ()


@dataclass(frozen=True)
class Decision:
    action: str
    """`None`, `ScaleUp`, `ScaleDown` or `Skip` (status.autoscaler.lastAction)."""
    reason: str
    set_replicas: int | None = None
    annotate_shutdown: str | None = None
    samples: tuple[tuple[float, float], ...] = ()
    mean_cpu: float | None = None
    scaled: bool = False
    event: tuple[str, str] | None = None
    status: Mapping[str, Any] | None = None


def _status(observed: Observed, action: str, reason: str, mean: float | None, scaled: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"lastAction": action, "lastActionTime": rfc3339(observed.now), "reason": reason}
    if mean is not None:
        out["lastObservedCpuPercentHundredths"] = round(mean * 100)
    last = observed.now if scaled else observed.last_scale_time
    if last is not None:
        out["lastScaleTime"] = rfc3339(last)
    return out


def decide(spec: AutoscalerSpec, observed: Observed) -> Decision:
    """What the operator does this cycle (see the module's docstring for every rule)."""

    def result(action: str, reason: str, *, replicas: int | None = None, annotate: str | None = None,
               samples: tuple[tuple[float, float], ...] = observed.samples, mean: float | None = None,
               event: tuple[str, str] | None = None) -> Decision:
        scaled = action in ("ScaleUp", "ScaleDown") and (replicas is not None or annotate is not None)
        if spec.dry_run and (replicas is not None or annotate is not None):
            reason = f"dry run: would have: {reason}"
            replicas = annotate = None
            event = None
            scaled = False
        return Decision(action, reason, replicas, annotate, samples, mean, scaled and replicas is not None, event,
                        _status(observed, action, reason, mean, scaled and replicas is not None))

    sts = observed.statefulset
    if not spec.enabled:
        if observed.spec_replicas is None:
            held = f": the StatefulSet's {sts.spec_replicas} replicas are left as they are" if sts is not None else ""
            return result("None", f"autoscaling disabled and spec.replicas not set{held}")
        if sts is not None and sts.spec_replicas != observed.spec_replicas:
            return result("None", f"autoscaling disabled: keeping spec.replicas {observed.spec_replicas} "
                                  f"(the StatefulSet had {sts.spec_replicas})", replicas=observed.spec_replicas)
        return result("None", "autoscaling disabled")
    if sts is None:
        return result("Skip", "the StatefulSet does not exist")
    current = sts.spec_replicas

    # A scale-down in progress comes first: it is acted on (or waited for) whatever the CPU.
    by_ordinal = sorted(observed.pods, key=lambda p: p.ordinal)
    pending = [p for p in by_ordinal if p.shutdown_requested is not None and p.ordinal == current - 1]
    if pending:
        pod = pending[0]
        if pod.shutdown_completed is not None:
            return result("ScaleDown", f"pod {pod.name} drained: {current} -> {current - 1} replicas",
                          replicas=current - 1,
                          event=("ScaledDown", f"pod {pod.name} drained; replicas {current} -> {current - 1}"))
        waited = observed.now - (pod.shutdown_requested or observed.now)
        if waited >= SHUTDOWN_TIMEOUT:
            return result("Skip", f"pod {pod.name} was asked to shut down {waited / 60:.0f} minutes ago and has not "
                                  f"completed (timeout {SHUTDOWN_TIMEOUT / 60:.0f}m): not scaling down")
        return result("Skip", f"waiting for pod {pod.name} to drain ({waited:.0f}s since shutdown-requested)")

    if not sts.synced:
        return result("Skip", f"StatefulSet not synced: spec {sts.spec_replicas}, status {sts.status_replicas}, "
                              f"ready {sts.ready_replicas}")
    if observed.cpu_percent is None:
        return result("Skip", "CPU metrics unavailable")
    samples = tuple(s for s in (*observed.samples, (observed.now, observed.cpu_percent))
                    if observed.now - s[0] <= spec.cpu_window)
    mean = sum(p for _, p in samples) / len(samples)

    def act(action: str, reason: str, **kw: Any) -> Decision:
        return result(action, reason, samples=samples, mean=mean, **kw)

    # out of range (someone edited the set): back into range first
    if current < spec.min_replicas:
        return act("ScaleUp", f"{current} replicas below minReplicas {spec.min_replicas}",
                   replicas=spec.min_replicas, event=("ScaledUp", f"replicas {current} -> {spec.min_replicas} "
                                                                  f"(minReplicas)"))
    if current > spec.max_replicas:
        return _scale_down(act, by_ordinal, current, f"{current} replicas above maxReplicas {spec.max_replicas}")

    since = observed.now - observed.last_scale_time if observed.last_scale_time is not None else None
    interval = spec.effective_interval
    if since is not None and since < interval:
        return act("Skip", f"cpu {mean:.2f}%: {since:.0f}s since the last scale action, interval {interval:.0f}s "
                           f"(max of scaleInterval and cpuWindow)")
    span = observed.now - samples[0][0]
    if since is None and span < spec.cpu_window / 2:
        return act("Skip", f"cpu {mean:.2f}%: collecting samples ({span:.0f}s of the {spec.cpu_window:.0f}s window; "
                           f"half a window before a first action)")
    up, down = spec.scale_up_cpu_threshold, spec.scale_down_cpu_threshold
    if mean > up:
        if current >= spec.max_replicas:
            return act("None", f"cpu {mean:.2f}% > {up:g}% but already at maxReplicas {spec.max_replicas}")
        add = min(max(1, math.ceil(current * spec.scale_up_base_percent / 100)), spec.scale_up_cap_per_cycle)
        target = min(current + add, spec.max_replicas)
        reason = (f"cpu {mean:.2f}% > {up:g}% over the {spec.cpu_window:.0f}s window: {current} -> {target} replicas "
                  f"(+{target - current}; base {spec.scale_up_base_percent:g}%, cap {spec.scale_up_cap_per_cycle}, "
                  f"max {spec.max_replicas})")
        return act("ScaleUp", reason, replicas=target, event=("ScaledUp", reason))
    if mean <= down:
        if current <= spec.min_replicas:
            return act("None", f"cpu {mean:.2f}% <= {down:g}% but already at minReplicas {spec.min_replicas}")
        return _scale_down(act, by_ordinal, current, f"cpu {mean:.2f}% <= {down:g}% over the {spec.cpu_window:.0f}s "
                                                     f"window")
    return act("None", f"cpu {mean:.2f}% between {down:g}% and {up:g}%")


def _scale_down(act: Callable[..., Decision], pods: list[PodState], current: int, why: str) -> Decision:
    """Start the handshake with the highest ordinal: annotate it; the replicas drop once it completed."""
    target = next((p for p in reversed(pods) if p.ordinal == current - 1), None)
    if target is None:
        return act("Skip", f"{why}, but pod of ordinal {current - 1} not found")
    reason = f"{why}: asking pod {target.name} to drain before {current} -> {current - 1} replicas"
    return act("ScaleDown", reason, annotate=target.name,
               event=("ScaleDownStarted", f"pod {target.name} asked to drain ({why})"))
