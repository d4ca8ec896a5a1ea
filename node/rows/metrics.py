"""Prometheus remote write 1.0 and OTLP metrics requests as metric rows (rows.md, "Metrics").

One table per metric (`normalize_name` of `__name__`), in the database named by the
`adxmon_database` label (normalised) or the configured default. Columns:

    Timestamp:datetime, SeriesId:long, Labels:dynamic, Value:real[, <lifted>:string ...]

    2026-11-24T04:00:00.123Z,-3331289320299047180,"{""pod"":""a""}",0.5\\n      up{pod="a"} = 0.5

Remote write timestamps have 3 fractional digits (milliseconds), OTLP ones 9 (nanoseconds). See
series.py for the series id and labels, csvtext.py for values, otlpmetrics.py for how OTLP types
and resources become series. `ConvertResult.accepted` counts rows; `rejected` counts samples or
data points.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from struct import Struct
from struct import error as struct_error

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from xxhash import xxh3_128_intdigest

from node.cache import BoundedCache, Generations
from node.errors import DecodeError
from node.gen.prometheus.remote_pb2 import TimeSeries, WriteRequest
from node.gen.prometheus.remote_raw_pb2 import RawWriteRequest
from node.rows.batch import KIND_METRIC, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, real
from node.rows.filters import MetricFilters
from node.rows.otlpmetrics import OtlpMetrics, Parsed
from node.rows.series import Entry, SeriesEncoder
from node.rows.wire import skip_length_delimited

_LABEL_TAG = 0x0A  # TimeSeries field 1 (labels), length-delimited
_SAMPLE_TAG = 0x12  # TimeSeries field 2 (samples), length-delimited


CACHED_SERIES_BYTES = 512
"""Memory a cached series takes, 8 labels: its Labels JSON, its key, a dict slot (`make bench`:
475-515 bytes)."""
MIN_CACHED_SERIES, MAX_CACHED_SERIES = 200_000, 2_000_000


def cached_series(memory: int) -> int:
    """Entries each series cache may hold in a process whose share of --max-memory is `memory`:
    a quarter of it at `CACHED_SERIES_BYTES` each, so both caches full take half of it again (its
    default, half the container's memory: a quarter of the container). 200,000 at least,
    2,000,000 at most: 1,000,000 series in use stay cached from a 4 GiB share (an 8 GiB
    container), 262,144 from the 1 GiB default share without a container limit (524,288 entries)."""
    return max(MIN_CACHED_SERIES, min(MAX_CACHED_SERIES, memory // 4 // CACHED_SERIES_BYTES))


@dataclass(frozen=True)
class MetricsConfig:
    """How metric series are routed and laid out."""

    default_database: str = "Metrics"
    """Database of a series without an `adxmon_database` label."""
    lift_labels: tuple[str, ...] = ()
    """Labels written as their own string columns (matched case-insensitively, ordered by
    lower-cased name) instead of inside `Labels`."""
    allowed_databases: frozenset[str] | None = None
    """Databases that have a sink; a series routed elsewhere is rejected. None: all are allowed."""
    promote_resource_attributes: tuple[str, ...] = ()
    """OTLP resource attributes copied as labels onto every series of the resource."""
    drop_metrics: tuple[str, ...] = ()
    """adx-mon's `--drop-metrics`: regular expressions; a series whose `__name__` one matches
    (anywhere) is not stored (filters.py)."""
    drop_labels: tuple[str, ...] = ()
    """adx-mon's `--drop-labels`: `METRIC_REGEX=LABEL_REGEX`; the labels whose name LABEL_REGEX
    matches are removed from the series of the metrics METRIC_REGEX matches (filters.py)."""
    add_labels: tuple[str, ...] = ()
    """adx-mon's `--add-labels`: `NAME=VALUE`; a string column NAME holding VALUE on every row,
    after `Value` and before the lifted columns (filters.py)."""
    max_cached_series: int = MAX_CACHED_SERIES
    """Series entries each cache (remote write, OTLP) holds at most; see cache.py for which go.
    A cache turns when its young generation holds half of it, so half of it in series in use stay
    cached; past that, points of series not seen in the last turn take the miss path (~6x
    slower). A node sizes it from its memory (`cached_series`)."""


WHOLE_SERIES = 4096
"""A WriteRequest of up to this many series (Prometheus sends at most 2,000 samples a request by
default; ~1 MiB) is serialized again whole and read as a RawWriteRequest: 1.7 us a sample, where
series by series costs 2.0 and a RawWriteRequest parsed from the wire 1.2 (one core, warm)."""


def _labels_end(b: bytes) -> int:
    """End of the leading run of label fields of a serialized TimeSeries."""
    i, n = 0, len(b)
    while i < n and b[i] == _LABEL_TAG:
        i = skip_length_delimited(b, i)
    return i


_DOUBLE = Struct("<d")
_VALUE_SAMPLE = Struct("<3sdB6s")
"""The last 18 bytes of a series whose one sample has a value and a 6-byte timestamp."""
_VALUE_HEAD = bytes((_SAMPLE_TAG, 16, 0x09))  # the sample field, 16 bytes, its value (field 1, fixed64)
_ZERO_HEAD = bytes((_SAMPLE_TAG, 7, 0x10))  # the sample field, 7 bytes, its timestamp (field 2, varint)
_serialize_series = TimeSeries.SerializeToString


def _parse_series(b: bytes) -> TimeSeries:
    """A series of a RawWriteRequest parsed; DecodeError, as its request's parse gives, if it does
    not parse."""
    try:
        return TimeSeries.FromString(b)
    except ProtobufDecodeError as e:
        raise DecodeError(f"malformed prometheus.WriteRequest: {e}") from e


class MetricsConverter:
    """Converts metric requests to rows, caching one `Entry` per series between requests."""

    def __init__(self, cfg: MetricsConfig | None = None) -> None:
        self.cfg = cfg = cfg or MetricsConfig()
        self._series = SeriesEncoder(cfg.default_database, cfg.lift_labels, cfg.allowed_databases,
                                     MetricFilters(cfg.drop_metrics, cfg.drop_labels, cfg.add_labels))
        self.schema: Schema = self._series.schema
        self._remote: Generations[int, Entry] = Generations(cfg.max_cached_series)
        self._ms = Timestamps(3)
        self._stamps: BoundedCache[bytes, str] = BoundedCache(8192)
        """Timestamp text by the 6 bytes of its varint (`_remote_write`)."""
        self._otlp = OtlpMetrics(self._series, cfg.promote_resource_attributes, cfg.max_cached_series)

    def turn(self) -> None:
        """Let the caches forget what was not used since the previous turn (node/cache.py)."""
        self._remote.turn()
        self._otlp.turn()
        self._series.turn()

    def convert_remote_write(self, req: WriteRequest | RawWriteRequest) -> ConvertResult:
        """Rows of a decoded `prometheus.WriteRequest` (either message)."""
        return self.convert_remote_write_pieces((req,))

    def convert_remote_write_pieces(self, reqs: Iterable[WriteRequest | RawWriteRequest]) -> ConvertResult:
        """Rows of a `prometheus.WriteRequest` given in pieces (wire.pieces), parsed one at a time.

        A piece parsed as a `RawWriteRequest` gives each series as it came on the wire, which is
        the fast way; a `WriteRequest` is serialized again, whole up to `WHOLE_SERIES` series, and
        series by series beyond, so that its copy never takes much memory. Either way a series is
        read from its bytes: see `_remote_write`. Raises DecodeError for a series that does not
        parse (which a RawWriteRequest's parse leaves for here).
        """
        out = ResultBuilder(KIND_METRIC, self.schema)
        for req in reqs:
            self._remote.turn_if_full()
            if isinstance(req, RawWriteRequest):
                self._remote_write(req.timeseries, out)
            elif len(req.timeseries) <= WHOLE_SERIES:
                self._remote_write(RawWriteRequest.FromString(req.SerializeToString()).timeseries, out)
            else:
                self._remote_write(map(_serialize_series, req.timeseries), out)
            out.flush()
        return out.result()

    def _remote_write(self, series: Iterable[bytes], out: ResultBuilder) -> None:
        """Rows of serialized TimeSeries.

        What Prometheus sends, a run of labels (field 1) then one sample (field 2: a double and a
        6-byte varint, milliseconds from 1971 to 2109; or the varint alone, the value being 0), is
        recognised from its last bytes:

            0A .. label .. 0A .. label ..  12 10 09 <value: 8 bytes> 10 <timestamp: 6 bytes>
            0A .. label .. 0A .. label ..  12 07 10 <timestamp: 6 bytes>
            |<------------ key ---------->|

        and the bytes before the sample are the series' cache key (a 128-bit digest of them). Every
        key of the cache is the digest of bytes that parse as a TimeSeries without samples (its
        labels; checked before it is put), so a hit proves the shape: as messages concatenated
        merge, the series is those labels and that one sample. The timestamp's text is cached by
        its 6 bytes, put only once they are checked to be one varint. Any other series goes to
        `_other_series`: several samples of these shapes, or anything else (exemplars, native
        histograms, unknown fields, labels not first, other timestamps), which is parsed as a
        TimeSeries.
        """
        cache = self._remote
        get = cache.young.get
        sget = self._stamps.get
        unpack = _VALUE_SAMPLE.unpack_from
        last_dest: tuple[str, str] | None = None
        rows: list[str] = []
        append = rows.append
        for b in series:
            try:
                head, v, tag, tb = unpack(b, -18)
            except struct_error:  # shorter than that
                head = b""
            if head == _VALUE_HEAD and tag == 0x10:
                cut = -18
            elif b[-9:-6] == _ZERO_HEAD:
                cut = -9
                v = 0.0
                tb = b[-6:]
            else:
                self._other_series(b, out)
                continue
            stamp = sget(tb) or self._stamp(tb)
            key = xxh3_128_intdigest(b[:cut])
            entry = get(key) or cache.get(key) or (self._new_series(b, cut, key) if stamp else None)
            if entry is None or not stamp:
                self._other_series(b, out)
                continue
            dest, mid, tail = entry
            if dest is None:
                if mid:  # else dropped by --drop-metrics (series.SKIP)
                    out.reject(mid)
                continue
            if dest is not last_dest:
                append = out.rows(dest).append
                last_dest = dest
            append(f"{stamp}{mid}{repr(v) if v - v == 0.0 else real(v)}{tail}")

    def _stamp(self, tb: bytes) -> str:
        """Text of a timestamp given as a 6-byte varint (cached by those bytes); "" if `tb` is not
        one. Such a timestamp is always within years 1..9999."""
        if not tb[0] & tb[1] & tb[2] & tb[3] & tb[4] & 0x80 or tb[5] & 0x80:
            return ""
        t = (tb[0] & 0x7F | (tb[1] & 0x7F) << 7 | (tb[2] & 0x7F) << 14 | (tb[3] & 0x7F) << 21
             | (tb[4] & 0x7F) << 28 | tb[5] << 35)
        return self._stamps.put(tb, self._ms.cache.get(t) or self._ms.format(t))

    def _new_series(self, b: bytes, cut: int, key: int) -> Entry | None:
        """The `Entry` of the labels `b[:cut]` (`cut` < 0: from the end), now cached; None if they
        are not the labels of a series with one sample (`_other_series` then reads it)."""
        n = len(b) + cut
        if ((n >= 18 and b[n - 18:n - 15] == _VALUE_HEAD and b[n - 7] == 0x10)
                or (n >= 9 and b[n - 9:n - 6] == _ZERO_HEAD)):  # another sample before it, most likely
            return None
        try:
            head = TimeSeries.FromString(b[:cut])
        except ProtobufDecodeError:  # `cut` is not where a field ends
            return None
        if head.samples:
            return None
        return self._remote.put(key, self._series.encode([(label.name, label.value) for label in head.labels]))

    def _other_series(self, b: bytes, out: ResultBuilder) -> None:
        """Rows of a serialized TimeSeries not in the usual shape: one with several samples of the
        usual shapes (read from the end, as one), or any other (`_parsed_series`). The bytes
        before the samples become a cache key only once they parse as a TimeSeries without
        samples."""
        cut = len(b)
        found: list[tuple[float, bytes]] = []
        while cut >= 9:
            if cut >= 18 and b[cut - 18:cut - 15] == _VALUE_HEAD and b[cut - 7] == 0x10:
                found.append((_DOUBLE.unpack_from(b, cut - 15)[0], b[cut - 6:cut]))
                cut -= 18
            elif b[cut - 9:cut - 6] == _ZERO_HEAD:
                found.append((0.0, b[cut - 6:cut]))
                cut -= 9
            else:
                break
        stamps = [self._stamps.get(tb) or self._stamp(tb) for _, tb in found]
        if not found or not all(stamps):
            self._parsed_series(_parse_series(b), out)
            return
        cache = self._remote
        key = xxh3_128_intdigest(b[:cut])
        entry = cache.get(key)
        if entry is None:
            try:
                head = TimeSeries.FromString(b[:cut])
            except ProtobufDecodeError:  # `cut` is not where a field ends
                head = None
            if head is None or head.samples:
                self._parsed_series(_parse_series(b), out)
                return
            entry = cache.put(key, self._series.encode([(label.name, label.value) for label in head.labels]))
        dest, mid, tail = entry
        if dest is None:
            if mid:  # else dropped by --drop-metrics (series.SKIP)
                out.reject(mid, len(found))
            return
        append = out.rows(dest).append
        for (v, _), stamp in zip(reversed(found), reversed(stamps), strict=True):
            append(f"{stamp}{mid}{repr(v) if v - v == 0.0 else real(v)}{tail}")

    def _parsed_series(self, ts: TimeSeries, out: ResultBuilder) -> None:
        """Rows of a parsed TimeSeries of any shape. Its cache key is its labels serialized again:
        they come first, so the leading run of label fields of its serialization is all of them."""
        samples = ts.samples
        if not samples:
            return
        cache = self._remote
        b = ts.SerializeToString()
        key = xxh3_128_intdigest(b[:_labels_end(b)])
        entry = cache.get(key) or cache.put(key, self._series.encode([(label.name, label.value)
                                                                       for label in ts.labels]))
        dest, mid, tail = entry
        if dest is None:
            if mid:  # else dropped by --drop-metrics (series.SKIP)
                out.reject(mid, len(samples))
            return
        rows = out.rows(dest)
        tget = self._ms.cache.get
        tformat = self._ms.format
        for s in samples:
            t = s.timestamp
            try:
                stamp = tget(t) or tformat(t)
            except ValueError as err:
                out.reject(str(err))
                continue
            v = s.value
            rows.append(f"{stamp}{mid}{repr(v) if v - v == 0.0 else real(v)}{tail}")

    def convert_otlp(self, req: Parsed | ExportMetricsServiceRequest) -> ConvertResult:
        """Rows of a decoded `ExportMetricsServiceRequest`: its bytes read as a RawRequest
        (otlpmetrics.py's `parse_request`: fastest), or the message."""
        return self.convert_otlp_pieces((req,))

    def convert_otlp_pieces(self, reqs: Iterable[Parsed | ExportMetricsServiceRequest]) -> ConvertResult:
        """Rows of an `ExportMetricsServiceRequest` given in pieces (wire.pieces), parsed one at a
        time (`parse_request`); one TargetInfo row per resource of the request, after its pieces.
        Raises DecodeError, as the parse of the request would, when a gauge or sum point's
        attributes do not parse (otlpmetrics.py)."""
        out = ResultBuilder(KIND_METRIC, self.schema)
        latest = self._otlp.start()
        for req in reqs:
            self._otlp.convert(req, out, latest)
            out.flush()
        self._otlp.finish(latest, out)
        return out.result()
