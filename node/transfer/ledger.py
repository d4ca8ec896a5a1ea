"""The segments this node accepted from peers: what makes a transfer happen exactly once.

A sender deletes its copy only when it hears OK or ALREADY_EXISTS, and resends whatever it is in
doubt about. So a segment must be published once even when the answer is lost, when the receiver
dies half-way, when the ledger's disk is full, and when two receiver processes of the node (they
share the port with SO_REUSEPORT, the WAL directory and this file) get the same segment at once.

`transfers.ledger` (`StorageLayout.ledger`) is a text file of lines, appended under an exclusive
`flock` (every receiver process reads the lines the others appended before it decides anything);
the last line of a key is its state:

    <unix seconds> <key>                              DONE: published; a resend is ALREADY_EXISTS
    <unix seconds> <key> claim <owner> <part path>    being received by <owner> into <part path>
    <unix seconds> <key> publish <owner> <part path>  <owner> renames <part path> into the WAL now
    <unix seconds> <key> free                         the claim came to nothing

    <owner> = <pid>.<start time of the process in clock ticks>  (a reused pid is another owner)

A transfer claims its key before the go-ahead (`claim`, refused when the key is DONE or claimed
by a live owner), streams into the part file (created only after the claim line), and publishes
in one hold of the lock (`publish`): it checks that its claim still stands, appends `publish`,
renames the part to its final name, fsyncs the directory, and appends DONE. The invariants:

- only a `publish` line that is on disk (fsynced: the one line that must be) is ever followed
  by the rename, and the rename happens under the lock: nobody sees a `publish` line whose
  rename is still to come;
- a part file is deleted by its owner only before it writes the `publish` line, and otherwise
  only under the lock by whoever settles the key; nothing else touches `*.part` (the WAL's
  recovery deletes `*.tmp` only);

so the state on disk always says whether the rows were published, without the answer of a
process that may be dead, and whatever became of the final file since (the supervisor may have
uploaded and deleted it):

| last line | part file | the key is |
| --- | --- | --- |
| `claim`, owner alive and the claim younger than `claim_timeout` | | busy (UNAVAILABLE: retry) |
| `claim`, otherwise | deleted if there | free: it was never published |
| `publish` | present | free (the owner failed or died before the rename): the part is deleted |
| `publish` | absent | DONE (the owner died, or could not write, after the rename) |

Hence a DONE line that cannot be written (ENOSPC) after the rename costs nothing: the owner
answers OK, and a resend is ALREADY_EXISTS from the `publish` line. Resolving a key appends the
DONE line it implies when it can.

Every process settles the keys of dead owners when it opens the ledger (a receiver process is
restarted alone while the supervisor lives on), and any key when it is looked up. Entries older
than `retention` are dropped when the file is compacted: at start, and when it
grows past `compact_bytes` or twice its size after the last compaction, whichever is more (so a
ledger whose entries are all recent is not rewritten at every append). Compaction resolves every
key as above and keeps the claims that are still busy. A sender resends a transfer in doubt for
at most `TransferConfig.in_doubt_wait` (10 minutes) after its first try, even across restarts,
so an hour is ample; the file, and the copy of it in memory, stay at a few MB.

The key is the segment's name with its size and CRC-32: a sender that merges several segments
into one transfer names it after the first, and a later transfer that starts with the same
segment but carries more is a different key (its rows are new, or, in the worst case of a sender
that restarted between the two, some rows arrive twice: duplicated, never lost).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from node.errors import AlreadyExistsError, OverLimitsError, UnavailableError, disk_full
from node.storage import atomic_write
from node.wal.importer import PART_SUFFIX

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 3600.0
DEFAULT_CLAIM_TIMEOUT = 600.0
"""A claim this old is stale even if its owner lives (a reused pid, a `free` line that could not
be written). A transfer still streaming then fails its publish and the sender resends it."""
RETRY_SECONDS = 1.0

T = TypeVar("T")


def transfer_key(name: str, size: int, crc32: int) -> str:
    return f"{name}:{size}:{crc32:08x}"


class State(enum.Enum):
    DONE = ""
    CLAIM = "claim"
    PUBLISH = "publish"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Entry:
    stamp: float
    state: State
    owner: str = ""
    part: str = ""

    def line(self, key: str) -> bytes:
        rest = {State.DONE: "", State.FREE: " free"}.get(self.state, f" {self.state.value} {self.owner} {self.part}")
        return f"{self.stamp:.0f} {key}{rest}\n".encode()


def _parse(line: str) -> tuple[str, Entry] | None:
    fields = line.split(" ", 4)
    try:
        stamp = float(fields[0])
    except ValueError:
        return None
    if len(fields) == 2:
        return fields[1], Entry(stamp, State.DONE)
    if len(fields) == 3 and fields[2] == "free":
        return fields[1], Entry(stamp, State.FREE)
    if len(fields) == 5 and fields[2] in ("claim", "publish"):
        return fields[1], Entry(stamp, State(fields[2]), fields[3], fields[4])
    return None


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None when it does not exist or
    is dead (a zombie: killed, not yet reaped by its parent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def this_owner() -> str:
    return f"{os.getpid()}.{_start_time(os.getpid()) or 0}"


def owner_alive(owner: str) -> bool:
    pid_text, _, start = owner.partition(".")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if start != "0":
        return _start_time(pid) == start
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """A key this process holds: the transfer streams into `part`, then `publish()`es."""

    key: str
    part: Path


class ClaimLostError(UnavailableError):
    """The transfer's claim was settled by another process (it outlived `claim_timeout`)."""


