"""The memory budget's arithmetic: first come first served, a bounded wait, then a clear refusal."""

from __future__ import annotations

import asyncio

import pytest

from node.budget import MemoryBudget, per_process
from node.errors import OverMemoryError, status_of


async def test_reservations_wait_their_turn_and_a_long_wait_is_refused_with_a_retry_hint() -> None:
    seen: list[int] = []
    budget = MemoryBudget(100, wait=0.2, on_change=seen.append)
    order: list[str] = []

    async def hold(name: str, n: int, seconds: float) -> None:
        async with budget.reserve(n, name):
            order.append(name)
            await asyncio.sleep(seconds)

    first = asyncio.create_task(hold("a", 70, 0.1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(hold("b", 50, 0.0))  # waits for a
    third = asyncio.create_task(hold("c", 10, 0.0))  # fits now, but does not overtake b
    await asyncio.gather(first, second, third)
    assert order == ["a", "b", "c"]
    assert budget.in_use == 0 and max(seen) <= 100

    async with budget.reserve(90, "big"):
        with pytest.raises(OverMemoryError) as e:
            async with budget.reserve(20, "remote write"):
                pass
    assert "remote write" in str(e.value) and "--max-memory" in str(e.value)
    s = status_of(e.value)
    assert (s.http_status, s.grpc_code.name, s.retry_after_seconds) == (429, "RESOURCE_EXHAUSTED", 2.0)
    assert budget.in_use == 0


async def test_a_reservation_over_the_budget_runs_alone_and_a_cancelled_waiter_leaves_nothing() -> None:
    budget = MemoryBudget(100, wait=5)
    async with budget.reserve(10**9, "huge") as r:
        assert r.nbytes == 100
        waiter = asyncio.create_task(budget.reserve(10, "x").__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.in_use == 0
    async with budget.reserve(100, "again"):
        assert budget.in_use == 100


def test_each_receiver_process_gets_its_share() -> None:
    assert per_process(1 << 30, 2) == 1 << 29
    assert per_process(1 << 30, 0) == 1 << 30
