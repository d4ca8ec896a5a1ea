"""Adopting an adx-mon volume: the segments adx-mon's ingestor left directly in `--storage-dir`.

adx-mon keeps every segment, the one being written and the closed ones alike, directly in its
`--storage-dir` as `<Database>_<Table>[_<Schema>]_<Id>.wal` (pkg/wal/segment.go); it keeps no index
on disk (pkg/wal/index.go is in memory), and versions before November 2023 received transfers into
`<name>.wal.tmp` beside them (ingestor/storage/store.go). This node keeps its segments in
`<storage-dir>/wal/` (node/storage.py). So when a StatefulSet's image is swapped from adx-mon to
this node, the volume holds adx-mon's segments where this node does not look: the supervisor's
recovery (`Repository.start(recover=True)`) adopts them.

Each file directly in the storage directory is decided on by its name and first bytes (`decide`,
pure):

- the node's own entries (`StorageLayout.own_entries`) and directories: not looked at;
- a file whose name does not end in `.wal`, or whose bytes cannot begin a segment (not `ADXWAL`):
  not a segment, left alone and listed in one INFO line (adx-mon's `*.wal.tmp` are these);
- a would-be segment whose name `node/wal/names.py` does not parse: moved to `quarantine/`, never
  deleted, with one WARNING line for all of them;
- a segment: checked block by block and repaired as recovery repairs one (`node/wal/segment.py`:
  a torn or corrupt tail is cut at the last good block, fsynced; one holding no block is deleted),
  then renamed into `wal/` and handed back to be indexed as a closed segment.

Names and ids. adx-mon's id field is a flake id of the same layout as ours (davidnarayan/go-flake:
41 bits of ms since 2014-01-01, 10 of host id, 13 of sequence) written with `strconv.FormatUint(id,
16)`: lowercase hex without zero padding, which is 16 digits for every id made after May 2018. So a
segment keeps its name, and with it its creation time (the batcher's age) and its place in its
table's order. Only a name already taken in `wal/` (an id of the same millisecond, host bits and
sequence) gives the segment a new id of this node; its rows are kept as they are.

Crashes. Repair happens in place before the rename, and is idempotent. The rename is atomic on one
file system: whenever the process dies, each segment is under one of its two names, never both and
never neither. The next start finds it in the storage directory (adopted then; its repair is done
already) or in `wal/` (recovered as the node's own); nothing is adopted twice. `wal/` and the
storage directory are fsynced once the renames are done.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from node.errors import InvalidNameError
from node.storage import StorageLayout, atomic_write, fsync_dir
from node.wal import format as fmt
from node.wal.names import SegmentName, parse_filename
from node.wal.segment import repair, scan
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)

SUFFIX = ".wal"
LISTED = 10
"""Names listed in one log line at most; the rest are counted."""


class Verdict(enum.Enum):
    OURS = "ours"
    """An entry of the node's own layout: not looked at."""
    NOT_SEGMENT = "not a segment"
    """Left alone and logged."""
    BAD_NAME = "bad name"
    """Bytes of a segment under a name that does not parse: quarantined."""
    SEGMENT = "segment"
    """Adopted: verified, repaired, renamed into the WAL directory."""


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    verdict: Verdict
    segment: SegmentName | None = None
    reason: str = ""


def could_be_segment(head: bytes) -> bool:
    """Whether a file's first bytes (up to 8) can begin a segment: the magic, or a torn part of it
    (adx-mon creates the file, then writes the magic)."""
    n = min(len(head), len(fmt.MAGIC_PREFIX))
    return head[:n] == fmt.MAGIC_PREFIX[:n]


def decide(name: str, head: bytes, *, regular: bool, own: Collection[str]) -> Decision:
    """What to do with the entry `name` found directly in the storage directory; `head`: its first
    bytes (up to 8), `regular`: whether it is a regular file (not followed if a link)."""
    if name in own:
        return Decision(name, Verdict.OURS)
    if not regular:
        return Decision(name, Verdict.NOT_SEGMENT, reason="not a regular file")
    if not name.endswith(SUFFIX):
        return Decision(name, Verdict.NOT_SEGMENT, reason="not a .wal file")
    if not could_be_segment(head):
        return Decision(name, Verdict.NOT_SEGMENT, reason="not a segment: bad magic")
    try:
        segment = parse_filename(name)
    except InvalidNameError as e:
        return Decision(name, Verdict.BAD_NAME, reason=str(e))
    return Decision(name, Verdict.SEGMENT, segment)


def destination(name: SegmentName, taken: Callable[[str], bool], new_id: Callable[[], str]) -> SegmentName:
    """The name an adopted segment takes in the WAL directory: its own, unless that is `taken`,
    then the same table and schema with ids from `new_id` until one is free."""
    while taken(name.filename):
        name = SegmentName(name.database, name.table, name.schema, new_id())
    return name


def quarantine_name(name: str, taken: Callable[[str], bool]) -> str:
    """`name`, or `name.1`, `name.2`... : the first not `taken` in the quarantine."""
    candidate, n = name, 0
    while taken(candidate):
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def listing(names: Sequence[str]) -> str:
    """`a, b, c` or `a, ..., j and 5 more`."""
    shown = ", ".join(names[:LISTED])
    return shown if len(names) <= LISTED else f"{shown} and {len(names) - LISTED} more"