def _translate(e: OSError, what: str) -> Exception:
    return disk_full(e, f"writing the transfer ledger ({what})")


class TransferLedger:
    _held: ClassVar[set[str]] = set()
    """Part files whose claim a transfer of this process holds (whichever ledger instance)."""
    _held_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, retention: float = DEFAULT_RETENTION, compact_bytes: int = 4 << 20,
                 clock: Callable[[], float] = time.time, claim_timeout: float = DEFAULT_CLAIM_TIMEOUT) -> None:
        self.path = Path(path)
        self.retention = retention
        self.compact_bytes = compact_bytes
        self.claim_timeout = claim_timeout
        self._clock = clock
        self._owner = this_owner()
        self._entries: dict[str, Entry] = {}
        self._parts_to_drop: list[Path] = []
        """Part files a compaction settled as never published: deleted once the new file is in place."""
        self._fd = -1
        self._ino = -1
        self._offset = 0
        self._tail = b""
        self._compact_at = compact_bytes

    def open(self) -> None:
        """Read the file and settle what dead transfers left (their part files go): a receiver
        process restarted alone (the supervisor lives on) does it, not only the node's start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            for key in [k for k, e in self._entries.items() if e.state in (State.CLAIM, State.PUBLISH)]:
                self._resolve_locked(key)

    def close(self) -> None:
        """Close the file (a later call opens and reads it again)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._ino = -1

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
            self._entries.clear()
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
            parsed = _parse(line.decode("utf-8", "replace"))
            if parsed is not None:
                self._entries[parsed[0]] = parsed[1]

    def _append_locked(self, key: str, entry: Entry, sync: bool = False) -> None:
        """Append `entry` (OverLimitsError when the disk is full); it then is the key's state. Only
        a `publish` line must be on disk before what follows it (the rename); the others may be
        lost with the machine: a lost claim or `free` line leaves a dead claim or nothing, a lost
        DONE line leaves its `publish` line, which says the same."""
        line = entry.line(key)
        if self._tail:  # never glue a line onto a torn one
            line = b"\n" + line
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                os.fsync(self._fd)
        except OSError as e:  # what was written is read back (a torn line is set aside) next time
            raise _translate(e, f"{entry.state.name} of {key}") from e
        self._tail = b""
        self._offset += len(line)
        self._entries[key] = entry

    def _maybe_compact_locked(self) -> None:
        """Compact when the file outgrew its limit; only between the steps of transfers, never
        between a `publish` line and its rename."""
        if self._offset <= self._compact_at:
            return
        try:
            self._compact_locked()
        except OSError as e:  # the appends go on into the file as it is
            self._compact_at = max(self.compact_bytes, 2 * self._offset)
            log.warning("transfer ledger: cannot compact (%s)", e)

    # -- resolution -------------------------------------------------------------------------

    def _busy(self, entry: Entry) -> bool:
        if self._clock() - entry.stamp >= self.claim_timeout:
            return False
        if entry.owner == self._owner:
            with self._held_lock:
                return entry.part in self._held
        return owner_alive(entry.owner)

    def _resolve_locked(self, key: str, durable: bool = True) -> State:
        """What `key` is now: DONE, CLAIM (busy) or FREE; settles the entries of dead owners."""
        entry = self._entries.get(key)
        if entry is None or entry.state is State.FREE:
            return State.FREE
        if entry.state is State.DONE:
            return State.DONE if self._clock() - entry.stamp < self.retention else State.FREE
        if entry.state is State.CLAIM and self._busy(entry):
            return State.CLAIM
        part = Path(entry.part)
        if entry.state is State.CLAIM or part.exists():  # never renamed: what it received goes
            if entry.state is State.PUBLISH and durable:
                # Say FREE on disk before the part goes: another process that read `publish` and
                # found no part would take the key for DONE, and refuse the resend (a loss).
                try:
                    self._append_locked(key, Entry(entry.stamp, State.FREE), sync=True)
                except (OverLimitsError, OSError) as e:
                    log.warning("transfer %s: cannot note it free (%s); its part file stays, which says the same",
                                key, e)
                    return State.FREE
            if part.name.endswith(PART_SUFFIX):  # nothing else, whatever the file says
                if durable:
                    part.unlink(missing_ok=True)
                else:  # compaction: once the new file (without the `publish` line) is in place
                    self._parts_to_drop.append(part)
            self._entries[key] = Entry(entry.stamp, State.FREE)
            log.info("transfer %s: %s by %s settled: never published (%s removed)", key, entry.state.value,
                     entry.owner, part.name)
            return State.FREE
        done = Entry(entry.stamp, State.DONE)
        log.info("transfer %s: published by %s, which did not note it: DONE", key, entry.owner)
        if durable:
            try:
                self._append_locked(key, done)
            except (OverLimitsError, OSError) as e:
                log.warning("transfer %s: cannot note it DONE (%s); its publish line stands for it", key, e)
        self._entries[key] = done
        return State.DONE if self._clock() - done.stamp < self.retention else State.FREE

    # -- the transfer's steps ---------------------------------------------------------------

    def claim(self, key: str, part: Path) -> Claim:
        """Claim `key` for a transfer into `part` (a file not yet created). AlreadyExistsError
        when it was published, UnavailableError while another transfer holds it, OverLimitsError
        when the ledger's disk is full."""
        part = Path(os.path.abspath(part))  # every receiver process reads the same path
        with self._locked():
            state = self._resolve_locked(key)
            if state is State.DONE:
                raise AlreadyExistsError(f"segment {key} was accepted before")
            if state is State.CLAIM:
                raise UnavailableError(f"segment {key} is being received on another call; retry", RETRY_SECONDS)
            self._append_locked(key, Entry(self._clock(), State.CLAIM, self._owner, str(part)))
            with self._held_lock:
                self._held.add(str(part))
            self._maybe_compact_locked()
        return Claim(key, part)

    def publish(self, claim: Claim, rename: Callable[[], T]) -> T:
        """Publish the claimed segment: `rename` moves the part to its final name (under the
        lock, after the `publish` line is on disk). Before `rename` runs, an error means nothing
        was published; from `rename` on, the outcome is on disk (see the table above). A DONE
        line that cannot be written afterwards is only logged: the rows are published."""
        try:
            with self._locked():
                entry = self._entries.get(claim.key)
                if entry is None or (entry.state, entry.owner, entry.part) != (State.CLAIM, self._owner,
                                                                                 str(claim.part)):
                    raise ClaimLostError(f"segment {claim.key}: the claim was taken over (older than "
                                           f"{self.claim_timeout:.0f}s); retry", RETRY_SECONDS)
                self._append_locked(claim.key, Entry(self._clock(), State.PUBLISH, self._owner, str(claim.part)),
                                    sync=True)
                result = rename()
                done = Entry(self._clock(), State.DONE)
                try:
                    self._append_locked(claim.key, done)
                except (OverLimitsError, OSError) as e:
                    self._entries[claim.key] = done
                    log.warning("transfer %s published, but its DONE line cannot be written (%s); the publish line "
                                "stands for it", claim.key, e)
                self._maybe_compact_locked()
                return result
        finally:
            with self._held_lock:
                self._held.discard(str(claim.part))

    def release(self, claim: Claim) -> None:
        """Give the claim up (the transfer failed before its rename; its part file is deleted
        first). A `free` line that cannot be written leaves a claim that is stale for this
        process at once and for the others after `claim_timeout`."""
        try:
            with self._locked():
                entry = self._entries.get(claim.key)
                if entry is not None and (entry.state, entry.owner, entry.part) == (State.CLAIM, self._owner,
                                                                                     str(claim.part)):
                    self._append_locked(claim.key, Entry(self._clock(), State.FREE))
        except (OverLimitsError, OSError) as e:
            log.warning("transfer %s: cannot free its claim (%s)", claim.key, e)
        finally:
            with self._held_lock:
                self._held.discard(str(claim.part))

    # -- lookups and upkeep -----------------------------------------------------------------

    def seen(self, key: str) -> bool:
        """Whether `key` was published (by any process of this node) within the retention."""
        with self._locked():
            return self._resolve_locked(key) is State.DONE

    def record(self, key: str) -> None:
        """Note `key` as published, durably."""
        with self._locked():
            self._append_locked(key, Entry(self._clock(), State.DONE), sync=True)
            self._maybe_compact_locked()

    def compact(self) -> int:
        """Rewrite the file with the entries within the retention and the busy claims; return how
        many are kept."""
        with self._locked():
            return self._compact_locked()

    def _compact_locked(self) -> int:
        now = self._clock()
        keep = {}
        self._parts_to_drop = []
        for key in list(self._entries):
            state = self._resolve_locked(key, durable=False)
            entry = self._entries[key]
            if state is State.CLAIM or (state is State.DONE and now - entry.stamp < self.retention):
                keep[key] = entry
        atomic_write(self.path, b"".join(e.line(k) for k, e in keep.items()))
        self.close()
        self._ino = -1
        self._catch_up()
        for part in self._parts_to_drop:
            part.unlink(missing_ok=True)
        self._parts_to_drop.clear()
        self._compact_at = max(self.compact_bytes, 2 * self._offset)
        log.info("transfer ledger compacted: %d entries kept", len(keep))
        return len(keep)
