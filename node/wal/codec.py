"""Block compression: plain Snappy blocks when writing; Snappy, then S2, when reading."""

from __future__ import annotations

import cramjam

from node.wal import s2


class CodecError(ValueError):
    """A payload that neither the Snappy nor the S2 decoder accepts."""


def compress(data: bytes | bytearray | memoryview) -> bytes:
    """A raw Snappy block (not the framed stream format), as adx-mon's Go decoder reads it."""
    return bytes(cramjam.snappy.compress_raw(data))


def decompress(payload: bytes | bytearray | memoryview) -> bytes:
    """Decode a Snappy or S2 block: the fast C Snappy decoder first, ours for S2 extensions."""
    try:
        return bytes(cramjam.snappy.decompress_raw(payload))
    except Exception as snappy_err:  # cramjam raises its own DecompressionError
        try:
            return s2.decode_block(payload)
        except s2.S2DecodeError as e:
            raise CodecError(f"{e} (snappy: {snappy_err})") from e
