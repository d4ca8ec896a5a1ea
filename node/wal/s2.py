"""A pure-Python decoder for S2 *blocks* (klauspost/compress ``s2``, block format, not the stream).

S2 is a superset of the Snappy block format. A block is the decoded length as an unsigned
little-endian base-128 varint (at most 5 bytes, at most 2**32 - 1), followed by a sequence of
elements. Each element starts with a tag byte whose two low bits select its kind::

    tag byte       7   6   5   4   3   2   1   0
                 +---+---+---+---+---+---+---+---+
    literal      |       n = len - 1     | 0   0 |  n < 60: the n + 1 bytes follow
                 |    60, 61, 62, 63     | 0   0 |  then len - 1 as 1, 2, 3, 4 bytes (LE), then the bytes
                 +---+---+---+---+---+---+---+---+
    copy1        | off 10..8 |  len - 4  | 0   1 |  + 1 byte: off 7..0     (len 4..11, off 1..2047)
                 +---+---+---+---+---+---+---+---+
    repeat (S2)  | 0   0   0 |   code    | 0   1 |  + 1 byte 0x00 (a copy1 whose offset is 0),
                 |           |           |       |  then 0-3 bytes of length (LE), by code:
                 |           |           |       |    0..4: len = code + 4   (no extra byte)
                 |           |           |       |    5: len = 8 + u8,  6: len = 260 + u16,
                 |           |           |       |    7: len = 65540 + u24
                 +---+---+---+---+---+---+---+---+
    copy2        |       len - 1         | 1   0 |  + 2 bytes: offset (LE)  (len 1..64)
                 +---+---+---+---+---+---+---+---+
    copy4        |       len - 1         | 1   1 |  + 4 bytes: offset (LE)  (len 1..64)
                 +---+---+---+---+---+---+---+---+

A copy repeats ``len`` bytes that start ``offset`` bytes before the current end of the output; the
ranges may overlap (offset < len), which repeats the last ``offset`` bytes as a pattern. A repeat
is a copy with the offset of the previous copy (copy1, copy2 or copy4). The offset starts at 0 in
every block, so a repeat before any copy is invalid, as is any copy whose offset is 0 (a copy2 or
copy4 with offset 0) or points before the start of the output. The elements must produce exactly
the decoded length: not a byte more, not a byte less, and nothing may follow.

These semantics follow the reference Go decoder (``s2Decode`` in ``decode_other.go``), including
what it tolerates: length fields wider than needed (a 5-byte literal header for a 4-byte literal,
a non-minimal varint header), copy2/copy4 lengths below 4 and offsets any copy form could hold.

Use :func:`decode_block`; every malformed input raises :class:`S2DecodeError`, a ``ValueError``.
The decoder allocates the declared length once (after checking it against ``max_output``, by
default the segment format's block limit, and against the most that the input could possibly
expand to), and every element consumes at least one input byte, so it always terminates.
:func:`declared_length` reads the header alone, for a caller that checks (or budgets) a block's
decoded size before anything decodes it.
"""

from __future__ import annotations

__all__ = ["MAX_HEADER_BYTES", "MAX_OUTPUT", "S2DecodeError", "declared_length", "decode_block"]

#: The decoded-length varint is at most this many bytes long (and at most 2**32 - 1).
MAX_HEADER_BYTES = 5
_MAX_DECLARED = 0xFFFF_FFFF
MAX_OUTPUT = 256 << 20
"""The default ``max_output``: the segment format's block limit (``format.MAX_BLOCK_LEN``). A
block that declares more is not believed, whatever its input could expand to (a 340-byte block of
repeats can declare a gigabyte)."""

