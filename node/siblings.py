"""What the supervisor of a multi-process node tells its sibling receiver processes.

A node with `--receivers N` > 1 runs N processes on one storage directory (node/workers.py). The
supervisor (receiver 0) alone keeps the index of closed segments, the cluster view and the
uploads; the others learn three things from it through small files in the storage directory,
each replaced atomically (node/storage.py) and read at every tick:

- `wal/blocked-databases`: the databases over --max-disk-usage-per-database, one per line. A
  receiver refuses their rows as the supervisor does.
- `leaving`: the node is leaving the cluster (scale-down), and how far the leave has come (the
  text readiness probes answer). A receiver stops taking data, closes its active segments, so
  that the supervisor can upload them, and answers its probes with the supervisor's text.
- `cluster.json`: what the supervisor's last scan of the WAL directory found: the ring as it
  sees it (peers, health, owners; with peers only), for the status RPC a receiver serves, and
  the tables for the status page (`tables`: node/statuspage.py `summarize`, at most its
  `TOP_TABLES` tables, so it stays small with 10,000 of them). Written at each scan of the
  supervisor's tick (once a second, less often with many segments).

A node of one process has no siblings: `Siblings.of` returns `Alone`, which writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from node.storage import StorageLayout, atomic_write


class Siblings:
    """The files of one storage directory's sibling protocol."""

    def __init__(self, layout: StorageLayout) -> None:
        self._layout = layout
        self._blocked_text: str | None = None
        self._leaving_text: str | None = None

    @staticmethod
    def of(layout: StorageLayout, processes: int) -> Siblings:
        return Siblings(layout) if processes > 1 else Alone(layout)

    # Supervisor -> receivers.

    def publish_blocked(self, databases: Iterable[str]) -> None:
        text = "\n".join(sorted(databases))
        if text != self._blocked_text:
            atomic_write(self._layout.blocked_databases, text, durable=False)
            self._blocked_text = text

    def announce_leaving(self, detail: str) -> None:
        """The node leaves; `detail`: where the leave stands (announced again as it moves on)."""
        if detail != self._leaving_text:
            atomic_write(self._layout.leaving, detail, durable=self._leaving_text is None)
            self._leaving_text = detail

    def clear_leaving(self) -> None:
        """At start: a node that restarts is no longer leaving."""
        self._layout.leaving.unlink(missing_ok=True)

    def publish_ring(self, ring: dict[str, Any]) -> None:
        """`ring`: the supervisor's `published` (node/roles.py)."""
        atomic_write(self._layout.cluster, json.dumps(ring), durable=False)

    # Receivers <- supervisor.

    def blocked(self) -> frozenset[str]:
        try:
            text = self._layout.blocked_databases.read_text()
        except FileNotFoundError:
            return frozenset()
        return frozenset(x for x in text.split("\n") if x)

    def leaving(self) -> str | None:
        """Where the node's leave stands; None while it is not leaving."""
        try:
            return self._layout.leaving.read_text() or "leaving the cluster"
        except FileNotFoundError:
            return None

    def ring(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._layout.cluster.read_text())
        except (OSError, ValueError):
            return {}
        return data


class Alone(Siblings):
    """A node of one process: nobody to tell."""

    def publish_blocked(self, databases: Iterable[str]) -> None:
        pass

    def announce_leaving(self, detail: str) -> None:
        pass

    def publish_ring(self, ring: dict[str, Any]) -> None:
        pass
