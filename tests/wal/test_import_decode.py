"""A transferred segment's blocks are checked by a faster path (node/wal/importer.py: the block
decoded into a reused buffer, its rows from its sample header, its header read by cramjam's C
parser): it must accept and refuse exactly the blocks the general path (`codec.decompress`, as
the batcher reads them) accepts and refuses, and count the same rows."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import cramjam
import pytest

from node.errors import InvalidInputError
from node.wal import codec, importer, s2
from node.wal import format as fmt
from node.wal.importer import SegmentImport
from node.wal.names import parse_filename
from node.wal.repository import Repository, WalConfig
from tests.wal.s2_writer import encode_block as s2_encode_block
from tests.wal.s2_writer import uvarint

NAME = "Metrics_Cpu_0123456789abcdef.wal"


def rows(n: int, seed: int = 0) -> bytes:
    return b"".join(f'2026-11-24T04:00:{j % 60:02d}Z,{seed * 1000 + j},"{{""a"":""{j % 7}""}}",{j}.5\n'.encode()
                    for j in range(n))


def reference(payload: bytes) -> int | None:
    """What the general path says of a block: its rows, or None when it does not decode."""
    try:
        return fmt.rows_of(fmt.decode_payload(fmt.RawBlock(0, len(payload), memoryview(payload))))
    except fmt.FormatError:
        return None


def fast(imp: SegmentImport, payload: bytes) -> int | None:
    try:
        return imp._decodes(memoryview(payload))
    except InvalidInputError:
        return None


def blocks() -> dict[str, bytes]:
    value = rows(300)
    return {
        "snappy": fmt.encode_block(fmt.KIND_METRIC, 300, value)[1],
        "count-0": fmt.encode_block(fmt.KIND_METRIC, 0, value)[1],
        "no-sample-header": codec.compress(value),
        "s2-repeats": s2_encode_block(fmt.encode_sample(fmt.KIND_METRIC, 300, value)),
        "tiny": codec.compress(b"\xaa\xaa"),
        "empty": codec.compress(b""),
    }


def mutations(payload: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = [payload, payload[:-1], payload + b"\x00", payload[1:], bytes([payload[0] ^ 1]) + payload[1:]]
    for _ in range(count):
        p = bytearray(payload)
        how = rng.randrange(4)
        if how == 0:
            p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        elif how == 1:
            p[rng.randrange(len(p))] = rng.randrange(256)
        elif how == 2:
            del p[rng.randrange(len(p)):]
        else:
            p[:1] = bytes([rng.choice([0x80, 0xFF, 0x00, 0x7F]), rng.choice([0x80, 0xFF])])
        if p:
            out.append(bytes(p))
    return out


def test_the_header_is_read_as_s2_reads_it() -> None:
    rng = random.Random(17)
    heads = [bytes(rng.choice([0x00, 0x01, 0x7F, 0x80, 0x81, 0x8F, 0xFF, rng.randrange(256)])
                   for _ in range(rng.randrange(1, 8))) for _ in range(50_000)]
    heads += [uvarint(v) for v in (0, 1, 127, 128, 1 << 21, (1 << 32) - 1, 1 << 32, 1 << 35)]
    heads += [b"\x80\x80\x80\x80\x80\x00", b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\x10"]
    for head in heads:
        try:
            expected = s2.declared_length(head)[0]
        except s2.S2DecodeError:
            expected = -1
        assert importer._declared(memoryview(head)) == expected, head.hex()


@pytest.mark.parametrize("kind", list(blocks()))
def test_a_block_decodes_here_exactly_when_the_general_path_decodes_it(tmp_path: Path, kind: str) -> None:
    imp = SegmentImport(tmp_path, parse_filename(NAME), 100, lambda: None, lambda info: None)
    rng = random.Random(kind)
    accepted = refused = 0
    for payload in mutations(blocks()[kind], rng, 400):
        want = reference(payload)
        assert fast(imp, payload) == want, (kind, payload[:16].hex(), len(payload))
        if want is None:
            refused += 1
        else:
            accepted += 1
            try:  # and the reused buffer holds what the general decoder makes
                out = bytes(cramjam.snappy.decompress_raw(payload))
            except Exception:  # S2: the general path's own decoder
                continue
            assert bytes(imp._scratch[:len(out)]) == out
    assert accepted and refused


def test_a_block_larger_than_the_reused_buffer_takes_the_general_path(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "SCRATCH_MAX", 1000)
    imp = SegmentImport(tmp_path, parse_filename(NAME), 100, lambda: None, lambda info: None)
    small, large = rows(5), rows(300)
    assert fast(imp, fmt.encode_block(fmt.KIND_METRIC, 5, small)[1]) == 5
    assert fast(imp, fmt.encode_block(fmt.KIND_METRIC, 0, large)[1]) == 300
    assert len(imp._scratch) <= 1000
    broken = bytearray(fmt.encode_block(fmt.KIND_METRIC, 300, large)[1])
    broken[len(broken) // 2:] = b"\xff" * (len(broken) - len(broken) // 2)
    assert reference(bytes(broken)) is None and fast(imp, bytes(broken)) is None


def segment(*payloads: bytes) -> bytes:
    return fmt.MAGIC + b"".join(fmt.BLOCK_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)


def undecodable(payload: bytes) -> bytes:
    """`payload` with one byte changed so that it no longer decodes (its CRC is then recomputed)."""
    for i in range(len(payload) // 2, len(payload)):
        p = bytearray(payload)
        p[i] ^= 0xFF
        if reference(bytes(p)) is None:
            return bytes(p)
    raise AssertionError("no byte breaks it")


@pytest.mark.parametrize("sized", [False, True], ids=["fed", "sized-then-fed"])
@pytest.mark.parametrize("chunk", [3, 700, 1 << 20])
def test_a_block_that_does_not_decode_in_the_middle_is_refused_and_nothing_is_published(tmp_path: Path,
                                                                                        chunk: int,
                                                                                        sized: bool) -> None:
    """Also when each chunk's `memory_for` was read first, as the doors do (its block sizes then
    serve the feed)."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    payloads = [fmt.encode_block(fmt.KIND_METRIC, 300, rows(300, i))[1] for i in range(5)]
    payloads[2] = undecodable(payloads[2])
    data = segment(*payloads)
    third = list(fmt.iter_raw_blocks(data))[2]  # its CRC is right: only decoding it finds the fault
    imp = wal.begin_import("Metrics_Cpu", len(data))
    with pytest.raises(InvalidInputError, match=f"offset {third.offset}: payload does not decompress"):
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            if sized:
                imp.memory_for(piece)
            imp.feed(piece)
        imp.commit(zlib.crc32(data))
    imp.abort()
    assert imp.blocks == 2
    assert sorted(p.name for p in wal.directory.rglob("*") if p.is_file()) == []
    assert wal.closed_segments() == []