# The most output any element yields per input byte: a 5-byte repeat of 65540 + 0xFFFFFF bytes.
# A block body of n bytes can therefore never produce more than n * _MAX_EXPANSION bytes; a header
# that claims more is rejected before anything is allocated.
_MAX_REPEAT_LEN = 65540 + 0xFFFFFF
_MAX_EXPANSION = -(-_MAX_REPEAT_LEN // 5)


class S2DecodeError(ValueError):
    """A block that is not a valid S2 block; ``offset`` is where in the input the problem is."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"s2: corrupt block: {reason} (at input offset {offset})")
        self.reason = reason
        self.offset = offset


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview):
        return data.tobytes()
    if isinstance(data, bytearray):
        return bytes(data)
    raise TypeError(f"decode_block() wants bytes, bytearray or memoryview, not {type(data).__name__}")


def declared_length(src: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The declared decoded length and the offset of the first element: the block's header alone,
    nothing allocated. S2DecodeError for a header that is truncated, too long or over 2**32 - 1."""
    if not isinstance(src, bytes | bytearray | memoryview):
        raise TypeError(f"an S2 block is bytes, bytearray or memoryview, not {type(src).__name__}")
    value = 0
    for i in range(min(len(src), MAX_HEADER_BYTES)):
        byte = src[i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if value > _MAX_DECLARED:
                raise S2DecodeError(f"declared length {value} is over 2**32 - 1", 0)
            return value, i + 1
    if len(src) < MAX_HEADER_BYTES:
        raise S2DecodeError(f"truncated length header ({len(src)} bytes)", 0)
    raise S2DecodeError(f"length header longer than {MAX_HEADER_BYTES} bytes", 0)


def decode_block(data: bytes | bytearray | memoryview, max_output: int = MAX_OUTPUT) -> bytes:
    """Decode one S2 (or Snappy) block and return the decoded bytes.

    Raises :class:`S2DecodeError` for any malformed block, including one whose declared decoded
    length is over ``max_output``.
    """
    declared, s = declared_length(data)
    if declared > max_output:  # before the input is even copied
        raise S2DecodeError(f"declared length {declared} is over the limit of {max_output}", 0)
    src = _as_bytes(data)
    n = len(src)
    if declared > (n - s) * _MAX_EXPANSION:
        raise S2DecodeError(f"declared length {declared} is more than {n - s} input bytes can yield", 0)

    out = bytearray(declared)
    d = 0  # bytes of output written so far
    offset = 0  # the offset of the last copy, which a repeat reuses; none yet
    while s < n:
        t = s  # where this element starts, for error messages
        tag = src[s]
        kind = tag & 3

        if kind == 0:  # literal
            x = tag >> 2
            if x < 60:
                s += 1
            else:
                width = x - 59
                s += 1 + width
                if s > n:
                    raise S2DecodeError(f"truncated literal length ({width} bytes wanted)", t)
                x = int.from_bytes(src[s - width : s], "little")
            length = x + 1
            if length > declared - d:
                raise S2DecodeError(
                    f"literal of {length} bytes overruns the declared length {declared} (at output {d})", t
                )
            if length > n - s:
                raise S2DecodeError(f"truncated literal: {length} bytes wanted, {n - s} left", t)
            out[d : d + length] = src[s : s + length]
            d += length
            s += length
            continue

        if kind == 1:  # copy1, or a repeat when its offset field is 0
            s += 2
            if s > n:
                raise S2DecodeError("truncated copy1 element", t)
            length = (tag >> 2) & 7
            field = ((tag & 0xE0) << 3) | src[s - 1]
            if field:
                offset = field
                length += 4
            else:
                if length < 5:
                    length += 4
                else:
                    width = length - 4  # codes 5, 6, 7: 1, 2, 3 length bytes
                    s += width
                    if s > n:
                        raise S2DecodeError(f"truncated repeat length ({width} bytes wanted)", t)
                    extra = int.from_bytes(src[s - width : s], "little")
                    length = extra + (8, 260, 65540)[width - 1]
                if not offset:
                    raise S2DecodeError("repeat before any copy: there is no offset to repeat", t)
        elif kind == 2:  # copy2
            s += 3
            if s > n:
                raise S2DecodeError("truncated copy2 element", t)
            length = (tag >> 2) + 1
            offset = src[s - 2] | (src[s - 1] << 8)
        else:  # copy4
            s += 5
            if s > n:
                raise S2DecodeError("truncated copy4 element", t)
            length = (tag >> 2) + 1
            offset = int.from_bytes(src[s - 4 : s], "little")

        if not offset:
            raise S2DecodeError("copy with offset 0", t)
        if offset > d:
            raise S2DecodeError(f"copy offset {offset} points before the start of the output (at {d})", t)
        if length > declared - d:
            raise S2DecodeError(
                f"copy of {length} bytes overruns the declared length {declared} (at output {d})", t
            )
        start = d - offset
        if offset >= length:  # no overlap: one slice copy
            out[d : d + length] = out[start : start + length]
        else:  # overlap: the last `offset` bytes repeat as a pattern
            pattern = out[start:d]
            out[d : d + length] = (pattern * -(-length // offset))[:length]
        d += length

    if d != declared:
        raise S2DecodeError(f"block ends after {d} bytes of output, {declared} were declared", n)
    return bytes(out)
