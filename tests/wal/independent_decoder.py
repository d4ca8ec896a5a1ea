"""A segment reader written only from shared/design/wal-format.md, sharing no code with node/.

It proves that what the project writes is the documented format, not merely what its own reader
accepts.
"""

from __future__ import annotations

import struct
import zlib

import cramjam


def read_segment(data: bytes) -> list[tuple[int, int, bytes]]:
    """Return (type, count, value) for every block; AssertionError on anything off-format."""
    assert data[:6] == b"ADXWAL", "magic"
    assert data[6:8] == b"\x00\x00", "reserved magic bytes"
    pos = 8
    out = []
    while pos < len(data):
        length, crc = struct.unpack(">II", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        assert len(payload) == length, "whole payload"
        assert zlib.crc32(payload) & 0xFFFFFFFF == crc, "crc"
        raw = bytes(cramjam.snappy.decompress_raw(payload))
        assert raw[:2] == b"\xaa\xaa", "sample magic"
        assert raw[2] == 1, "version"
        kind = raw[3]
        (count,) = struct.unpack(">I", raw[4:8])
        out.append((kind, count, raw[8:]))
        pos += 8 + length
    return out
