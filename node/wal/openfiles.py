"""A bound on the segment files a process holds open.

Every table written has an active segment, and with thousands of tables (every Prometheus metric
name is one) one descriptor per active segment runs into `ulimit -n`: requests then fail with
EMFILE. `OpenFiles` keeps at most `limit` of them open. A write to a segment whose file was
closed reopens it (`O_WRONLY`, at its known end); when that goes over the limit, the segment
written least recently has its descriptor closed.

Closing a descriptor loses nothing: the bytes written are in the page cache, and a segment's
`close()` fsyncs through a descriptor opened for it (fsync flushes the file, whatever descriptor
wrote it). A segment being written is pinned and never loses its descriptor under that write:
another thread's eviction skips it, so a descriptor number is never closed under a write (and
never reused by another file mid-write). When every open file is pinned, the limit is passed for
as long as the pins last.

Thread-safe: one lock guards the order and the pins; opening and closing happen under it.
"""

from __future__ import annotations

import resource
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from node.wal import syscalls

DEFAULT_LIMIT = 1024
"""A node's default (--max-open-segments), shared by its receiver processes: well under the
common `ulimit -n` of 4,096 and the 2,048 a node may use in all at 10,000 tables."""
MIN_PER_PROCESS = 16


class Reopenable(Protocol):
    """A file `OpenFiles` manages: it says how to reopen it and gives up its descriptor."""

    fd: int
    pins: int

    def reopen(self) -> int: ...


class OpenFiles:
    """At most `limit` descriptors of `Reopenable` files open at once (0: no limit)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[Reopenable, None] = OrderedDict()
        self.reopened = 0
        """Descriptors opened again after an eviction (a gauge of how tight the limit is)."""

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, f: Reopenable) -> int:
        """Pin `f` for a write and return its descriptor, reopening it if it was closed."""
        with self._lock:
            self._pin(f)
            return f.fd

    def release(self, f: Reopenable) -> None:
        with self._lock:
            f.pins -= 1

    def acquire_all(self, files: Sequence[Reopenable]) -> None:
        """`acquire` each of `files` under one lock (the segments one request writes to): all pinned,
        or, if a reopen fails, none."""
        with self._lock:
            done = 0
            try:
                for f in files:
                    self._pin(f)
                    done += 1
            except BaseException:
                for f in files[:done]:
                    f.pins -= 1
                raise

    def release_all(self, files: Sequence[Reopenable]) -> None:
        with self._lock:
            for f in files:
                f.pins -= 1

    def forget(self, f: Reopenable) -> None:
        """`f` closed its descriptor itself (closed or deleted for good)."""
        with self._lock:
            self._open.pop(f, None)

    def _pin(self, f: Reopenable) -> None:
        """With the lock held: open `f`'s descriptor if it was closed, mark it written most recently,
        pin it."""
        if f.fd < 0:
            f.fd = f.reopen()
            self.reopened += 1
        if f in self._open:
            self._open.move_to_end(f)
        else:  # a new file, or one reopened
            self._open[f] = None
            self._evict(keep=f)
        f.pins += 1

    def _evict(self, keep: Reopenable) -> None:
        """Close the descriptors written least recently until the limit holds (the pinned ones
        and `keep` aside)."""
        while self.limit and len(self._open) > self.limit:
            for victim in self._open:
                if victim is not keep and not victim.pins:
                    break
            else:
                return
            del self._open[victim]
            fd, victim.fd = victim.fd, -1
            syscalls.close(fd)


def per_process(limit: int, processes: int, nofile: int | None = None) -> int:
    """Each receiver process's share of a node's `limit` (0: no limit), and at most half of the
    process's descriptor limit `nofile` (`ulimit -n`, RLIMIT_NOFILE): the other half is for
    connections, the sink and reading segments."""
    share = limit // max(1, processes) if limit else 0
    if nofile:
        share = min(share, nofile // 2) if share else nofile // 2
    return max(MIN_PER_PROCESS, share) if share else 0


def descriptor_limit() -> int:
    """This process's soft RLIMIT_NOFILE (`ulimit -n`)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, as the Go runtime does for every program (a
    container's soft limit is often 1,024 under a hard one of 1,048,576); the receiver processes
    inherit it. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


UNBOUNDED = OpenFiles(0)
"""For segments written outside a repository (tools, tests): every descriptor stays open."""