def adopted_line(count: int, nbytes: int, repaired: int, directory: Path) -> str:
    return f"adopted {count} segments ({nbytes} bytes, {repaired} repaired) that adx-mon left in {directory}"


@dataclass
class Adoption:
    """What adoption did: the segments now in the WAL directory, to be indexed as closed."""

    segments: list[SegmentInfo] = field(default_factory=list)
    repaired: int = 0
    truncated_bytes: int = 0
    deleted_empty: int = 0
    quarantined: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(i.size for i in self.segments)

    def count_into(self, report: Report) -> None:
        """Add what adoption did to the recovery's report (`RecoveryReport`)."""
        report.adopted += len(self.segments)
        report.segments += len(self.segments)
        report.repaired += self.repaired
        report.truncated_bytes += self.truncated_bytes
        report.deleted_empty += self.deleted_empty


class Report(Protocol):
    """The counts of node/wal/repository.py's RecoveryReport that adoption adds to."""

    adopted: int
    segments: int
    repaired: int
    truncated_bytes: int
    deleted_empty: int


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(fmt.MAGIC))


def adopt(wal_dir: Path, new_id: Callable[[], str], on_repair: Callable[[int], None] | None = None) -> Adoption:
    """Adopt the segments adx-mon left in the storage directory of the WAL directory `wal_dir`
    (nothing when `wal_dir` is not a storage directory's `wal/`). `new_id` makes a segment id for
    a name already taken; `on_repair` is told the bytes cut from each repaired segment.

    A file that cannot be moved (an error of the file system) stays where it is, logged at ERROR;
    the next start tries again.
    """
    done = Adoption()
    layout = StorageLayout.of_wal(wal_dir)
    if layout is None:
        return done
    root = layout.root
    own = layout.own_entries
    decisions: list[Decision] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in own or entry.is_dir(follow_symlinks=False):
            continue
        regular = entry.is_file(follow_symlinks=False)
        try:
            head = _head(Path(entry.path)) if regular and entry.name.endswith(SUFFIX) else b""
        except OSError as e:
            log.error("cannot read %s: %s; left where it is", entry.path, e)
            done.failed.append(entry.name)
            continue
        decisions.append(decide(entry.name, head, regular=regular, own=own))

    for d in decisions:
        path = root / d.name
        try:
            if d.verdict is Verdict.NOT_SEGMENT:
                done.left_alone.append(d.name)
            elif d.verdict is Verdict.BAD_NAME:
                _quarantine(path, layout.quarantine, d.reason, done)
            elif d.segment is not None:
                _adopt_one(path, d.segment, wal_dir, new_id, on_repair, done)
        except OSError as e:
            log.error("could not adopt %s that adx-mon left: %s; left where it is, tried again at the next start",
                      path, e)
            done.failed.append(d.name)

    if done.segments or done.deleted_empty:
        fsync_dir(wal_dir)
        fsync_dir(root)
    if done.quarantined:
        fsync_dir(layout.quarantine)
        fsync_dir(root)
        log.warning("moved %d files that adx-mon left in %s to %s: their names are not segment names "
                    "(<Database>_<Table>[_<SchemaHash>]_<SegmentId>.wal): %s", len(done.quarantined), root,
                    layout.quarantine, listing(done.quarantined))
    if done.left_alone:
        log.info("left alone %d files in %s that are neither segments nor the node's own: %s", len(done.left_alone),
                 root, listing(done.left_alone))
    if done.deleted_empty:
        log.info("deleted %d segments that adx-mon left in %s holding no block", done.deleted_empty, root)
    if done.segments:
        log.info("%s", adopted_line(len(done.segments), done.nbytes, done.repaired, root))
    return done


def _adopt_one(path: Path, name: SegmentName, wal_dir: Path, new_id: Callable[[], str],
               on_repair: Callable[[int], None] | None, done: Adoption) -> None:
    """Verify and repair one segment in place, then rename it into the WAL directory."""
    result = scan(path)
    if result.error is not None and result.good_end > 0:
        cut = repair(result.error)
        done.repaired += 1
        done.truncated_bytes += cut
        if on_repair is not None:
            on_repair(cut)
    if result.good_end <= len(fmt.MAGIC):  # the magic or less: no block to keep
        path.unlink()
        done.deleted_empty += 1
        return
    final = destination(name, lambda n: os.path.lexists(wal_dir / n), new_id)
    if final != name:
        log.info("adx-mon's segment %s is adopted as %s: its name is taken in %s", path.name, final.filename,
                 wal_dir)
    target = wal_dir / final.filename
    os.rename(path, target)
    done.segments.append(SegmentInfo(target, final, result.good_end, result.blocks, result.rows))


def _quarantine(path: Path, quarantine: Path, reason: str, done: Adoption) -> None:
    quarantine.mkdir(parents=True, exist_ok=True)
    name = quarantine_name(path.name, lambda n: os.path.lexists(quarantine / n)
                           or os.path.lexists(quarantine / f"{n}.reason.txt"))
    os.rename(path, quarantine / name)
    done.quarantined.append(path.name)
    atomic_write(quarantine / f"{name}.reason.txt",
                 f"adx-mon left {path.name} in {path.parent}; moved here at start, never deleted: {reason}\n",
                 durable=False)
