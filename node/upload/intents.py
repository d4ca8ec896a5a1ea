"""What the uploader is delivering, kept on disk so that a retry or a restart delivers the same thing.

A batch's deduplication token (sinks) and a transfer's ledger key (peers) are derived from the
segments it holds. If the node dies after the sink or the peer took a delivery but before the
segments were deleted, or a try fails after the rows arrived, a new plan could group the
segments differently (with newer ones): a new token, and the rows twice. So before a delivery
starts, its composition and destination are written here, one small file per prefix (written to a
temporary name, fsynced, renamed). The prefix's next delivery, after a failure or after a
restart, is exactly that one again, to the same destination, so the sink or the peer recognises
it. The record is removed when the delivery ends for certain: confirmed, quarantined, refused,
or failed before anything could arrive.

A delivery ends in one of three ways, and only the first deletes segments:
- confirmed: the sink or the peer said it has every row. The record is rewritten as confirmed
  (fsynced) before the first segment is deleted, then the segments are deleted, then the record.
  A record found confirmed at start (killed while deleting) has its remaining segments deleted.
- failed or in doubt: the record stays; the next try is the same delivery.
- ended without arrival (quarantined, refused for certain): the record is removed.

Missing files are never taken as evidence of a confirmation. A record that is not confirmed and
names segments that are gone (a person deleted them, or the confirmation could not be written on a
full disk before a crash) is delivered again with what is left, under the recorded delivery's
token, so that a sink that took the whole recognises the part.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from node.storage import fsync_dir

log = logging.getLogger(__name__)

SINK = ""
"""The destination of a delivery to the node's sink (any other value names a peer)."""


@dataclass(frozen=True)
class Intent:
    prefix: str
    segments: tuple[str, ...]
    """File names of the segments, oldest first."""
    target: str = SINK
    since: float = 0.0
    """Wall-clock time of the first try."""
    recovered: bool = False
    """Left by a previous run (read by `load`)."""
    confirmed: bool = False
    """The sink or the peer confirmed every row: the segments left are to be deleted."""

    @property
    def to_sink(self) -> bool:
        return self.target == SINK


class Intents:
    """The deliveries in progress of one node, one per prefix, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._by_prefix: dict[str, Intent] = {}

    def load(self) -> dict[str, Intent]:
        """Read the records a previous run left (unreadable ones are dropped with a log line: the
        segments they named are then planned afresh, at worst delivered twice, never lost)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._by_prefix = {}
        for entry in sorted(self.directory.iterdir()):
            if entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                continue
            if not entry.name.endswith(".json"):
                continue
            try:
                raw = json.loads(entry.read_text())
                intent = Intent(str(raw["prefix"]), tuple(str(s) for s in raw["segments"]), str(raw["target"]),
                                float(raw["since"]), recovered=True, confirmed=raw.get("confirmed") is True)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping the unreadable delivery record %s: %s", entry, e)
                entry.unlink(missing_ok=True)
                continue
            self._by_prefix[intent.prefix] = intent
        return dict(self._by_prefix)

    def get(self, prefix: str) -> Intent | None:
        return self._by_prefix.get(prefix)

    def all(self) -> dict[str, Intent]:
        return dict(self._by_prefix)

    def record(self, intent: Intent) -> None:
        """Durably note `intent` as its prefix's delivery in progress (blocking: fsync)."""
        old = self._by_prefix.get(intent.prefix)
        if old is not None and (old.segments, old.target, old.since, old.confirmed) == (
                intent.segments, intent.target, intent.since, intent.confirmed):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(intent.prefix)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps({"prefix": intent.prefix, "segments": list(intent.segments), "target": intent.target,
                           "since": intent.since, "confirmed": intent.confirmed}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(self.directory)
        self._by_prefix[intent.prefix] = intent

    def confirm(self, prefix: str, segments: tuple[str, ...], target: str) -> None:
        """Durably note that `prefix`'s delivery of `segments` was confirmed (blocking: fsync), before
        any of its segments is deleted. Raises OSError when it cannot be written."""
        old = self._by_prefix.get(prefix)
        since = old.since if old is not None else 0.0
        self.record(Intent(prefix, segments, target, since, confirmed=True))

    def clear(self, prefix: str) -> None:
        """The prefix's delivery ended (blocking). No fsync: a record that comes back after a crash is
        confirmed (its segments left are deleted) or names segments still there (delivered again
        under the same token: recognised)."""
        if self._by_prefix.pop(prefix, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(prefix).unlink()

    def _path(self, prefix: str) -> Path:
        return self.directory / f"{prefix}.json"
