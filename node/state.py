"""The node's phase (starting, serving, draining, stopped) and why it is or is not ready."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from node.errors import UnavailableError


class Phase(enum.StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class NodeState:
    """Readiness as the receivers, health service and /readyz see it. Thread-safe.

    `over_limits` is a callable returning a reason ("" when under limits): a node over its disk
    limits stays live but not ready, so that load balancers send traffic elsewhere.
    """

    def __init__(self, over_limits: Callable[[], str] = lambda: "") -> None:
        self._phase = Phase.STARTING
        self._lock = threading.Lock()
        self._over_limits = over_limits
        self._checks: list[Callable[[], str]] = []
        self.detail = ""
        """More about the phase, for status and /readyz ("leaving: 3 segments left to upload")."""

    def add_check(self, check: Callable[[], str]) -> None:
        """Another reason not to be ready (it returns "" when there is none)."""
        self._checks.append(check)

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_phase(self, phase: Phase) -> None:
        with self._lock:
            self._phase = phase

    def not_ready_reason(self) -> str:
        """Empty when ready; otherwise why not."""
        if self._phase is not Phase.SERVING:
            return f"{self._phase.value}: {self.detail}" if self.detail else self._phase.value
        over = self._over_limits()
        if over:
            return f"over limits: {over}"
        for check in self._checks:
            reason = check()
            if reason:
                return reason
        return ""

    def check_accepting(self) -> None:
        """Raise UnavailableError unless requests may be taken (over limits is the WAL's call)."""
        if self._phase is not Phase.SERVING:
            raise UnavailableError(f"node is {self._phase.value}")
