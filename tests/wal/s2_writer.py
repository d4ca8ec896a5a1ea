"""A small, test-only S2 block *writer*, independent of ``node.wal.s2`` (which only reads).

It exists to make blocks that use what S2 adds to Snappy, which no Python package writes:
repeat elements (a copy1 with offset 0) with each of their length encodings, copy2/copy4 with any
offset and length, and literals with every length width, including wider-than-needed ones.

- :class:`BlockBuilder` emits individual elements, so tests can hand-make blocks (valid or not),
  and keeps a tally of what it emitted.
- :func:`encode` / :func:`encode_block` compress bytes with a greedy hash matcher.

Encodings written here (tag byte, low two bits = kind)::

    literal   (len-1)<<2 | 0, or (59+w)<<2 | 0 then w = 1..4 bytes of len-1 (LE); then the bytes
    copy1     (off>>8)<<5 | (len-4)<<2 | 1, off & 0xFF      len 4..11, off 1..2047
    repeat    code<<2 | 1, 0x00, then 0/1/2/3 bytes (LE)    code 0..4: len 4..8;
                                                            5: 8+u8; 6: 260+u16; 7: 65540+u24
    copy2     (len-1)<<2 | 2, off (2 bytes, LE)              len 1..64
    copy4     (len-1)<<2 | 3, off (4 bytes, LE)              len 1..64
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MAX_REPEAT",
    "BlockBuilder",
    "CopyTag",
    "EncodedBlock",
    "encode",
    "encode_block",
    "repeat_code",
    "repeat_widths",
    "uvarint",
]

#: The longest repeat element: code 7, 65540 + 0xFFFFFF.
MAX_REPEAT = 65540 + 0xFFFFFF
# The base length of repeat codes 5, 6, 7 (1, 2, 3 extra bytes).
_REPEAT_BASE = {1: 8, 2: 260, 3: 65540}

CopyTag = Literal["auto", "copy2", "copy4"]


def uvarint(value: int) -> bytes:
    """Unsigned LEB128, as the block header (the decoded length) is written."""
    if value < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def repeat_code(length: int) -> int:
    """The number of extra length bytes (0-3) of the shortest repeat element for ``length``."""
    if 4 <= length <= 8:
        return 0
    if length < 260:
        return 1
    if length < 65540:
        return 2
    if length <= MAX_REPEAT:
        return 3
    raise ValueError(f"repeat length {length} out of range 4..{MAX_REPEAT}")


def repeat_widths(length: int) -> list[int]:
    """Every number of extra length bytes (0-3) that a repeat of ``length`` can be written with."""
    widths = [0] if 4 <= length <= 8 else []
    widths += [w for w, base in _REPEAT_BASE.items() if 0 <= length - base < 1 << (8 * w)]
    return widths


@dataclass
class BlockBuilder:
    """Appends S2 elements one by one; :meth:`block` prepends the length header.

    Each method checks that its arguments fit the element's fields (so it never writes an element
    that means something else), but not that the copy makes sense for the output so far: tests
    use that to build invalid blocks. ``decoded_len`` is the sum of the lengths of the elements.
    """

    body: bytearray = field(default_factory=bytearray)
    decoded_len: int = 0
    tags: Counter[str] = field(default_factory=Counter)

    def literal(self, data: bytes, *, extra_bytes: int | None = None) -> BlockBuilder:
        """A literal; ``extra_bytes`` (0-4) forces the length width, by default the shortest."""
        n = len(data) - 1
        if n < 0:
            raise ValueError("an empty literal cannot be encoded")
        shortest = 0 if n < 60 else (n.bit_length() + 7) // 8
        width = shortest if extra_bytes is None else extra_bytes
        if not shortest <= width <= 4:
            raise ValueError(f"literal of {n + 1} bytes cannot have {width} length bytes")
        if width == 0:
            self.body.append(n << 2)
        else:
            self.body.append((59 + width) << 2)
            self.body += n.to_bytes(width, "little")
        self.body += data
        self.decoded_len += n + 1
        self.tags[f"literal{width}"] += 1
        return self

    def copy1(self, offset: int, length: int) -> BlockBuilder:
        if not (1 <= offset < 2048 and 4 <= length <= 11):
            raise ValueError(f"copy1 cannot hold offset {offset}, length {length}")
        self.body += bytes([((offset >> 8) << 5) | ((length - 4) << 2) | 1, offset & 0xFF])
        self.decoded_len += length
        self.tags["copy1"] += 1
        return self

    def copy2(self, offset: int, length: int) -> BlockBuilder:
        """A copy2; offset 0 is encodable (and invalid), for tests of the decoder."""
        if not (0 <= offset < 1 << 16 and 1 <= length <= 64):
            raise ValueError(f"copy2 cannot hold offset {offset}, length {length}")
        self.body.append(((length - 1) << 2) | 2)
        self.body += offset.to_bytes(2, "little")
        self.decoded_len += length
        self.tags["copy2"] += 1
        return self

    def copy4(self, offset: int, length: int) -> BlockBuilder:
        """A copy4; offset 0 is encodable (and invalid), for tests of the decoder."""
        if not (0 <= offset < 1 << 32 and 1 <= length <= 64):
            raise ValueError(f"copy4 cannot hold offset {offset}, length {length}")
        self.body.append(((length - 1) << 2) | 3)
        self.body += offset.to_bytes(4, "little")
        self.decoded_len += length
        self.tags["copy4"] += 1
        return self

    def repeat(self, length: int, *, extra_bytes: int | None = None) -> BlockBuilder:
        """A repeat of the previous copy's offset; ``extra_bytes`` (0-3) forces the length code."""
        width = repeat_code(length) if extra_bytes is None else extra_bytes
        if width == 0:
            if not 4 <= length <= 8:
                raise ValueError(f"repeat length {length} needs extra length bytes")
            self.body += bytes([((length - 4) << 2) | 1, 0])
        elif width in _REPEAT_BASE:
            extra = length - _REPEAT_BASE[width]
            if not 0 <= extra < 1 << (8 * width):
                raise ValueError(f"repeat length {length} does not fit {width} extra bytes")
            self.body += bytes([((4 + width) << 2) | 1, 0])
            self.body += extra.to_bytes(width, "little")
        else:
            raise ValueError(f"a repeat has 0-3 extra length bytes, not {width}")
        self.decoded_len += length
        self.tags[f"repeat{width}"] += 1
        return self

    def raw(self, data: bytes) -> BlockBuilder:
        """Bytes appended as they are (not counted in ``decoded_len``): garbage, truncated elements."""
        self.body += data
        return self

    def block(self, declared_len: int | None = None) -> bytes:
        """The block: header (``decoded_len`` unless ``declared_len`` overrides it) + elements."""
        declared = self.decoded_len if declared_len is None else declared_len
        return uvarint(declared) + bytes(self.body)


