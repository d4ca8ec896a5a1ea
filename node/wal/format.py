"""The segment file format of adx-mon's WAL: pure encoding and decoding, no I/O.

File::

    +--------------------------------------+
    | magic: 8 bytes  41 44 58 57 41 4C 00 00 ("ADXWAL" + 2 reserved zero bytes)
    +--------------------------------------+
    | block 0 | block 1 | ...              |
    +--------------------------------------+

Block (all integers big-endian)::

    +-----------+-----------+--------------------------------------------+
    | len  u32  | crc  u32  | payload: `len` bytes, a compressed block   |
    +-----------+-----------+--------------------------------------------+

`crc` is CRC-32 (IEEE, `zlib.crc32`) of the compressed payload. The payload is an S2 block; this
project writes plain Snappy blocks (a subset of S2). Decompressed, a payload is::

    +-----------+---------+---------+------------+-----------------------------+
    | AA AA     | ver u8  | type u8 | count u32  | value: the rows, CSV text   |
    +-----------+---------+---------+------------+-----------------------------+

The 8-byte sample header is optional on read: a payload whose first two bytes are not `AA AA` is
all value (older writers). A writer of this project always writes it. In a segment whose file name
has a schema part, each block's value may begin with one CSV header line (`Name:type,...`).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from node.wal import codec

MAGIC = b"ADXWAL\x00\x00"
MAGIC_PREFIX = b"ADXWAL"
BLOCK_HEADER = struct.Struct(">II")
SAMPLE_HEADER = struct.Struct(">2sBBI")
SAMPLE_MAGIC = b"\xaa\xaa"
SAMPLE_VERSION = 1

KIND_UNKNOWN, KIND_METRIC, KIND_TRACE, KIND_LOG = 0, 1, 2, 3

# A block larger than this is not believed: it protects readers from a corrupt length field.
MAX_BLOCK_LEN = 256 << 20

_SCHEMA_LINE = re.compile(rb"[A-Za-z0-9_]+:[A-Za-z0-9]+(?:,[A-Za-z0-9_]+:[A-Za-z0-9]+)*\r?\n")


class FormatError(ValueError):
    """Bytes that are not what the format says, with the offset where they go wrong."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sample:
    """A decompressed block: its sample header fields and its value (CSV text)."""

    kind: int
    count: int
    value: bytes
    has_header: bool = True


def encode_sample(kind: int, count: int, value: bytes | bytearray | memoryview, prefix: bytes = b"") -> bytes:
    """Sample header, then `prefix` (a schema line), then the value: ready to be compressed."""
    return b"".join((SAMPLE_HEADER.pack(SAMPLE_MAGIC, SAMPLE_VERSION, kind, count), prefix, value))


def decode_sample(raw: bytes) -> Sample:
    """Split a decompressed payload into header fields and value."""
    if len(raw) >= SAMPLE_HEADER.size and raw[:2] == SAMPLE_MAGIC:
        _, _version, kind, count = SAMPLE_HEADER.unpack_from(raw)
        return Sample(kind, count, raw[SAMPLE_HEADER.size :])
    return Sample(KIND_UNKNOWN, raw.count(b"\n"), raw, has_header=False)


def encode_block(kind: int, count: int, value: bytes | bytearray | memoryview,
                 prefix: bytes = b"") -> tuple[bytes, bytes]:
    """One block as (8-byte block header, compressed payload); written back to back."""
    payload = codec.compress(encode_sample(kind, count, value, prefix))
    return BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)), payload


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A framed block found in a buffer: where it starts, ends, and its compressed payload."""

    offset: int
    end: int
    payload: memoryview


def iter_raw_blocks(buf: bytes | bytearray | memoryview, start: int = len(MAGIC)) -> Iterator[RawBlock]:
    """Yield the framed, CRC-checked blocks of `buf` from `start`.

    Raises FormatError at the first short header, short payload, implausible length or CRC
    mismatch: nothing after a bad block is trusted, so iteration stops there.
    """
    view = memoryview(buf)
    try:
        yield from _iter_raw_blocks(view, start)
    finally:
        view.release()


def _iter_raw_blocks(view: memoryview, start: int) -> Iterator[RawBlock]:
    offset, size = start, len(view)
    while offset < size:
        if size - offset < BLOCK_HEADER.size:
            raise FormatError(offset, f"torn block header ({size - offset} of {BLOCK_HEADER.size} bytes)")
        length, crc = BLOCK_HEADER.unpack_from(view, offset)
        if length == 0 or length > MAX_BLOCK_LEN:
            raise FormatError(offset, f"bad block length {length}")
        body = offset + BLOCK_HEADER.size
        if size - body < length:
            raise FormatError(offset, f"torn payload ({size - body} of {length} bytes)")
        payload = view[body : body + length]
        if zlib.crc32(payload) != crc:
            raise FormatError(offset, "CRC mismatch")
        yield RawBlock(offset, body + length, payload)
        offset = body + length


def check_magic(buf: bytes | bytearray | memoryview) -> None:
    """Raise FormatError unless `buf` starts with the segment magic."""
    if len(buf) < len(MAGIC):
        raise FormatError(0, f"truncated magic ({len(buf)} of {len(MAGIC)} bytes)")
    if bytes(buf[: len(MAGIC_PREFIX)]) != MAGIC_PREFIX:
        raise FormatError(0, "not a segment: bad magic")


def decode_payload(block: RawBlock) -> Sample:
    """Decompress a framed block; FormatError at the block's offset when it does not decompress."""
    try:
        return decode_sample(codec.decompress(block.payload))
    except codec.CodecError as e:
        raise FormatError(block.offset, f"payload does not decompress: {e}") from e


def count_records(value: bytes) -> int:
    """The CSV records in `value` (RFC 4180: a line break inside a quoted field is not the end of a
    record); empty lines are not records. A line whose `"` are even in number ends a record when
    every line before it does, so a block whose lines all hold an even number of `"` (every block
    without a line break inside a field) is counted line by line; the others quote by quote."""
    lines = value.split(b"\n")
    for line in lines:
        if line.count(b'"') & 1:
            break
    else:
        return sum(1 for line in lines if line and line != b"\r")
    outside = b"".join(value.split(b'"')[::2])  # the text between quoted parts
    return outside.count(b"\n") + (0 if value.endswith(b"\n") or not value.strip() else 1)


def rows_of(sample: Sample) -> int:
    """The rows a block holds: the count its header declares, or, when it declares 0 (adx-mon's
    metrics and native logs writers do), its CSV records, its schema line aside."""
    return sample.count or count_records(strip_schema_line(sample.value)[1])


def strip_schema_line(value: bytes) -> tuple[bytes | None, bytes]:
    """Split a leading `Name:type,...` CSV header line off a block value."""
    m = _SCHEMA_LINE.match(value)
    if m is None:
        return None, value
    return value[: m.end()], value[m.end() :]
