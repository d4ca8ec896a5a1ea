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

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from xxhash import xxh3_128_intdigest

from node.cache import Generations
from node.gen.prometheus.remote_pb2 import WriteRequest
from node.rows.batch import KIND_METRIC, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, real
from node.rows.filters import MetricFilters
from node.rows.otlpmetrics import OtlpMetrics
from node.rows.series import Entry, SeriesEncoder
from node.rows.wire import skip_length_delimited, uvarint

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


def _labels_end(b: bytes) -> int:
    """End of the leading run of label fields of a serialized TimeSeries."""
    i, n = 0, len(b)
    while i < n and b[i] == _LABEL_TAG:
        i = skip_length_delimited(b, i)
    return i


class MetricsConverter:
    """Converts metric requests to rows, caching one `Entry` per series between requests."""

    def __init__(self, cfg: MetricsConfig | None = None) -> None:
        self.cfg = cfg = cfg or MetricsConfig()
        self._series = SeriesEncoder(cfg.default_database, cfg.lift_labels, cfg.allowed_databases,
                                     MetricFilters(cfg.drop_metrics, cfg.drop_labels, cfg.add_labels))
        self.schema: Schema = self._series.schema
        self._remote: Generations[int, Entry] = Generations(cfg.max_cached_series)
        self._ms = Timestamps(3)
        self._otlp = OtlpMetrics(self._series, cfg.promote_resource_attributes, cfg.max_cached_series)

    def turn(self) -> None:
        """Let the caches forget what was not used since the previous turn (node/cache.py)."""
        self._remote.turn()
        self._otlp.turn()
        self._series.turn()

    def convert_remote_write(self, req: WriteRequest) -> ConvertResult:
        """Rows of a decoded `prometheus.WriteRequest`."""
        return self.convert_remote_write_pieces((req,))

    def convert_remote_write_pieces(self, reqs: Iterable[WriteRequest]) -> ConvertResult:
        """Rows of a `prometheus.WriteRequest` given in pieces (wire.pieces), parsed one at a time.

        The cache key of a series is its serialization up to its samples. Labels (field 1) come
        first on the wire and samples (field 2, tag 0x12) right after them, so cutting the sample
        bytes off the end leaves the labels -- plus, when exemplars or unknown fields follow,
        some bytes that start with a tag other than 0x0A. Such a key still determines the label
        set (the labels are its maximal run of 0x0A fields); it only caches less well, so then
        the labels are measured field by field instead.
        """
        out = ResultBuilder(KIND_METRIC, self.schema)
        for req in reqs:
            self._remote.turn_if_full()
            self._remote_write(req, out)
            out.flush()
        return out.result()

    def _remote_write(self, req: WriteRequest, out: ResultBuilder) -> None:
        cache = self._remote
        get = cache.young.get
        tget = self._ms.cache.get
        tformat = self._ms.format
        last_dest: tuple[str, str] | None = None
        rows: list[str] = []
        for ts in req.timeseries:
            samples = ts.samples
            if not samples:
                continue
            b = ts.SerializeToString()
            cut = len(b)
            for s in samples:
                size = s.ByteSize()  # a Sample is at most 20 bytes, unless it carries unknown fields
                cut -= 2 + size if size < 0x80 else 1 + len(uvarint(size)) + size
            if b[cut] != _SAMPLE_TAG:
                cut = _labels_end(b)
            key = xxh3_128_intdigest(b[:cut])
            entry = get(key)
            if entry is None:
                entry = cache.get(key) or cache.put(key, self._series.encode([(label.name, label.value)
                                                                               for label in ts.labels]))
            dest, mid, tail = entry
            if dest is None:
                if mid:  # else dropped by --drop-metrics (series.SKIP)
                    out.reject(mid, len(samples))
                continue
            if dest is not last_dest:
                rows = out.rows(dest)
                last_dest = dest
            for s in samples:
                t = s.timestamp
                try:
                    stamp = tget(t) or tformat(t)
                except ValueError as err:
                    out.reject(str(err))
                    continue
                v = s.value
                rows.append(f"{stamp}{mid}{repr(v) if v - v == 0.0 else real(v)}{tail}")

    def convert_otlp(self, req: ExportMetricsServiceRequest) -> ConvertResult:
        """Rows of a decoded `ExportMetricsServiceRequest`."""
        return self.convert_otlp_pieces((req,))

    def convert_otlp_pieces(self, reqs: Iterable[ExportMetricsServiceRequest]) -> ConvertResult:
        """Rows of an `ExportMetricsServiceRequest` given in pieces (wire.pieces), parsed one at a
        time; one TargetInfo row per resource of the request, after its pieces."""
        out = ResultBuilder(KIND_METRIC, self.schema)
        latest = self._otlp.start()
        for req in reqs:
            self._otlp.convert(req, out, latest)
            out.flush()
        self._otlp.finish(latest, out)
        return out.result()
