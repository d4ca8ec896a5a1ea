"""The segments this node accepted from peers: what makes a transfer idempotent.

A sender deletes its copy only when it hears OK or ALREADY_EXISTS. If the OK is lost (the
connection breaks after the receiver committed), the sender sends the same segment again and must
hear ALREADY_EXISTS, not OK, or the rows would be there twice. So every accepted segment's key is
appended to `transfers.ledger` (one line `<unix seconds> <key>`, fsynced) after the segment file
is published, and looked up before a transfer is accepted.

The file survives restarts (a sender may resend after either side restarted) and is shared by
the receiver processes of a node: each reads the lines the others appended under an exclusive
`flock`. Entries older than `retention` are dropped when the file is compacted: at start, and
when it grows past `compact_bytes` or twice its size after the last compaction, whichever is
more (so that a ledger whose entries are all recent is not rewritten at every append). A sender
resends a transfer in doubt for at most `TransferConfig.in_doubt_wait` (10 minutes) after its
first try, even across restarts, so an hour is ample; the file, and the copy of it in memory,
stay at a few MB (the 30-minute soak found them growing with a 6-hour retention).

The key is the segment's name with its size and CRC-32: a sender that merges several segments
into one transfer names it after the first, and a later transfer that starts with the same
segment but carries more is a different key (its rows are new, or, in the worst case of a sender
that restarted between the two, some rows arrive twice: duplicated, never lost).

The window between the rename of the segment and the append of its key is not atomic: a crash
exactly there leaves the segment accepted but not recorded, and the resend duplicates it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LEDGER_FILE = "transfers.ledger"
DEFAULT_RETENTION = 3600.0


def transfer_key(name: str, size: int, crc32: int) -> str:
    return f"{name}:{size}:{crc32:08x}"


class TransferLedger:
    def __init__(self, path: Path, retention: float = DEFAULT_RETENTION, compact_bytes: int = 4 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.retention = retention
        self.compact_bytes = compact_bytes
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._fd = -1
        self._ino = -1
        self._offset = 0
        self._tail = b""
        self._compact_at = compact_bytes

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock with this process's view caught up with the file."""
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._catch_up()
            yield
        finally:
            os.close(lock_fd)  # releases the lock

    def _catch_up(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        ino = os.fstat(fd).st_ino
        if ino != self._ino:  # first open, or compacted by another process: read it all
            self.close()
            self._fd, self._ino, self._offset, self._tail = fd, ino, 0, b""
            self._seen.clear()
        else:
            os.close(fd)
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return
        data = self._tail + os.pread(self._fd, size - self._offset, self._offset)
        self._offset = size
        lines = data.split(b"\n")
        self._tail = lines.pop()  # an unfinished line (a writer that died mid-line) stays aside
        for line in lines:
            stamp, _, key = line.decode("utf-8", "replace").partition(" ")
            try:
                self._seen[key] = float(stamp)
            except ValueError:
                continue

    def seen(self, key: str) -> bool:
        """Whether `key` was accepted (by any process of this node) within the retention."""
        with self._locked():
            stamp = self._seen.get(key)
        return stamp is not None and self._clock() - stamp < self.retention

    def record(self, key: str) -> None:
        """Append `key` durably."""
        line = f"{self._clock():.0f} {key}\n".encode()
        with self._locked():
            if self._tail:  # never glue a key onto a torn line
                line = b"\n" + line
                self._tail = b""
            os.write(self._fd, line)
            os.fsync(self._fd)
            self._offset += len(line)
            self._seen[key] = self._clock()
            if self._offset > self._compact_at:
                self._compact_locked()

    def compact(self) -> int:
        """Rewrite the file with the entries within the retention; return how many are kept."""
        with self._locked():
            return self._compact_locked()

    def _compact_locked(self) -> int:
        now = self._clock()
        keep = {k: t for k, t in self._seen.items() if now - t < self.retention}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(f"{t:.0f} {k}\n".encode() for k, t in keep.items()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.close()
        self._ino = -1
        self._catch_up()
        self._compact_at = max(self.compact_bytes, 2 * self._offset)
        log.info("transfer ledger compacted: %d entries kept", len(keep))
        return len(keep)
