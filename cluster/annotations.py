"""The scale-down handshake between the operator and a node, on the node's own pod.

The operator sets `shutdown-requested` (RFC 3339 time) on the pod it wants gone; the node drains
everything it holds into the sinks and then sets `shutdown-completed` (RFC 3339 time); only then
does the operator lower the StatefulSet's replicas. Pure helpers: names and time formats.
"""

from __future__ import annotations

import datetime

SHUTDOWN_REQUESTED = "shutdown-requested"
SHUTDOWN_COMPLETED = "shutdown-completed"


def rfc3339(epoch: float) -> str:
    """`2026-11-24T15:40:02Z` (UTC, seconds)."""
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None when absent or not a time."""
    if not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()
