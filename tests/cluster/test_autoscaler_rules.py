"""The autoscaler's rules (cluster.md), one row per rule or boundary, on the pure `decide`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.operator.rules import (
    SHUTDOWN_TIMEOUT,
    AutoscalerSpec,
    Observed,
    PodState,
    StatefulSetState,
    decide,
    parse_spec,
)
from cluster.units import parse_duration

NOW = 1_800_000_000.0
SPEC = AutoscalerSpec(enabled=True, min_replicas=2, max_replicas=10, scale_interval=300, cpu_window=900)


def pods(n: int, **changes: Any) -> tuple[PodState, ...]:
    out = [PodState(f"ingestor-{i}", i) for i in range(n)]
    if changes:
        out[-1] = replace(out[-1], **changes)
    return tuple(out)


def seen(replicas: int = 4, cpu: float | None = 50.0, *, ready: int | None = None, last_scale: float | None = 0.0,
         samples: tuple[tuple[float, float], ...] | None = None, pod_list: tuple[PodState, ...] | None = None,
         sts: bool = True, spec_replicas: int | None = 4) -> Observed:
    """`replicas` pods, synced, samples spanning the window at `cpu`, last scale long ago."""
    if samples is None:
        samples = tuple((NOW - t, cpu) for t in (800, 600, 400, 200)) if cpu is not None else ()
    return Observed(
        now=NOW, spec_replicas=spec_replicas,
        statefulset=StatefulSetState(replicas, replicas, replicas if ready is None else ready) if sts else None,
        cpu_percent=cpu, samples=samples, last_scale_time=last_scale,
        pods=pods(replicas) if pod_list is None else pod_list)


CASES = [
    # id, spec, observed, action, set_replicas, annotate
    ("up-above-threshold", SPEC, seen(4, 70.01), "ScaleUp", 5, None),
    ("exactly-up-threshold-is-not-up", SPEC, seen(4, 70.0), "None", None, None),
    ("exactly-down-threshold-is-down", SPEC, seen(4, 40.0), "ScaleDown", None, "ingestor-3"),
    ("just-above-down-threshold", SPEC, seen(4, 40.01), "None", None, None),
    ("up-base-percent-rounds-up", SPEC, seen(5, 90), "ScaleUp", 7, None),  # ceil(5 x 25%) = 2
    ("up-at-least-one", replace(SPEC, scale_up_base_percent=1), seen(2, 90), "ScaleUp", 3, None),
    ("up-capped-per-cycle", replace(SPEC, max_replicas=100), seen(40, 90), "ScaleUp", 45, None),  # +10 -> cap 5
    ("up-clamped-to-max", SPEC, seen(9, 90), "ScaleUp", 10, None),
    ("at-max-no-up", SPEC, seen(10, 99), "None", None, None),
    ("at-min-no-down", SPEC, seen(2, 5), "None", None, None),
    ("down-annotates-highest-ordinal", SPEC, seen(3, 10), "ScaleDown", None, "ingestor-2"),
    ("below-min-brought-up", SPEC, seen(1, 50), "ScaleUp", 2, None),
    ("above-max-brought-down-by-handshake", SPEC, seen(11, 50), "ScaleDown", None, "ingestor-10"),
    ("interval-not-passed", SPEC, seen(4, 90, last_scale=NOW - 899), "Skip", None, None),
    ("interval-clamped-to-window", replace(SPEC, scale_interval=60), seen(4, 90, last_scale=NOW - 600), "Skip",
     None, None),
    ("interval-passed", replace(SPEC, scale_interval=60), seen(4, 90, last_scale=NOW - 900), "ScaleUp", 5, None),
    ("unsynced-statefulset", SPEC, seen(4, 90, ready=3), "Skip", None, None),
    ("missing-statefulset", SPEC, seen(4, 90, sts=False), "Skip", None, None),
    ("missing-metrics", SPEC, seen(4, None), "Skip", None, None),
    ("dry-run-up", replace(SPEC, dry_run=True), seen(4, 90), "ScaleUp", None, None),
    ("dry-run-down", replace(SPEC, dry_run=True), seen(4, 10), "ScaleDown", None, None),
    ("pending-shutdown-waits", SPEC, seen(4, 90, pod_list=pods(4, shutdown_requested=NOW - 60)), "Skip", None, None),
    ("completed-shutdown-scales-down", SPEC,
     seen(4, 90, last_scale=NOW - 10, pod_list=pods(4, shutdown_requested=NOW - 60, shutdown_completed=NOW - 5)),
     "ScaleDown", 3, None),
    ("timed-out-shutdown-does-not-scale", SPEC,
     seen(4, 10, pod_list=pods(4, shutdown_requested=NOW - SHUTDOWN_TIMEOUT)), "Skip", None, None),
    ("first-samples-collect-first", SPEC, seen(4, 90, last_scale=None, samples=((NOW - 100, 90.0),)), "Skip", None,
     None),
    ("half-window-of-samples-acts", SPEC, seen(4, 90, last_scale=None, samples=((NOW - 450, 90.0),)), "ScaleUp", 5,
     None),
    ("disabled-keeps-spec-replicas", replace(SPEC, enabled=False), seen(5, 99, spec_replicas=3), "None", 3, None),
    ("disabled-in-sync", replace(SPEC, enabled=False), seen(3, 99, spec_replicas=3), "None", None, None),
    # spec.replicas left out (adx-mon's resources may): disabled, the StatefulSet keeps its own
    ("disabled-without-replicas-keeps-the-sets", replace(SPEC, enabled=False), seen(5, 99, spec_replicas=None),
     "None", None, None),
    ("enabled-without-replicas-decides", SPEC, seen(4, 90, spec_replicas=None), "ScaleUp", 5, None),
]


@pytest.mark.parametrize(("spec", "observed", "action", "replicas", "annotate"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rules(spec: AutoscalerSpec, observed: Observed, action: str, replicas: int | None,
               annotate: str | None) -> None:
    d = decide(spec, observed)
    assert (d.action, d.set_replicas, d.annotate_shutdown) == (action, replicas, annotate), d.reason
    assert d.status is not None and d.status["lastAction"] == action and d.status["reason"] == d.reason
    if spec.dry_run:
        assert d.reason.startswith("dry run: would have") and d.event is None and not d.scaled
    if d.set_replicas is not None and spec.enabled:
        assert d.scaled and d.status["lastScaleTime"] == "2027-01-15T08:00:00Z" and d.event is not None


def test_the_mean_is_over_the_window_and_old_samples_are_dropped() -> None:
    samples = ((NOW - 1000, 100.0), (NOW - 800, 80.0), (NOW - 400, 60.0))  # the first is out of the 900 s window
    d = decide(SPEC, seen(4, 70.0, samples=samples))
    assert d.samples == ((NOW - 800, 80.0), (NOW - 400, 60.0), (NOW, 70.0))
    assert d.mean_cpu == pytest.approx(70.0) and d.action == "None"
    assert d.status is not None and d.status["lastObservedCpuPercentHundredths"] == 7000


def test_the_reason_of_a_scale_up_shows_the_arithmetic() -> None:
    d = decide(SPEC, seen(5, 82.5))
    assert "82.50% > 70%" in d.reason and "5 -> 7" in d.reason and d.event is not None
    assert d.event[0] == "ScaledUp"


def test_a_timed_out_shutdown_is_reported() -> None:
    d = decide(SPEC, seen(4, 10, pod_list=pods(4, shutdown_requested=NOW - 16 * 60)))
    assert "has not completed" in d.reason and "timeout 15m" in d.reason


@given(replicas=st.integers(1, 30), cpu=st.floats(0, 100), dry=st.booleans(),
       lo=st.integers(1, 10), span=st.integers(0, 10))
def test_properties(replicas: int, cpu: float, dry: bool, lo: int, span: int) -> None:
    spec = replace(SPEC, min_replicas=lo, max_replicas=lo + span, dry_run=dry)
    d = decide(spec, seen(replicas, cpu))
    if dry:
        assert d.set_replicas is None and d.annotate_shutdown is None
    if d.set_replicas is not None:
        assert spec.min_replicas <= d.set_replicas <= spec.max_replicas or d.set_replicas == replicas - 1
        assert d.set_replicas - replicas <= max(spec.scale_up_cap_per_cycle, spec.min_replicas - replicas)
    if d.annotate_shutdown is not None:
        assert d.annotate_shutdown == f"ingestor-{replicas - 1}" and d.set_replicas is None


def test_parse_spec_defaults_from_replicas() -> None:
    s = parse_spec({"spec": {"replicas": 3, "autoscaler": {"enabled": True}}})
    assert s == AutoscalerSpec(enabled=True, min_replicas=3, max_replicas=3)
    assert (s.scale_interval, s.cpu_window, s.effective_interval) == (300, 900, 900)
    assert not parse_spec({"spec": {"replicas": 2}}).enabled


def test_parse_spec_without_replicas() -> None:
    """adx-mon's resources may leave spec.replicas out: autoscaling off, nothing to keep; on, the
    range must be given (it would default to spec.replicas)."""
    assert parse_spec({"spec": {"adxClusterSelector": {"matchLabels": {"app": "adx-mon"}}}}) == AutoscalerSpec(
        enabled=False, min_replicas=1, max_replicas=1)
    s = parse_spec({"spec": {"autoscaler": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}}})
    assert (s.enabled, s.min_replicas, s.max_replicas) == (True, 3, 9)
    for autoscaler in ({"enabled": True}, {"enabled": True, "minReplicas": 3}, {"enabled": True, "maxReplicas": 3}):
        with pytest.raises(ValueError, match=r"required when spec\.replicas is not set"):
            parse_spec({"spec": {"autoscaler": autoscaler}})
    d = decide(AutoscalerSpec(enabled=False, min_replicas=1, max_replicas=1), seen(5, spec_replicas=None))
    assert d.set_replicas is None and d.reason == ("autoscaling disabled and spec.replicas not set: the "
                                                   "StatefulSet's 5 replicas are left as they are")


@pytest.mark.parametrize(("autoscaler", "message"), [
    ({"minReplicas": 5, "maxReplicas": 3}, "maxReplicas"),
    ({"scaleUpCPUThreshold": 101}, "0 to 100"),
    ({"scaleDownCPUThreshold": -1}, "0 to 100"),
    ({"scaleDownCPUThreshold": 80}, "must be below"),
    ({"scaleInterval": "five minutes"}, "not a duration"),
    ({"cpuWindow": -5}, "positive"),
    ({"scaleUpCapPerCycle": 0}, ">= 1"),
    ({"minReplicas": 0}, ">= 1"),
    ({"enabled": "yes"}, "true or false"),
])
def test_parse_spec_refuses_invalid_values(autoscaler: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec({"spec": {"replicas": 3, "autoscaler": autoscaler}})


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("90s", 90), ("1h30m", 5400), ("500ms", 0.5), (42, 42),
                                               ("1.5h", 5400)])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds
