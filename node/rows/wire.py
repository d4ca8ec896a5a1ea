"""Walking protobuf wire bytes by hand where the hot path needs a field's raw bytes as a key."""

from __future__ import annotations


def skip_length_delimited(b: bytes, i: int) -> int:
    """Index after the length-delimited field whose one-byte tag is at `i`."""
    i += 1
    length = b[i]
    if length < 0x80:  # the common case: one length byte
        return i + 1 + length
    length = shift = 0
    while True:
        byte = b[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return i + length
        shift += 7
