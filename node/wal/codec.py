"""Block compression: plain Snappy blocks when writing; Snappy, then S2, when reading.

A block begins with its decoded length (a varint, `decoded_length`). No block may decode to more
than `MAX_DECODED_LEN`, the segment format's block limit: a reader refuses one that declares
more from that header alone, before anything is allocated (a 340-byte S2 block of repeats can
declare a gigabyte), and a writer never writes one, so nothing written here is ever refused on
reading (which, at start-up, would cut it off as a corrupt tail).
"""

from __future__ import annotations

import cramjam

from node.errors import RequestTooLargeError
from node.wal import s2

MAX_DECODED_LEN = 256 << 20
"""Most bytes one block decodes to: the format's block limit (`format.MAX_BLOCK_LEN`, which bounds
a block's compressed length), applied to its decoded length too."""


class CodecError(ValueError):
    """A payload that neither the Snappy nor the S2 decoder accepts."""


def compress(data: bytes | bytearray | memoryview) -> bytes:
    """A raw Snappy block (not the framed stream format), as adx-mon's Go decoder reads it.

    RequestTooLargeError past the block limit: one request's rows for one table must fit a block.
    """
    if len(data) > MAX_DECODED_LEN:
        raise RequestTooLargeError(f"{len(data)} bytes of rows for one table in one request, over the WAL's "
                                   f"block limit of {MAX_DECODED_LEN}; send smaller requests")
    return bytes(cramjam.snappy.compress_raw(data))


def decoded_length(payload: bytes | bytearray | memoryview) -> int:
    """The decoded length a block declares (its first bytes), without decoding it."""
    try:
        return s2.declared_length(payload)[0]
    except s2.S2DecodeError as e:
        raise CodecError(str(e)) from e


def decompress(payload: bytes | bytearray | memoryview, max_len: int | None = None) -> bytes:
    """Decode a Snappy or S2 block: the fast C Snappy decoder first, ours for S2 extensions.

    CodecError for a block that does not decode, or that declares more than `max_len` bytes
    (default MAX_DECODED_LEN; checked first: the C decoder allocates whatever a block declares,
    up to 4 GiB).
    """
    max_len = MAX_DECODED_LEN if max_len is None else max_len
    declared = decoded_length(payload)
    if declared > max_len:
        raise CodecError(f"block declares {declared} decoded bytes, over the block limit of {max_len}")
    try:
        return bytes(cramjam.snappy.decompress_raw(payload))
    except Exception as snappy_err:  # cramjam raises its own DecompressionError
        try:
            return s2.decode_block(payload, max_output=max_len)
        except s2.S2DecodeError as e:
            raise CodecError(f"{e} (snappy: {snappy_err})") from e
