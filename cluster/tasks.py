"""Ending a background task from its owner's stop().

`task.cancel()` then `with suppress(CancelledError): await task` has a flaw: when the *caller*
is cancelled while it waits (a stop() under a deadline), the suppress swallows the caller's own
cancellation, and the caller goes on as if nothing happened. `cancel_and_wait` waits with
`asyncio.wait`, which lets the caller's cancellation through and never raises the task's.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended; an error it ended with (other than the
    cancellation) is raised here, as awaiting it would."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()
