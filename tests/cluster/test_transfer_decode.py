"""Over gRPC: a block whose CRC is right but that does not decode, in the middle of a transfer, is
refused as before the receiver's faster checks (INVALID_ARGUMENT, naming its offset), and leaves
nothing behind; the same segment, whole, is then accepted with every row."""

from __future__ import annotations

import zlib

import grpc

from node.wal import format as fmt
from node.wal.repository import Repository
from tests.cluster import test_transfer as base
from tests.cluster.test_transfer import Receiver, all_rows, chunks, metadata, raw_call, segments
from tests.wal.test_import_decode import undecodable

receiver, sender, _blocks_as_written = base.receiver, base.sender, base._blocks_as_written  # its fixtures


async def test_a_block_that_does_not_decode_in_the_middle_is_refused_and_leaves_nothing(receiver: Receiver,
                                                                                       sender: Repository) -> None:
    seg = segments(sender, count=1, blocks=5)[0]
    good = seg.path.read_bytes()
    third = list(fmt.iter_raw_blocks(good))[2]
    payload = undecodable(bytes(third.payload))
    bad = bytearray(good)
    bad[third.offset:third.end] = fmt.BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    data = bytes(bad)
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data), *chunks(data, 700)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"offset {third.offset}: payload does not decompress" in details
    assert receiver.files() == []
    assert receiver.wal.closed_segments() == []
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, good), *chunks(good, 700)])
    assert code is grpc.StatusCode.OK, details
    assert receiver.rows() == all_rows([seg])


def test_the_pace_counts_a_chunk_message_as_its_byte_size_without_serializing_it() -> None:
    from node.gen.ingestor.v1 import transfer_pb2
    from node.transfer.service import _chunk_message_size

    for n in (0, 1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, 4 << 20, (4 << 20) + 1):
        assert _chunk_message_size(n) == transfer_pb2.TransferSegmentRequest(chunk=bytes(n)).ByteSize(), n
