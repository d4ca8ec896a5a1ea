"""One segment file: appending blocks, scanning, reading back, repairing.

Invariants:
- A block is written with one `writev` of its header and payload. If that write fails (a full
  disk), the file is truncated back to the end of the previous block, so a failed write leaves no
  partial block behind while the process lives. A crash mid-write leaves a torn tail, which
  `repair` truncates at startup: torn writes never corrupt anything but the last block.
- Nothing after a bad block is trusted: scanning stops at the first error, and repair truncates
  there. A corrupt block in the middle is never skipped.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.errors import CorruptionError, OverLimitsError, VanishedSegmentError, disk_full
from node.storage import fsync_dir
from node.wal import format as fmt
from node.wal import syscalls
from node.wal.openfiles import UNBOUNDED, OpenFiles

log = logging.getLogger(__name__)


class FsyncPolicy(enum.StrEnum):
    """When segment data is forced to stable storage.

    - `never`: written blocks survive a crash of the process (kill -9: they are in the page
      cache), not a crash of the machine; the kernel flushes them within seconds.
    - `on-rotate` (default): as `never`, and a segment is fsynced, with its directory, when it is
      closed; a machine crash can lose at most the unsynced tail of active segments.
    - `always`: every block is fsynced before the write returns: acknowledged rows survive a
      machine crash, at the cost of one fsync per request and table.
    """

    NEVER = "never"
    ON_ROTATE = "on-rotate"
    ALWAYS = "always"


class SegmentWriter:
    """An open segment: appends blocks. Not thread-safe; its WAL serialises calls.

    Its descriptor belongs to `files` (node/wal/openfiles.py): closed when the process holds too
    many, reopened at the next write."""

    __slots__ = ("_fsync", "_sync_each", "blocks", "closed", "fd", "files", "path", "pins", "rows", "size")
    MAGIC = fmt.MAGIC
    """What the file begins with (a journal's writer writes its own: node/wal/journal.py)."""

    def __init__(self, path: Path, fsync: FsyncPolicy, files: OpenFiles = UNBOUNDED) -> None:
        self.path = path
        self._fsync = fsync
        self._sync_each = fsync is FsyncPolicy.ALWAYS
        self.files = files
        self.pins = 0
        self.closed = False
        self.fd = syscalls.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.size = 0
        self.blocks = 0
        self.rows = 0
        try:
            self._write([self.MAGIC])
        except BaseException:
            self._give_up_fd()
            path.unlink(missing_ok=True)
            raise

    def reopen(self) -> int:
        """A descriptor at the end of what was written (for `files`, after it closed ours): in append
        mode, as the file ends where this writer's last write did (a failed write is cut back).
        Raises VanishedSegmentError when the file was deleted outside the node."""
        try:
            return syscalls.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise VanishedSegmentError(self.path) from e

    def vanished(self) -> bool:
        """Whether the file was deleted outside the node: its open descriptor's file has no name
        left, or, its descriptor closed by `files`, its path is gone. The answer about a descriptor
        read without the table's lock may be stale (another file's, reused): a caller acts on it
        only through `TableWal.drop_if_vanished_held` or a look at the path."""
        fd = self.fd
        try:
            return os.fstat(fd).st_nlink == 0 if fd >= 0 else not os.path.exists(self.path)
        except OSError:
            return False

    def abandon(self) -> None:
        """Give up a writer whose file was deleted outside the node: its descriptor closed (the
        space the deleted file held goes back to the volume), nothing synced."""
        self.closed = True
        self._give_up_fd()

    def _give_up_fd(self) -> None:
        self.files.forget(self)
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            syscalls.close(fd)

    def _write(self, parts: list[bytes], sync: bool = False, total: int = -1) -> None:
        if total < 0:
            total = sum(len(p) for p in parts)
        fd = self.files.acquire(self)
        try:
            self._write_fd(fd, parts, total, sync)
        finally:
            self.files.release(self)

    def _write_fd(self, fd: int, parts: list[bytes], total: int, sync: bool) -> None:
        """Write `parts` at the end through `fd` (pinned by the caller), all of them or none."""
        try:
            written = syscalls.writev(fd, parts)
            while written < total:  # short writes are rare on files, but legal
                rest = b"".join(parts)[written:]
                n = os.write(fd, rest)
                if n == 0:
                    raise OSError("short write")
                written += n
            if sync:
                os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, self.size)
            os.lseek(fd, self.size, os.SEEK_SET)
            self._raise_full(e)
            raise
        self.size += total

    def _raise_full(self, e: OSError) -> None:
        """Raise `e` as the over-limits error of a full disk when it is one (node.errors.disk_full)."""
        full = disk_full(e, f"writing {self.path.name}")
        if full is not e:
            raise full from e

    def sync(self) -> None:
        """fsync what was appended with `sync=False`: the caller (`Repository.write_many` under
        `always`) then cuts those appends back out if this fails, as a failed `append` does its own.
        Safe from another thread while the caller holds the table's lock (the descriptor is pinned
        meanwhile, as for a write)."""
        fd = self.files.acquire(self)
        try:
            os.fsync(fd)
        except OSError as e:
            self._raise_full(e)
            raise
        finally:
            self.files.release(self)

    def append(self, header: bytes, payload: bytes, rows: int, sync: bool | None = None) -> None:
        """Append one framed block; returns once it is written (and fsynced under `always`, unless
        `sync` says otherwise: False for a caller that makes many appends durable at once).

        A writer the caller pinned (`OpenFiles.acquire_all`, for all the segments of a request at
        once) is written through its descriptor as it is: only the thread that holds the table's
        lock changes its pins, so a pin seen here stays until that thread lets it go."""
        total = len(header) + len(payload)
        if sync is None:
            sync = self._sync_each
        if self.pins and self.fd >= 0:
            self._write_fd(self.fd, [header, payload], total, sync)
        else:
            self._write([header, payload], sync, total)
        self.blocks += 1
        self.rows += rows

    def truncate(self, size: int, blocks: int, rows: int) -> None:
        """Cut the file back to `size` (the end of an earlier block): undoes appends of a request that
        failed part way."""
        fd = self.files.acquire(self)
        try:
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
            self.size, self.blocks, self.rows = size, blocks, rows
            if self._fsync is FsyncPolicy.ALWAYS:
                try:
                    os.fsync(fd)
                except OSError as e:  # the request is refused all the same; the other tables are undone too
                    log.warning("%s: cut back to %d bytes (a refused request), but the cut could not be fsynced "
                                "(%s): after a crash its rows may be back, then sent twice, never lost",
                                self.path.name, size, e)
        finally:
            self.files.release(self)

    def discard(self) -> None:
        """Close and delete the file (a segment that holds nothing but an undone request)."""
        self._give_up_fd()
        self.path.unlink(missing_ok=True)

    def close(self, sync: bool = True, sync_dir: bool = True) -> None:
        """Close the file, fsyncing it first unless the policy is `never` or `sync` is false (its
        bytes were made durable otherwise: rewritten and fsynced by `compact`, or by the caller
        for many files at once); then its directory, unless `sync_dir` is false."""
        if self.closed:
            return
        try:
            if sync and self._fsync is not FsyncPolicy.NEVER:
                fd = self.files.acquire(self)
                try:
                    os.fsync(fd)
                finally:
                    self.files.release(self)
        finally:
            self.closed = True
            self._give_up_fd()
        if sync_dir and self._fsync is not FsyncPolicy.NEVER:
            fsync_dir(self.path.parent)


