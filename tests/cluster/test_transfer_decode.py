"""Between peers a segment's blocks are checked by their framing, CRCs and headers, not decoded
(node/transfer/intake.py): what a peer sends was checked where it entered the cluster, and its
upload decodes every block anyway. Over gRPC against a real transfer service, then uploaded by a
real uploader into the real local sink (chdb):

- a block that passes its CRC and does not decode (a peer's bug) is accepted, and the upload that
  reads it quarantines that segment alone: the other segments of its batch reach the sink with
  every row (before, it was refused on receipt; a segment that turned corrupt on disk took its
  whole batch to the quarantine with it);
- a block whose header does not parse, or whose CRC is wrong, is still refused on receipt
  (INVALID_ARGUMENT, naming its offset) and leaves nothing behind.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from node.rows.series import BASE_SCHEMA
from node.sinks.local import ChdbConn, LocalConfig, LocalSink, open_store, store_dir
from node.transfer.client import TransferClient
from node.transfer.protocol import Outcome
from node.wal import format as fmt
from node.wal.repository import Repository
from node.wal.table import SegmentInfo
from tests.cluster import test_transfer as base
from tests.cluster.test_transfer import TOKEN, Receiver, all_rows, chunks, metadata, raw_call, segments
from tests.sinks import read_back, upload_all
from tests.wal.test_import_decode import undecodable

receiver, sender, _blocks_as_written = base.receiver, base.sender, base._blocks_as_written  # its fixtures


def with_block(data: bytes, index: int, payload: bytes) -> tuple[bytes, int]:
    """`data` (a segment) with its block `index` replaced by `payload`, framed with a right CRC; and
    that block's offset."""
    block = list(fmt.iter_raw_blocks(data))[index]
    framed = fmt.BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    return data[:block.offset] + framed + data[block.end:], block.offset


async def upload_into_local(wal: Repository, root: Path) -> tuple[LocalSink, CollectorRegistry]:
    """Every closed segment of `wal` delivered (or quarantined) by a real uploader into a local sink."""
    sink = LocalSink(store_dir(root / "storage"), LocalConfig(lock_wait=5))
    sink.start()
    return sink, await upload_all(wal, sink)


def stored(sink: LocalSink) -> list[tuple[str, ...]]:
    with open_store(sink.directory, 10) as c:
        return read_back(ChdbConn(c, "test"), "Metrics", "Cpu", BASE_SCHEMA)


def series_ids(segs: list[SegmentInfo]) -> list[str]:
    """The series ids (the second field, unique to each row here) of the rows of `segs`, sorted."""
    return sorted(line.decode().split(",")[1] for line in all_rows(segs))


@pytest.mark.parametrize("how", ["passes-its-crc-does-not-decode", "a-byte-flipped-on-disk"])
async def test_a_segment_that_does_not_read_is_quarantined_alone_and_its_batch_delivered(
        receiver: Receiver, sender: Repository, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("chdb")
    segs = segments(sender, count=3, blocks=5)
    good = segs[1].path.read_bytes()
    client = TransferClient("sender", token=TOKEN, chunk_size=700)
    try:
        assert (await client.send(receiver.peer, [segs[0].path])).outcome is Outcome.ACCEPTED
        if how == "passes-its-crc-does-not-decode":  # a peer's bug: accepted (CRCs and headers only)
            third = list(fmt.iter_raw_blocks(good))[2]
            data, offset = with_block(good, 2, undecodable(bytes(third.payload)))
            code, details = await raw_call(receiver.addr, [metadata(segs[1].path.name, data), *chunks(data, 700)])
            assert code is grpc.StatusCode.OK, details
        else:
            assert (await client.send(receiver.peer, [segs[1].path])).outcome is Outcome.ACCEPTED
        assert (await client.send(receiver.peer, [segs[2].path])).outcome is Outcome.ACCEPTED
    finally:
        await client.close()
    _, bad, _ = receiver.wal.closed_segments()  # in the order they arrived
    if how == "a-byte-flipped-on-disk":
        raw = bytearray(bad.path.read_bytes())
        offset = list(fmt.iter_raw_blocks(raw))[2].offset
        raw[offset + fmt.BLOCK_HEADER.size + 5] ^= 0x01
        bad.path.write_bytes(bytes(raw))
    with caplog.at_level("ERROR", logger="node.upload.uploader"):
        sink, registry = await upload_into_local(receiver.wal, tmp_path)
    try:
        # The first segment's 250 rows and the bad one's first two blocks had gone to the sink; the
        # local store kept none of them (below)
        assert (f"quarantined 1 segments of Metrics_Cpu in {receiver.wal.directory.parent / 'quarantine'}: segment "
                f"{bad.path.name} is corrupt: ") in caplog.text
        assert ("alone: the other 2 segments of its batch go again as a new batch (the sink had been handed 350 rows "
                "of the batch before it") in caplog.text
        quarantine = receiver.wal.directory.parent / "quarantine"
        assert sorted(p.name for p in quarantine.iterdir()) == sorted([bad.path.name, bad.path.stem + ".reason.txt"])
        reason = (quarantine / f"{bad.path.stem}.reason.txt").read_text()
        why = "payload does not decompress" if how == "passes-its-crc-does-not-decode" else "CRC mismatch"
        assert f"segment {bad.path.name} is corrupt: " in reason and f"offset {offset}: {why}" in reason, reason
        assert sorted(r[1] for r in stored(sink)) == series_ids([segs[0], segs[2]])  # every row of the other two, once
        assert receiver.wal.closed_segments() == []
        assert registry.get_sample_value("ingestor_quarantined_bytes_total") == bad.size
    finally:
        sink.stop()


@pytest.mark.parametrize("how", ["header-does-not-parse", "crc-mismatch"])
async def test_a_block_refused_from_its_header_or_crc_leaves_nothing(receiver: Receiver, sender: Repository,
                                                                     how: str) -> None:
    seg = segments(sender, count=1, blocks=5)[0]
    good = seg.path.read_bytes()
    if how == "header-does-not-parse":  # a varint of 6 bytes: no decoder reads it
        data, offset = with_block(good, 4, b"\xff" * 6 + b"x" * 20)
        why = "payload does not decompress (its header does not parse)"
    else:
        block = list(fmt.iter_raw_blocks(good))[4]
        raw = bytearray(good)
        raw[block.end - 1] ^= 0x01
        data, offset, why = bytes(raw), block.offset, "CRC mismatch"
    # The bad block is the last, and the segment one message: grpc's client then keeps the status
    # the node gives (a write that fails as the call ends can replace it: test_transfer_abuse.OVERWRITTEN).
    code, details = await raw_call(receiver.addr, [metadata(seg.path.name, data), *chunks(data, len(data))])
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"offset {offset}: {why}" in details
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
