"""A segment received from a peer, written as it streams in and verified block by block.

The bytes go to `<final name>.part` as they arrive (memory stays at one block plus one chunk,
whatever the segment's size); every block's framing, CRC and header are checked as soon as it is
complete (a block that declares more than the block limit is refused from its header, before
anything is allocated). With `decode` every block is also decoded once, there: segments that enter
the cluster from outside (adx-mon's HTTP door). Between peers the CRC is enough: what a peer sends
was checked where it entered the cluster, and decoding it here would pay again for the decode its
upload does anyway (a block that passes its CRC and still does not decode is set aside, alone, by
the upload that reads it: `sinks/base.py`, `upload/uploader.py`). `memory_for()` says, before a
chunk is fed and from the block headers alone, how much it will hold: the caller reserves that
from its memory budget. `verify()` checks the declared size and CRC-32 and fsyncs; `publish()`
renames to the final name and fsyncs the directory: the segment appears whole or not at all.
`commit()` is both. `abort()` removes the part file.

The part file is created by the first `feed()`, not before: a transfer claims its key in the
transfer ledger first, and from then on the part file's existence is what says "not published"
(`node/transfer/ledger.py`). So it is not a `*.tmp` file, which the WAL's recovery deletes: only
its owner or the ledger removes it, and a part left by a dead transfer is removed when the ledger
settles its key. A failure while publishing `abandon()`s the import: the part stays for the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cramjam
from isal import isal_zlib

from node.errors import InvalidInputError, disk_full
from node.storage import fsync_dir
from node.wal import codec, s2
from node.wal import format as fmt
from node.wal.names import SegmentName
from node.wal.table import SegmentInfo

PART_SUFFIX = ".part"
DECODE_FACTOR = 2
"""Bytes held per decoded byte while a block is checked: the decoder's output, then its copy
without the sample header (`format.decode_sample`). (A block that decodes into the reused buffer,
below, holds one copy: the factor is what the other path, and the budget, count.)"""
SCRATCH_MAX = 8 << 20
"""Largest reused decode buffer (`SegmentImport._decodes`): a block that declares more decodes the
general way, into bytes of its own (it is refused from its header past the block limit)."""

_crc32 = isal_zlib.crc32
"""ISA-L's CRC-32: the same function as zlib's, ~3x (small blocks) to ~6x (4 MiB chunks) faster here."""
_snappy_into = cramjam.snappy.decompress_raw_into
_snappy_len = cramjam.snappy.decompress_raw_len
_SAMPLE_HEADER = fmt.SAMPLE_HEADER
_SAMPLE_MAGIC = fmt.SAMPLE_MAGIC


def _declared(payload: memoryview) -> int:
    """The decoded length a (non-empty) block declares, -1 when its header does not parse: what
    `codec.decoded_length` says (`s2.declared_length`: a varint of at most 5 bytes, at most
    2**32 - 1), read by cramjam's C header parser from the first 5 bytes alone, so that a longer
    varint is truncated there and refused as s2 refuses it (~1 us instead of ~4 us of Python a
    block; tests/wal/test_import_decode.py compares the two)."""
    try:
        n: int = _snappy_len(payload[: s2.MAX_HEADER_BYTES])
    except Exception:
        return -1
    return n


class SegmentImport:
    """One incoming segment. `feed()` chunks, then `commit()` or `abort()` (exactly one); or, for
    a transfer, `verify()`, then `publish()`, `abort()` or `abandon()`."""

    def __init__(self, directory: Path, name: SegmentName, declared_size: int,
                 release: Callable[[], None], publish: Callable[[SegmentInfo], None], decode: bool = True) -> None:
        """`release` gives back the space reserved for it; `publish` indexes the committed segment.
        `decode`: also decompress every block (and count its rows); otherwise each block's CRC and
        header alone (its declared length within the block limit), and `rows` stays 0."""
        self.decode = decode
        self.name = name
        self.declared_size = declared_size
        self.final = directory / name.filename
        self.part = self.final.with_name(self.final.name + PART_SUFFIX)
        self._release = release
        self._publish = publish
        self._pending = bytearray()  # bytes not yet part of a whole block
        self._magic_seen = False
        self._offset = 0  # stream offset of the block being checked
        self.received = 0
        self.blocks = 0
        self.rows = 0
        self._crc = 0
        self._done = False
        self._fd = -1
        self._scratch = bytearray()
        """Where blocks decode, reused: at most the largest block decoded so far (and SCRATCH_MAX),
        which the caller reserved for that block (`memory_for`)."""
        self._sizes: tuple[object, list[int]] | None = None
        """What `memory_for(chunk)` read of the chunk: the decoded length each block wholly inside
        it declares, in order, which `feed(chunk)` (the same object) then takes instead of reading
        each header twice."""

    def _invalid(self, reason: str) -> InvalidInputError:
        return InvalidInputError(f"transferred segment {self.name.filename}: {reason}")

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write and verify the next bytes. Raises InvalidInputError (bad bytes, more than declared)
        or OverLimitsError (disk full); the caller then aborts."""
        n = len(chunk)
        if self.received + n > self.declared_size:
            raise self._invalid(f"more than the declared {self.declared_size} bytes")
        self._write(chunk)
        self._crc = _crc32(chunk, self._crc)
        sizes, self._sizes = self._sizes, None
        with memoryview(chunk) as view:
            self._verify(view, sizes[1] if sizes is not None and sizes[0] is chunk else [])
        self.received += n

    def memory_for(self, chunk: bytes | bytearray | memoryview) -> int:
        """Bytes beyond `chunk` itself that `feed(chunk)` holds at its peak: the block split across
        chunks, gathered whole, and the decoded output of the largest block it completes. Read from
        the block headers (one step per block, nothing decoded); bytes that do not parse count as
        nothing, since `feed` refuses them before it allocates. The reused decode buffer, kept from
        the blocks before, is held too and counted on top."""
        sizes: list[int] = []
        with memoryview(chunk) as view:
            need = self._memory_for(view, sizes) + len(self._scratch)
        self._sizes = (chunk, sizes)
        return need

    def _memory_for(self, view: memoryview, sizes: list[int]) -> int:
        hs = fmt.BLOCK_HEADER.size
        size, pos, pending = len(view), 0, len(self._pending)
        if not self._magic_seen:
            if pending + size < len(fmt.MAGIC):
                return pending + size
            pos, pending = len(fmt.MAGIC) - pending, 0

        def gathered(a: int, b: int) -> bytes:  # bytes a..b of the block being gathered
            head = bytes(self._pending[a:b]) if a < pending else b""
            return head + bytes(view[pos + max(a - pending, 0): pos + max(b - pending, 0)])

        peak = 0
        if pending:  # finishing the block split across the previous chunk and this one
            if pending + size - pos < hs:
                return pending + size - pos
            length = fmt.BLOCK_HEADER.unpack_from(gathered(0, hs))[0]
            whole = hs + length
            if whole - pending > size - pos:  # still gathering
                return pending + size - pos
            peak = whole + self._decode_cost(gathered(hs, hs + min(length, s2.MAX_HEADER_BYTES)))
            pos += whole - pending
        while size - pos >= hs:
            length = fmt.BLOCK_HEADER.unpack_from(view, pos)[0]
            end = pos + hs + length
            if length == 0 or length > fmt.MAX_BLOCK_LEN or end > size:
                break
            n = _declared(view[pos + hs: end])
            sizes.append(n)
            if self.decode and DECODE_FACTOR * n > peak and n <= codec.MAX_DECODED_LEN:
                peak = DECODE_FACTOR * n
            pos = end
        return max(peak, size - pos)

    def _decode_cost(self, head: bytes) -> int:
        if not self.decode:
            return 0
        try:
            n = codec.decoded_length(head)
        except codec.CodecError:
            return 0
        return DECODE_FACTOR * n if n <= codec.MAX_DECODED_LEN else 0

    def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        try:
            if self._fd < 0:
                self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            raise self._disk_error(e) from e
        finally:
            view.release()

    def _take(self, view: memoryview, pos: int, want: int) -> int:
        """Move bytes of `view` from `pos` into the pending unit until it holds `want`; return the new pos."""
        k = min(want - len(self._pending), len(view) - pos)
        if k > 0:
            self._pending += view[pos : pos + k]
        return pos + max(k, 0)

    def _verify(self, view: memoryview, sizes: list[int]) -> None:
        """Check every block that completes within `view`: blocks wholly inside it are read in
        place; only a block split across chunks is gathered in `_pending` (at most one block).
        `sizes`: the decoded lengths the blocks wholly inside `view` declare, as `memory_for` read
        them (fewer, or none: the rest are read here)."""
        header = fmt.BLOCK_HEADER
        pos = 0
        if not self._magic_seen:
            pos = self._take(view, pos, len(fmt.MAGIC))
            if len(self._pending) < len(fmt.MAGIC):
                return
            try:
                fmt.check_magic(self._pending)
            except fmt.FormatError as e:
                raise self._invalid(e.reason) from e
            self._magic_seen = True
            self._offset = len(fmt.MAGIC)
            self._pending.clear()
        if self._pending:  # finish the block split across the previous chunk and this one
            pos = self._take(view, pos, header.size)
            if len(self._pending) < header.size:
                return
            pos = self._take(view, pos, header.size + self._length(self._pending, 0))
            if len(self._pending) < header.size + self._length(self._pending, 0):
                return
            with memoryview(self._pending) as whole:
                self._check_block(whole, 0)
            self._offset += len(self._pending)
            self._pending = bytearray()
        size, hs, unpack, check, k = len(view), header.size, header.unpack_from, self._check_payload, 0
        while size - pos >= hs:
            length, crc = unpack(view, pos)
            if length == 0 or length > fmt.MAX_BLOCK_LEN:
                self._length(view, pos)  # raises
            end = pos + hs + length
            if end > size:
                break
            with view[pos + hs: end] as payload:
                check(payload, crc, sizes[k] if k < len(sizes) else None)
            k += 1
            self._offset += end - pos
            pos = end
        if pos < size:
            self._pending += view[pos:]

    def _length(self, buf: bytes | bytearray | memoryview, pos: int) -> int:
        length: int = fmt.BLOCK_HEADER.unpack_from(buf, pos)[0]
        if length == 0 or length > fmt.MAX_BLOCK_LEN:
            raise self._invalid(f"offset {self._offset}: bad block length {length}")
        return length

    def _check_block(self, buf: memoryview, pos: int) -> None:
        """CRC (and, with `decode`, decompression) of the whole block at `buf[pos:]`."""
        length, crc = fmt.BLOCK_HEADER.unpack_from(buf, pos)
        with buf[pos + fmt.BLOCK_HEADER.size : pos + fmt.BLOCK_HEADER.size + length] as payload:
            self._check_payload(payload, crc, None)

    def _check_payload(self, payload: memoryview, crc: int, declared: int | None) -> None:
        """CRC (and, with `decode`, decompression) of one whole block's `payload`; `declared`: the
        decoded length its header declares, if read already (`_declared`)."""
        if _crc32(payload) != crc:
            raise self._invalid(f"offset {self._offset}: CRC mismatch")
        if self.decode:
            self.rows += self._decodes(payload, declared)
        else:
            self._check_header(payload, declared)
        self.blocks += 1

    def _check_header(self, payload: memoryview, declared: int | None) -> None:
        """Without decoding: the block's header parses, and declares at most the block limit
        (`codec.decompress` refuses the same from the header, before it allocates)."""
        if declared is None:
            declared = _declared(payload)
        if declared < 0:
            raise self._invalid(f"offset {self._offset}: payload does not decompress (its header does not parse)")
        if declared > codec.MAX_DECODED_LEN:
            raise self._invalid(f"offset {self._offset}: payload does not decompress: block declares {declared} "
                                f"decoded bytes, over the block limit of {codec.MAX_DECODED_LEN}")

    def _decodes(self, payload: memoryview, declared: int | None = None) -> int:
        """Decode the block `payload` whole (InvalidInputError when it does not) and return its rows.

        The usual block, Snappy of at most SCRATCH_MAX bytes, decodes into the reused `_scratch`
        (no allocation, no copy: ~2.5x cheaper than a new output each time), and its rows are the
        count its sample header declares. Cramjam's `decompress_raw_into` is the same decoder as the
        `decompress_raw` of `codec.decompress`, run over the block's declared length, and it
        fails where that fails (a bad element, a copy out of range, output short of or past the
        declared length): so a block that decodes here decodes there, to the same bytes
        (tests/wal/test_import_decode.py compares them over mutated blocks). Anything else (S2,
        a block over SCRATCH_MAX, one that does not decode, a count of 0) takes the general path,
        `format.decode_payload` then `format.rows_of`, as before. `declared`: what `_declared(payload)`
        says, if read already."""
        if declared is None:
            declared = _declared(payload)
        if 0 <= declared <= SCRATCH_MAX:
            scratch = self._scratch
            if declared > len(scratch):
                scratch = self._scratch = bytearray(declared)
            try:
                n = _snappy_into(payload, scratch)
            except Exception:  # not Snappy (S2?), or broken: the general path decides
                n = -1
            if n == declared:
                if n >= _SAMPLE_HEADER.size and scratch[:2] == _SAMPLE_MAGIC:
                    count: int = _SAMPLE_HEADER.unpack_from(scratch)[3]
                    if count:
                        return count
                return fmt.rows_of(fmt.decode_sample(bytes(scratch[:n])))
        try:
            return fmt.rows_of(fmt.decode_payload(fmt.RawBlock(self._offset, self._offset + len(payload), payload)))
        except fmt.FormatError as e:
            raise self._invalid(f"offset {self._offset}: {e.reason}") from e

    def verify(self, crc32: int) -> None:
        """Check completeness and the CRC-32 of every byte, and make the part file durable.
        InvalidInputError or OverLimitsError; the caller then aborts."""
        if self.received != self.declared_size:
            raise self._invalid(f"stream ended after {self.received} of {self.declared_size} bytes")
        if not self._magic_seen:
            raise self._invalid("truncated magic")
        if self._pending:
            raise self._invalid(f"offset {self._offset}: torn block at the end ({len(self._pending)} bytes)")
        if self.blocks == 0:
            raise self._invalid("no blocks")
        self._scratch = bytearray()  # every block is checked
        if self._crc != crc32:
            raise self._invalid(f"CRC-32 {self._crc:08x} of the bytes received, {crc32:08x} declared")
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as e:
            raise self._disk_error(e) from e
        finally:
            os.close(fd)

    def publish(self) -> SegmentInfo:
        """Rename the verified part to its final name and index it. When the rename fails the
        part stays where it was; once it is done the segment is indexed even if the directory's
        fsync then fails, and that error is raised as it is: never as OverLimitsError, which a
        sender takes for "not published" (it is, at least until the machine goes down)."""
        try:
            os.rename(self.part, self.final)
        except OSError as e:
            raise self._disk_error(e) from e
        self._done = True
        info = SegmentInfo(self.final, self.name, self.received, self.blocks, self.rows)
        try:
            fsync_dir(self.final.parent)
        finally:
            self._publish(info)
        return info

    def commit(self, crc32: int) -> SegmentInfo:
        """`verify()`, then `publish()`; anything that fails before the rename aborts."""
        try:
            self.verify(crc32)
            return self.publish()
        except BaseException:
            self.abort()
            raise

    def _disk_error(self, e: OSError) -> Exception:
        return disk_full(e, f"receiving {self.name.filename}")

    def abort(self) -> None:
        """Remove the part file and give back the reserved space (idempotent)."""
        self._end(remove_part=True)

    def abandon(self) -> None:
        """Give the reserved space back but leave the part file: a publish failed, and the
        transfer ledger decides from the file whether the segment was published (idempotent)."""
        self._end(remove_part=False)

    def _end(self, *, remove_part: bool) -> None:
        if self._done:
            return
        self._done = True
        self._scratch = bytearray()
        self._sizes = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove_part:
            self.part.unlink(missing_ok=True)
        self._release()
