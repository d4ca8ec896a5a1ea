"""Capped exponential backoff with jitter, for every retry loop of the node and the cluster.

    b = Backoff(initial=1.0, maximum=60.0)     # jitter 0.5: each delay drawn from [d/2, d]
    b.delay(1), b.delay(2), b.delay(3), ...    # ~1, ~2, ~4, ... ~60, ~60 (the attempt is the caller's)
    b.next(), b.next(), ...; b.reset()          # the same, counting the attempts itself

Attempt `n` (from 1) waits `d = min(maximum, initial * 2**(n-1))`, times a factor drawn uniformly
from `[1 - jitter, 1]`, so that many clients failing together do not retry together. `jitter`
0 gives exactly `d`. Attempts past the cap stay at the cap however many there are.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_MAX_DOUBLINGS = 62
"""2**62 times any sensible `initial` is past any cap; a float power beyond ~1024 would overflow."""


class Backoff:
    """Delays for attempt 1, 2, 3, ...: doubling from `initial`, capped at `maximum`, jittered.

    `delay(attempt)` is pure (callers that count attempts per key keep the count); `next()` and
    `reset()` count the attempts of one loop. Not thread-safe (one loop owns one).
    """

    __slots__ = ("_uniform", "attempt", "initial", "jitter", "maximum")

    def __init__(self, initial: float, maximum: float, jitter: float = 0.5,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if initial < 0 or maximum < 0:
            raise ValueError(f"backoff: negative delays {initial} and {maximum}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff: jitter must be 0-1, got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._uniform = uniform
        self.attempt = 0
        """Attempts counted by `next()` since the last `reset()`."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first failure)."""
        d = min(self.maximum, self.initial * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
        return d * self._uniform(1.0 - self.jitter, 1.0) if self.jitter else d

    def next(self) -> float:
        """Count one more failed attempt and return its delay."""
        self.attempt += 1
        return self.delay(self.attempt)

    def reset(self) -> None:
        """A success: the next failure waits `initial` again."""
        self.attempt = 0
