"""Peer health: a peer that failed a transfer owns nothing for a while.

A transfer that fails with a connection error, an overload (RESOURCE_EXHAUSTED) or a draining
peer (UNAVAILABLE) marks that peer unhealthy for `timeout` seconds (`--peer-unhealthy-timeout`,
adx-mon's 1 minute). Meanwhile the ring is computed without it, so its keys go to their next peer
in hash order. No I/O here: the clock is injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unhealthy:
    until: float
    """Monotonic time at which the peer is healthy again."""
    reason: str


class PeerHealth:
    def __init__(self, timeout: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._bad: dict[str, Unhealthy] = {}

    def mark_unhealthy(self, name: str, reason: str) -> None:
        with self._lock:
            was = self._is_bad(name)
            self._bad[name] = Unhealthy(self._clock() + self.timeout, reason)
        if not was:
            log.warning("peer %s unhealthy for %.0fs: %s", name, self.timeout, reason)

    def _is_bad(self, name: str) -> bool:
        bad = self._bad.get(name)
        if bad is None:
            return False
        if bad.until <= self._clock():
            del self._bad[name]
            return False
        return True

    def is_healthy(self, name: str) -> bool:
        with self._lock:
            return not self._is_bad(name)

    def healthy(self, names: Iterable[str]) -> list[str]:
        with self._lock:
            return [n for n in names if not self._is_bad(n)]

    def unhealthy(self) -> dict[str, Unhealthy]:
        """The peers unhealthy now, with until when and why."""
        with self._lock:
            for name in list(self._bad):
                self._is_bad(name)
            return dict(self._bad)