def test_a_whole_segment_counts_the_rows_the_general_path_counts(tmp_path: Path) -> None:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    payloads = list(blocks().values())
    data = segment(*payloads)
    for chunk in (5, 999, len(data)):
        imp = wal.begin_import("Metrics_Cpu", len(data))
        try:
            for i in range(0, len(data), chunk):
                imp.feed(data[i:i + chunk])
            imp.verify(zlib.crc32(data))
            assert imp.blocks == len(payloads)
            assert imp.rows == sum(reference(p) or 0 for p in payloads)
        finally:
            imp.abort()


def test_the_block_sizes_memory_for_read_serve_only_the_chunk_it_read_and_decide_nothing(tmp_path: Path) -> None:
    """`memory_for(chunk)` keeps the decoded length each block declares for `feed(chunk)`: another
    chunk fed instead does not use them, and sizes that are wrong only send a block to the general
    path, which decodes it whole: the same blocks are refused, the same rows counted."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    good = [fmt.encode_block(fmt.KIND_METRIC, 300, rows(300, i))[1] for i in range(4)]
    bad = list(good)
    bad[2] = undecodable(good[2])
    good_data, bad_data = segment(*good), segment(*bad)
    assert len(good_data) == len(bad_data)

    imp = wal.begin_import("Metrics_Cpu", len(bad_data))
    imp.memory_for(good_data)  # read from a chunk that is then not the one fed
    with pytest.raises(InvalidInputError, match="payload does not decompress"):
        imp.feed(bad_data)
    imp.abort()

    for wrong in (0, 1, 10 ** 6, -1):
        imp = wal.begin_import("Metrics_Cpu", len(good_data))
        try:
            imp.memory_for(good_data)
            assert imp._sizes is not None and len(imp._sizes[1]) == len(good)
            imp._sizes[1][:] = [wrong] * len(good)
            imp.feed(good_data)
            imp.verify(zlib.crc32(good_data))
            assert (imp.blocks, imp.rows) == (len(good), 4 * 300)
        finally:
            imp.abort()
        imp = wal.begin_import("Metrics_Cpu", len(bad_data))
        imp.memory_for(bad_data)
        assert imp._sizes is not None
        imp._sizes[1][:] = [wrong] * len(bad)
        with pytest.raises(InvalidInputError, match="payload does not decompress"):
            imp.feed(bad_data)
        assert imp.blocks == 2
        imp.abort()
