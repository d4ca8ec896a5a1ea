"""Walking protobuf wire bytes by hand: a field's raw bytes as a cache key on the hot path, and a
large request cut into pieces that are parsed and converted one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


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


# -- requests in pieces ---------------------------------------------------------------------------
#
# A request of tens of megabytes is parsed and converted a piece at a time: a piece is a message of
# the request's type, about PIECE_BYTES long, that holds a run of the request's bulk (series, data
# points, records, spans) with a copy of everything around it (the resource, the scope, the
# metric's name, a Sum's temporality). Parsing one piece holds the GIL for milliseconds where the
# whole request held it for most of a second, and only one piece's parsed messages are alive at a
# time. Converting the pieces in order gives the rows the whole request gives.
#
#     ExportMetricsServiceRequest                       piece 1                   piece 2
#       resource_metrics[0]                               resource_metrics          resource_metrics
#         resource {service.name=api}                       resource {...}            resource {...}
#         scope_metrics[0]                                  scope_metrics             scope_metrics
#           scope {...}                          ->           scope {...}               scope {...}
#           metrics[0] name=up gauge                          metrics name=up gauge     metrics name=up gauge
#             data_points[0 .. 19999]                           data_points[0..9999]      data_points[10000..19999]


class Level(NamedTuple):
    """One level of a request message: the field numbers of its bulk (length-delimited fields whose
    elements may go to different pieces); every other field is copied into each piece."""

    bulk: frozenset[int]
    oneof: bool = False
    """The bulk fields are members of one oneof: a message with more than one of them (the last
    wins when parsed) is not split."""


PIECE_BYTES = 1 << 20

REMOTE_WRITE_LEVELS = (Level(frozenset({1, 3})),)
"""WriteRequest: timeseries (1) and metadata (3)."""
_DATA = Level(frozenset({5, 7, 9, 10, 11}), oneof=True)
"""Metric: gauge, sum, histogram, exponential_histogram, summary."""
OTLP_METRICS_LEVELS = (Level(frozenset({1})), Level(frozenset({2})), Level(frozenset({2})), _DATA,
                       Level(frozenset({1})))
"""resource_metrics -> scope_metrics -> metrics -> the metric's data -> data_points."""
OTLP_LOGS_LEVELS = (Level(frozenset({1})), Level(frozenset({2})), Level(frozenset({2})))
"""resource_logs -> scope_logs -> log_records."""
OTLP_TRACES_LEVELS = OTLP_LOGS_LEVELS
"""resource_spans -> scope_spans -> spans (the same field numbers)."""


class _Unsplittable(ValueError):
    """Wire bytes the splitter does not take apart (malformed, groups, a oneof set twice): the
    request is parsed whole, and the parser says what is wrong with it, if anything."""


def read_uvarint(b: bytes | memoryview, i: int, end: int) -> tuple[int, int]:
    """The varint at `b[i:end]` and where it ends; ValueError when it does not end before `end`."""
    n = shift = 0
    while i < end and shift < 64:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, i
        shift += 7
    raise _Unsplittable


_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def uvarint(n: int) -> bytes:
    """`n` as a protobuf varint."""
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_Run = tuple[int, int, int, int]
"""(start, end, field number, value start) of one big bulk element to split further; field number
-1: a run of whole fields (start, end) that goes into one piece as it is."""


def _plan(b: bytes | memoryview, level: Level, deeper: bool,
          size: int) -> tuple[list[tuple[int, int]], list[_Run]]:
    """The spans of the header fields of message `b`, and its bulk as runs of at most `size`
    bytes (or single elements to split further)."""
    header: list[tuple[int, int]] = []
    runs: list[_Run] = []
    bulk = level.bulk
    oneof = level.oneof
    seen: set[int] = set()
    run_start = run_end = -1
    i, end = 0, len(b)
    while i < end:
        start = i
        key = b[i]
        if key < 0x80:
            i += 1
        else:
            key, i = read_uvarint(b, i, end)
        wire = key & 7
        if wire == 2:
            length = b[i] if i < end else 0x80
            if length < 0x80:
                i += 1
            else:
                length, i = read_uvarint(b, i, end)
            value = i
            i += length
            if i > end:
                raise _Unsplittable
            number = key >> 3
            if number in bulk:
                if oneof:
                    seen.add(number)
                if deeper and i - start > size:
                    if run_start >= 0:
                        runs.append((run_start, run_end, -1, 0))
                        run_start = -1
                    runs.append((start, i, number, value))
                elif run_start >= 0 and run_end == start and i - run_start <= size:
                    run_end = i
                else:
                    if run_start >= 0:
                        runs.append((run_start, run_end, -1, 0))
                    run_start, run_end = start, i
                continue
        elif wire == 0:
            _, i = read_uvarint(b, i, end)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise _Unsplittable  # groups (3, 4) or nonsense
        if i > end:
            raise _Unsplittable
        header.append((start, i))
    if run_start >= 0:
        runs.append((run_start, run_end, -1, 0))
    if len(seen) > 1:
        raise _Unsplittable
    return header, runs


def _pieces(b: bytes | memoryview, levels: tuple[Level, ...], size: int,
            plan: tuple[list[tuple[int, int]], list[_Run]] | None = None) -> Iterator[bytes]:
    header, runs = plan or _plan(b, levels[0], len(levels) > 1, size)
    if not runs:  # nothing to spread: as it is
        yield bytes(b)
        return
    head = b"".join([b[s:e] for s, e in header])
    for start, end, number, value in runs:
        if number < 0:
            yield b"".join((head, b[start:end]))
            continue
        tag = uvarint(number << 3 | 2)
        for sub in _pieces(b[value:end], levels[1:], max(1, size - len(head))):
            yield b"".join((head, tag, uvarint(len(sub)), sub))


class Unsplittable(Exception):
    """A request whose nested fields turned out not to split after pieces of it were given out:
    the caller starts again with the request whole (see `pieces`)."""


def pieces(data: bytes, levels: tuple[Level, ...], size: int = PIECE_BYTES) -> Iterator[bytes]:
    """`data` (a serialized request) as serialized requests of about `size` bytes whose rows,
    converted in order, are the rows of `data`; `data` itself when it is not longer than `size`
    or its top level does not split. A deeper level that does not split (malformed, say) raises
    Unsplittable; the parser of the whole request then says what is wrong with it, if anything."""
    if len(data) <= size:
        yield data
        return
    view = memoryview(data)
    try:
        plan = _plan(view, levels[0], len(levels) > 1, size)
    except _Unsplittable:
        yield data
        return
    try:
        yield from _pieces(view, levels, size, plan)
    except _Unsplittable as e:
        raise Unsplittable("nested fields that do not split") from e
