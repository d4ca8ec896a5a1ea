"""The journal: one block for a request that writes many tables, split into their segments later.

A request that writes N tables costs N blocks in their segments: N compressions, N CRCs and N
writes into N files, ~20 us each whatever the block holds. A Prometheus shard's request touches
hundreds of tables with a few rows each, so its cost is nearly all per block. Such a request is
written instead as one block of a journal file (one compression, one CRC, one write into a file
the process keeps open), and acknowledged once it is there. A round (`Repository.split_journal`,
every few seconds) then appends the rows the journal holds to the tables' segments, one block a
table for every request of the round, and deletes the journal.

File (`<wal dir>/active/<id>.journal`; `id` is a segment id of the writing process, so its host
bits say which process wrote it)::

    magic "ADXJRN" 00 00, then blocks framed as a segment's: len u32, crc u32, a Snappy payload

A payload, decompressed, is entries back to back (integers big-endian)::

    db_len u16 | table_len u16 | sid_len u16 | database | table | schema id (UTF-8)
    kind u8 | count u32 | line_len u32 | data_len u32 | schema line | rows (CSV, as a segment
    block's value holds them)

Exactly once, through a crash at any point. A round splits one journal. Holding the locks of the
tables it writes, it:

1. writes a manifest (`<id>.manifest`, to `.tmp` then renamed): the journal's name, then the file
   name and size of every segment it will append to (a segment it creates is listed at its magic);
2. appends the rows to those segments;
3. deletes the journal: the commit. Then it lets the tables go, and deletes the manifest.

At start, a manifest whose journal is gone is deleted (the round committed). A manifest whose
journal is still there is undone: its segments are cut back to the sizes it lists, and the journal
is split again as if nothing had happened. No other write reaches those segments in between, as
the round holds their tables' locks until its commit. A journal without a manifest is split. A
journal's torn tail (a process killed mid-write) is a request that was never acknowledged, and
is dropped as a segment's torn tail is.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from node.errors import CorruptionError
from node.storage import fsync_dir
from node.wal import codec
from node.wal import format as fmt
from node.wal.segment import SegmentWriter

MAGIC = b"ADXJRN\x00\x00"
SUFFIX = ".journal"
MANIFEST_SUFFIX = ".manifest"
_KEY = struct.Struct(">HHH")
HEAD = struct.Struct(">BIII")
"""An entry's kind, count, schema line length and rows length."""


class JournalWriter(SegmentWriter):
    """An open journal file: a segment's writer with the journal's magic (its blocks are framed
    alike, and a failed write is cut back alike)."""

    __slots__ = ()
    MAGIC = MAGIC


def table_key(database: str, table: str, sid: str | None) -> bytes:
    """The names part of an entry: made once a table (`TableWal.journal_key`)."""
    db, tb, sc = database.encode(), table.encode(), (sid or "").encode()
    return _KEY.pack(len(db), len(tb), len(sc)) + db + tb + sc


def encode_record(parts: list[bytes | bytearray]) -> tuple[bytes, bytes]:
    """A journal block of entries (each `table_key`, `HEAD`, schema line, rows) as (header, payload)."""
    payload = codec.compress(b"".join(parts))
    return fmt.BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)), payload


@dataclass(frozen=True, slots=True)
class Entry:
    """One table's rows of one request, as a journal holds them."""

    database: str
    table: str
    sid: str | None
    kind: int
    count: int
    line: bytes
    data: bytes


def decode_record(raw: bytes, offset: int = 0) -> Iterator[Entry]:
    """The entries of a decompressed journal block; FormatError (at the block's `offset`) when
    its bytes are not entries."""
    pos, end = 0, len(raw)
    try:
        while pos < end:
            ndb, ntb, nsc = _KEY.unpack_from(raw, pos)
            pos += _KEY.size
            database = raw[pos:pos + ndb].decode()
            table = raw[pos + ndb:pos + ndb + ntb].decode()
            sid = raw[pos + ndb + ntb:pos + ndb + ntb + nsc].decode() or None
            pos += ndb + ntb + nsc
            kind, count, nline, ndata = HEAD.unpack_from(raw, pos)
            pos += HEAD.size
            line, data = raw[pos:pos + nline], raw[pos + nline:pos + nline + ndata]
            pos += nline + ndata
            if pos > end:
                raise ValueError("an entry runs past the block's end")
            yield Entry(database, table, sid, kind, count, line, data)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise fmt.FormatError(offset, f"not journal entries: {e}") from e


@dataclass
class JournalRead:
    """What `read` found in a journal file."""

    entries: list[Entry]
    good_end: int
    """Where its last whole block ends."""
    error: str | None = None
    """Why it stops there, when it does not end with a whole block (a torn tail)."""
    blocks: int = 0
    """Whole blocks: requests."""


def read(path: Path) -> JournalRead:
    """Every entry of a journal file up to its first torn or corrupt block (nothing after one is
    trusted, as in a segment)."""
    buf = path.read_bytes()
    if len(buf) < len(MAGIC) or buf[:len(MAGIC)] != MAGIC:
        return JournalRead([], 0, "no journal magic")
    entries: list[Entry] = []
    good_end = len(MAGIC)
    blocks = 0
    try:
        for block in fmt.iter_raw_blocks(buf, len(MAGIC)):
            try:
                raw = codec.decompress(block.payload)
            except codec.CodecError as e:
                raise fmt.FormatError(block.offset, f"payload does not decompress: {e}") from e
            entries.extend(decode_record(raw, block.offset))
            good_end = block.end
            blocks += 1
    except fmt.FormatError as e:
        return JournalRead(entries, good_end, str(e), blocks)
    return JournalRead(entries, good_end, None, blocks)


def journal_id(path: Path) -> str:
    """The id in a journal's or a manifest's file name."""
    return path.name.split(".", 1)[0]


def manifest_path(journal: Path) -> Path:
    return journal.with_name(journal_id(journal) + MANIFEST_SUFFIX)


def write_manifest(journal: Path, segments: Iterable[tuple[str, int]], sync: bool) -> Path:
    """Step 1 of a round: the journal it splits, and each segment's name and size before it."""
    path = manifest_path(journal)
    tmp = path.with_name(path.name + ".tmp")
    text = "".join(f"{name} {size}\n" for name, size in segments)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{journal.name}\n{text}")
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)
    return path


def read_manifest(path: Path) -> tuple[str, list[tuple[str, int]]]:
    """A manifest's journal name and segments; CorruptionError when it is not one (a manifest is
    renamed into place whole, so a torn one was never published)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].endswith(SUFFIX):
        raise CorruptionError(path, 0, "not a journal manifest")
    segments = []
    for line in lines[1:]:
        name, _, size = line.rpartition(" ")
        if not name or not size.isdigit() or "/" in name:
            raise CorruptionError(path, 0, f"bad line {line[:200]!r}")
        segments.append((name, int(size)))
    return lines[0], segments


def undo(manifest: Path) -> tuple[Path | None, int]:
    """Undo what a round killed before its commit appended (see the module's docstring): cut each
    segment it lists back to its size before, when its journal is still there. Returns (the
    journal to split again, or None when the round had committed; bytes cut). The manifest is
    left for the caller to delete once the journal is split again."""
    name, segments = read_manifest(manifest)
    journal = manifest.with_name(name)
    if not journal.exists():
        return None, 0
    cut = 0
    for seg, size in segments:
        path = manifest.with_name(seg)
        try:
            now = path.stat().st_size
        except FileNotFoundError:
            continue
        if now > size:
            os.truncate(path, size)
            cut += now - size
    return journal, cut
