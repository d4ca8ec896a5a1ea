"""Where the receiver processes keep their metric values, and how a full volume is kept from
killing them.

With several receiver processes, prometheus_client keeps every value in a memory-mapped file per
process (`PROMETHEUS_MULTIPROC_DIR`). It makes those files sparse (`truncate`) and writes their
pages through the mapping: on a volume with no free block, the first write to a new page is a
SIGBUS, not an error. The data volume fills by design (the WAL takes rows until `--min-free-disk`),
so with the files there a full disk stopped a node: chdb's fatal-signal handler slept 300 s with
the event loop held before the process died (seen in the chaos suite: a node that went quiet with
310 segments). Two defences:

- the files live in `/dev/shm` (memory, which the data never fills) when it can be written, else
  in the storage directory as before (`directory`);
- every page is allocated (`posix_fallocate`) before it is written, so no room is an `OSError`,
  never a SIGBUS; and on that error the process keeps its values in anonymous memory
  (`memfd_create`) instead: it goes on taking rows, its values leave `/metrics` (one ERROR line
  says so) until it restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from node.storage import StorageLayout

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")


def directory(storage_dir: Path, shm: Path = SHM) -> Path:
    """The metric files' directory of the node on `storage_dir`: in `shm` when it is a writable
    directory (one per storage directory: two nodes on a host do not mix), else `metrics/` in the
    storage directory."""
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        key = hashlib.sha256(str(Path(storage_dir).resolve()).encode()).hexdigest()[:16]
        return shm / f"ingestor-metrics-{os.getuid()}-{key}"
    return StorageLayout(Path(storage_dir)).metrics


def _allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of real blocks (OSError with ENOSPC when the volume has none)."""
    os.posix_fallocate(fd, 0, size)


def _entry_size(key: str) -> int:
    """Bytes `MmapedDict._init_value` appends for `key` (its layout: length, padded key, 2 doubles)."""
    n = len(key.encode("utf-8"))
    return 4 + n + (8 - (n + 4) % 8) + 16


def _detached(filename: str, error: OSError, content: bytes, initial: int) -> int:
    """An anonymous memory file holding `content` (a dict's used bytes), for a dict that has no
    room on its volume; logged once per file."""
    log.error("metric values of process %d are no longer written to %s (%s): this process keeps taking rows, "
              "its values are missing from /metrics until it restarts; free space in %s", os.getpid(), filename,
              error.strerror or error, os.path.dirname(filename) or ".")
    fd = os.memfd_create("ingestor-metrics")
    size = initial
    while size < len(content):
        size *= 2
    os.ftruncate(fd, size)
    os.pwrite(fd, content, 0)  # empty: MmapedDict starts the file itself
    return fd


_CLASS: Any = None


def allocated_dict() -> Any:
    """prometheus_client's MmapedDict whose pages are allocated before they are written, and that
    moves to anonymous memory when there is no room (see the module's docstring). Made on first
    use: prometheus_client must not be imported before `PROMETHEUS_MULTIPROC_DIR` is set."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from prometheus_client import mmap_dict

    initial = mmap_dict._INITIAL_MMAP_SIZE

    class AllocatedMmapedDict(mmap_dict.MmapedDict):
        def __init__(self, filename: str, read_mode: bool = False) -> None:
            if not read_mode:
                try:
                    fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        _allocate(fd, os.fstat(fd).st_size or initial)
                    finally:
                        os.close(fd)
                except OSError as e:
                    self._reopen(_detached(filename, e, b"", initial), filename)
                    return
            super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

        def _init_value(self, key: str) -> None:
            need = self._used + _entry_size(key)
            if need > self._capacity:
                capacity = self._capacity
                while need > capacity:
                    capacity *= 2
                try:
                    _allocate(self._f.fileno(), capacity)
                except OSError as e:  # the same content in memory, no file behind
                    content = bytes(self._m[:self._used])
                    self._m.close()
                    self._f.close()
                    self._reopen(_detached(self._fname, e, content, initial), self._fname)
            super()._init_value(key)  # type: ignore[no-untyped-call]

        def _reopen(self, memfd: int, filename: str) -> None:
            # a file description of its own: memfd can go
            super().__init__(f"/proc/self/fd/{memfd}")  # type: ignore[no-untyped-call]
            os.close(memfd)
            self._fname = filename

    _CLASS = AllocatedMmapedDict
    return _CLASS


def install() -> None:
    """Make prometheus_client's multiprocess values use `allocated_dict()` (before any value is
    made in this process; idempotent)."""
    from prometheus_client import values

    setattr(values, "MmapedDict", allocated_dict())  # noqa: B010 - a name the module does not export
