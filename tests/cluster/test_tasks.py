"""cancel_and_wait: the task ends, its error is raised, and the caller's own cancellation is kept."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cluster.tasks import cancel_and_wait


async def test_the_task_is_cancelled_and_awaited() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)


async def test_an_error_the_task_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)


async def test_the_callers_cancellation_is_not_swallowed() -> None:
    """A task slow to end (its cleanup takes a while): the stop() waiting for it is cancelled
    (its deadline) and must end as cancelled, not go on. `suppress(CancelledError)` around
    `await task` went on."""
    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.5)

    task = asyncio.create_task(slow_to_end())
    went_on = False

    async def stop() -> None:
        nonlocal went_on
        await cancel_and_wait(task)
        went_on = True

    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop())
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert not went_on
    await asyncio.wait({task})