@dataclass(frozen=True)
class EncodedBlock:
    block: bytes
    tags: Counter[str]

    @property
    def uses_repeat(self) -> bool:
        return any(k.startswith("repeat") and v for k, v in self.tags.items())


def _emit_copy(b: BlockBuilder, offset: int, length: int, copy_tag: CopyTag) -> None:
    """One copy element of at most 64 bytes, in the smallest form ``copy_tag`` allows."""
    if copy_tag == "auto" and offset < 2048 and 4 <= length <= 11:
        b.copy1(offset, length)
    elif copy_tag != "copy4" and offset < 1 << 16:
        b.copy2(offset, length)
    else:
        b.copy4(offset, length)


def _emit_repeats(b: BlockBuilder, length: int) -> None:
    while length > MAX_REPEAT:
        # Leave at least 4 for the last element.
        take = MAX_REPEAT if length - MAX_REPEAT >= 4 else length - 4
        b.repeat(take)
        length -= take
    b.repeat(length)


def _emit_match(
    b: BlockBuilder, offset: int, length: int, last_offset: int, repeats: bool, copy_tag: CopyTag
) -> None:
    if repeats and offset == last_offset:
        _emit_repeats(b, length)
        return
    if repeats:
        # One copy with the offset, then repeats for the rest (always at least 4 bytes).
        cap = 11 if copy_tag == "auto" and offset < 2048 else 64
        first = length if length <= cap else min(cap, length - 4)
        _emit_copy(b, offset, first, copy_tag)
        if length > first:
            _emit_repeats(b, length - first)
        return
    # Snappy style: copies of at most 64 bytes, none shorter than 4.
    while length >= 68:
        _emit_copy(b, offset, 64, copy_tag)
        length -= 64
    if length > 64:
        _emit_copy(b, offset, 60, copy_tag)
        length -= 60
    _emit_copy(b, offset, length, copy_tag)


def _match_length(data: bytes, a: int, b: int) -> int:
    """How many bytes from ``b`` on equal those from ``a`` on (a < b; may overlap)."""
    n = len(data)
    length = 0
    step = 64
    while b + length < n:
        # Compare in chunks first, then finish byte by byte.
        end = min(step, n - b - length)
        if data[a + length : a + length + end] == data[b + length : b + length + end]:
            length += end
            continue
        while data[a + length] == data[b + length]:
            length += 1
        break
    return length


def encode(data: bytes, *, repeats: bool = True, copy_tag: CopyTag = "auto") -> EncodedBlock:
    """Compress ``data`` into one block with a greedy matcher.

    ``repeats=False`` writes a plain Snappy block (copy1/copy2/copy4 only). With ``repeats=True``
    a match at the last offset becomes a repeat element, and a long match becomes one copy and a
    repeat for the rest, as S2's encoder does. ``copy_tag`` can force copy2 or copy4 elements
    where smaller ones would do, so small inputs exercise them too.
    """
    data = bytes(data)
    n = len(data)
    b = BlockBuilder()
    table: dict[bytes, int] = {}
    last_offset = 0
    i = 0
    pending = 0  # start of the bytes not yet emitted
    while i + 4 <= n:
        key = data[i : i + 4]
        candidate = -1
        if repeats and 0 < last_offset <= i and data[i - last_offset : i - last_offset + 4] == key:
            candidate = i - last_offset
        else:
            candidate = table.get(key, -1)
        table[key] = i
        if candidate < 0:
            i += 1
            continue
        length = 4 + _match_length(data, candidate + 4, i + 4)
        if pending < i:
            b.literal(data[pending:i])
        offset = i - candidate
        _emit_match(b, offset, length, last_offset, repeats, copy_tag)
        last_offset = offset
        # Remember a few positions inside the match, so later data can refer to them.
        for j in range(i + 1, min(i + length, n - 3), max(1, length // 8)):
            table[data[j : j + 4]] = j
        i += length
        pending = i
    if pending < n:
        b.literal(data[pending:])
    assert b.decoded_len == n
    return EncodedBlock(b.block(), Counter(b.tags))


def encode_block(data: bytes, *, repeats: bool = True, copy_tag: CopyTag = "auto") -> bytes:
    """The block :func:`encode` makes."""
    return encode(data, repeats=repeats, copy_tag=copy_tag).block
