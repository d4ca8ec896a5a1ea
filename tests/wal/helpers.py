"""Shared helpers of the WAL tests: building segments with known blocks."""

from __future__ import annotations

from pathlib import Path

from node.wal import format as fmt


def rows_for(i: int, n: int = 3) -> bytes:
    return b"".join(f"2026-11-24T04:00:{i % 60:02d}.000Z,{i * 10 + j},\"{{}}\",{j}.5\n".encode()
                    for j in range(n))


def make_segment(path: Path, blocks: list[bytes]) -> list[int]:
    """Write a segment of the given block values; return the end offset of every block."""
    ends = []
    data = bytearray(fmt.MAGIC)
    for value in blocks:
        header, payload = fmt.encode_block(fmt.KIND_METRIC, value.count(b"\n"), value)
        data += header + payload
        ends.append(len(data))
    path.write_bytes(bytes(data))
    return ends
