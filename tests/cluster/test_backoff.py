"""The one backoff: doubling, capped, jittered within [1 - jitter, 1] of the step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.backoff import Backoff


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    # the Kubernetes watch's numbers (cluster/k8s.py)
    b = Backoff(0.5, 10.0, jitter=0.0)
    assert [b.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert b.attempt == 8
    b.reset()
    assert b.attempt == 0 and b.next() == 0.5


def test_the_jitter_scales_each_step_by_a_draw_from_its_range() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        draws.append((lo, hi))
        return lo

    b = Backoff(1.0, 60.0, uniform=uniform)  # the uploader's numbers
    assert [b.delay(n) for n in (1, 2, 3, 6, 7, 8)] == [0.5, 1.0, 2.0, 16.0, 30.0, 30.0]
    assert set(draws) == {(0.5, 1.0)}


@given(initial=st.floats(0.01, 10), cap=st.floats(0.01, 100), jitter=st.floats(0, 1),
       attempt=st.integers(1, 100_000))
def test_every_delay_is_within_the_jittered_step(initial: float, cap: float, jitter: float, attempt: int) -> None:
    step = min(cap, initial * 2.0 ** min(attempt - 1, 62))
    d = Backoff(initial, cap, jitter).delay(attempt)
    assert (1 - jitter) * step - 1e-9 <= d <= step + 1e-9


def test_any_number_of_attempts_stays_at_the_cap() -> None:
    # 2 ** 1100 as a float would overflow: a prefix failing for days must not break its backoff
    assert Backoff(1.0, 60.0, jitter=0.0).delay(1100) == 60.0


@pytest.mark.parametrize(("initial", "cap", "jitter"), [(-1.0, 1.0, 0.5), (1.0, -1.0, 0.5), (1.0, 1.0, 1.5)])
def test_nonsense_is_refused(initial: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap, jitter)