COMPACT_BLOCK_BYTES = 1 << 20
"""Blocks of a compacted segment hold about this many bytes of rows (Snappy finds repetition
within 64 KiB, so past that a bigger block saves nothing)."""
COMPACT_BELOW = 16 << 10
"""A closed segment is compacted when its blocks average fewer compressed bytes than this."""
COMPACT_MAX = 16 << 20
COMPACT_MAX_BLOCKS = 20_000
"""...and when it is at most this large and has at most this many blocks: the rewrite runs as the
segment closes, with its table's lock held, and holds the new blocks in memory until they are
written. It costs ~6 us a block here (195,000 blocks of 3 rows: 1.2 s), so 20,000 blocks hold the
lock ~0.1 s. Small blocks come from many tables sharing the traffic, each table's segment
small: at 10,000 tables and 100 requests/s of 1,000 tables each, a table's 5-minute segment has
3,000 blocks."""


def compact(path: Path, blocks: int, has_schema: bool) -> tuple[int, int, int] | None:
    """Rewrite a closed segment's small blocks (one per request and table: a few rows each when a
    node receives thousands of tables) as blocks of about `COMPACT_BLOCK_BYTES`, so that Snappy
    sees the repetition between rows: 1,000 tables with one row each per request took 262 bytes
    per row on disk, 16 once compacted. Same rows, same order, one schema line per block.

    The new file is written beside it as `<name>.tmp`, fsynced, and renamed over it: a crash
    leaves the old file or the new one, and recovery deletes a stray `.tmp`. Fsynced whatever
    `--wal-fsync` says: without it a crash could leave the renamed file empty, which would lose rows
    that were on disk long before (under `never` only the last writes may be lost, not a segment).
    `has_schema`: the segment's name has a schema part, so its blocks may begin with the
    schema's CSV header line (one, the same, in every block); otherwise values are taken whole.
    Returns (size, blocks, rows) of the new file, or None when the segment is left as it
    is: its blocks are large enough already, they mix kinds, or the rewrite failed (a full disk:
    the old file stays whole, nothing is lost; logged at DEBUG).
    """
    size = path.stat().st_size
    if (blocks < 2 or blocks > COMPACT_MAX_BLOCKS or size > COMPACT_MAX
            or (size - len(fmt.MAGIC)) // blocks >= COMPACT_BELOW):
        return None
    tmp = path.with_name(path.name + ".tmp")
    try:
        out = _compacted(path, has_schema)
        if out is None:
            return None
        parts, new_blocks, rows = out
        with open(tmp, "wb") as f:
            f.write(fmt.MAGIC)
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
            new_size = f.tell()
        os.replace(tmp, path)
    except (OSError, CorruptionError, OverLimitsError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.debug("segment %s left as written: compacting it failed: %s", path.name, e)
        return None
    return new_size, new_blocks, rows


def _compacted(path: Path, has_schema: bool) -> tuple[list[bytes], int, int] | None:
    """The framed blocks of `path`'s rows regrouped; None when its blocks mix kinds or schema lines."""
    parts: list[bytes] = []
    kind: int | None = None
    line: bytes | None = None
    pending: list[bytes] = []
    pending_bytes = pending_rows = rows = nblocks = 0

    def flush() -> None:
        nonlocal pending_bytes, pending_rows, nblocks
        header, payload = fmt.encode_block(kind or fmt.KIND_UNKNOWN, pending_rows, b"".join(pending), line or b"")
        parts.append(header)
        parts.append(payload)
        nblocks += 1
        pending.clear()
        pending_bytes = pending_rows = 0

    for block in iter_blocks(path):
        if kind is None:
            kind = block.kind
        elif block.kind != kind:
            return None
        head, value = fmt.strip_schema_line(block.value) if has_schema else (None, block.value)
        if head is not None:
            if line is None and nblocks == 0 and not pending:
                line = head
            elif head != line:
                return None
        pending.append(value)
        pending_bytes += len(value)
        pending_rows += block.count
        rows += block.count
        if pending_bytes >= COMPACT_BLOCK_BYTES:
            flush()
    if pending:
        flush()
    return parts, nblocks, rows


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan found: the good prefix of the file, and the error that ended it, if any."""

    path: Path
    good_end: int
    size: int
    blocks: int
    rows: int
    error: CorruptionError | None


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """The file's bytes, memory-mapped so that a 1 GB segment does not cost 1 GB of memory."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield memoryview(b"")
            return
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(m)
        try:
            yield view
        finally:
            view.release()
            # BufferError: a caller still holds a slice; the GC unmaps it later.
            with contextlib.suppress(BufferError):
                m.close()


def scan(path: Path, *, decompress: bool = True) -> ScanResult:
    """Check every block of a segment; stop at the first bad one."""
    blocks = rows = 0
    good_end = 0
    with mapped(path) as data:
        size = len(data)
        try:
            fmt.check_magic(data)
            good_end = len(fmt.MAGIC)
            for block in fmt.iter_raw_blocks(data):
                if decompress:
                    rows += fmt.rows_of(fmt.decode_payload(block))
                blocks += 1
                good_end = block.end
                del block
        except fmt.FormatError as e:
            return ScanResult(path, good_end, size, blocks, rows, CorruptionError(path, e.offset, e.reason))
    return ScanResult(path, good_end, size, blocks, rows, None)


def repair(err: CorruptionError) -> int:
    """Truncate the segment of `err` at the end of its last good block, fsync; return bytes cut.

    Accepts only the CorruptionError of a scan: the offset is where the last good block ended.
    """
    path = err.path
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(err.offset)
        f.flush()
        os.fsync(f.fileno())
    log.warning("repaired segment %s: truncated %d bytes at offset %d (%s)", path, size - err.offset,
                err.offset, err.reason)
    return size - err.offset


@dataclass(frozen=True, slots=True)
class Block:
    offset: int
    kind: int
    count: int
    value: bytes


def iter_blocks(path: Path) -> Iterator[Block]:
    """Yield the decompressed blocks of a segment; CorruptionError where it goes bad."""
    with mapped(path) as data:
        try:
            fmt.check_magic(data)
            for raw in fmt.iter_raw_blocks(data):
                sample = fmt.decode_payload(raw)
                offset = raw.offset
                del raw
                yield Block(offset, sample.kind, sample.count, sample.value)
        except fmt.FormatError as e:
            raise CorruptionError(path, e.offset, e.reason) from e


def iter_rows(path: Path, *, with_headers: bool = False) -> Iterator[bytes]:
    """Yield each block's CSV value, schema header lines stripped unless `with_headers`."""
    for block in iter_blocks(path):
        if with_headers:
            yield block.value
        else:
            yield fmt.strip_schema_line(block.value)[1]
