"""OTLP metrics to metric rows, the way Prometheus's OTLP translation names things.

* Metric names: `prometheus_metric_name` (characters outside [A-Za-z0-9_:] become "_"; no unit
  or `_total` suffixes are added), then `normalize_name` for the table.
* Data-point attributes become labels (`prometheus_label_name`; keys that collide after that are
  joined with ";" in key order, as Prometheus does).
* Resource: `service.name` -> `job` (`service.namespace/service.name` when a namespace is set),
  `service.instance.id` -> `instance`; both override data-point attributes of the same name. The
  attributes listed in `promote_resource_attributes`, and `adxmon_database` (also spelled
  `adxmon.database`) if present, become labels of every series unless a data point sets them.
  Every other resource attribute is kept the way Prometheus keeps it: one `target_info` series per
  resource (table `TargetInfo`, value 1, at the latest timestamp of the resource's points in the
  request; one row per distinct resource of a request, however often the request repeats it) whose
  labels are `job`, `instance` and all the other resource attributes. Join on
  `Labels.job`/`Labels.instance` to get them. Scope names and versions are not kept.
* gauge, sum -> one row per data point (delta sums are written as they come).
  histogram -> `<name>_count`, `<name>_sum` (when set), `<name>_bucket` with cumulative counts per
  `le`, the last one `+Inf` = count. exponential histogram -> the same, its buckets turned into
  explicit `le` bounds (see exphist.py). summary -> `<name>_count`, `<name>_sum`, and `<name>` with
  a `quantile` label per quantile.
* A data point flagged "no recorded value" is skipped: neither accepted nor rejected.

Requests are read as `ingestor.otlp_raw.ExportMetricsServiceRequestOfBytes` (proto/opentelemetry_raw/
metrics_raw.proto, `parse_request`): the wire of an ExportMetricsServiceRequest, parsed as it parses,
except that each metric is left as the bytes it came as. A gauge or sum metric laid out as senders
write it (name, description, unit, then its gauge or sum, nothing else) is read from those bytes, its
points as the bytes each came as (`OtlpMetrics._convert`); any other metric is parsed as
`ingestor.otlp_raw.Metric` (a point left as its bytes there too), nested as deep as in a request. A
point is read from its bytes when they are laid out as senders write them (its times and value first,
then its attributes and flags, its series known by those); a point of a known series costs no parse.
The new series of a metric's points are parsed at once (`_new_series`), nested as deep as in the
request, so that they parse exactly when the whole request's parse parses them; any other point is
parsed alone, nested as deep (`_point`). A request that parse refuses is refused with its error
(DecodeError, the request's bytes parsed again for its text). Given a message (OTLP/JSON), the
converter reads it from its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any, NamedTuple, cast

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from xxhash import xxh3_128_digest

from node.cache import Generations
from node.errors import DecodeError
from node.gen.opentelemetry_raw import metrics_raw_pb2
from node.rows.anyvalue import to_label
from node.rows.batch import ResultBuilder
from node.rows.csvtext import Timestamps, label_float, real
from node.rows.exphist import cumulative_buckets
from node.rows.names import prometheus_label_name, prometheus_metric_name
from node.rows.series import DATABASE_LABEL, NAME_LABEL, SKIP, Entry, SeriesEncoder
from node.rows.wire import skip_length_delimited, uvarint

_NO_RECORDED_VALUE = 1
_FIXED64_TAGS = b"\x11\x19\x21\x31"  # NumberDataPoint fields 2, 3, 4, 6: tag + 8 bytes
_EXEMPLARS_TAG = 0x2A  # NumberDataPoint field 5 (length-delimited)
_START_TAG = 0x11  # NumberDataPoint field 2 (start_time_unix_nano, fixed64)
_TIME_TAG = 0x19  # field 3 (time_unix_nano, fixed64)
_DOUBLE_TAG = 0x21  # field 4 (as_double, double)
_INT_TAG = 0x31  # field 6 (as_int, sfixed64)
_FLAGS_TAG = 0x40  # field 8 (flags, varint)
_ATTRIBUTE_TAG = 0x3A  # field 7 (attributes, length-delimited)
_NO_VALUE, _DOUBLE, _INT = 0, 1, 2  # a point's value: none, as_double, as_int
_U64 = struct.Struct("<Q").unpack_from
_U64_F64 = struct.Struct("<Qxd").unpack_from  # time, a tag, as_double
_U64_I64 = struct.Struct("<Qxq").unpack_from  # time, a tag, as_int
_F64 = struct.Struct("<d").unpack_from
_I64 = struct.Struct("<q").unpack_from
_NO_VALUE_REASON = "number data point without a value"
_RESOURCE_SERVICE_KEYS = ("service.name", "service.namespace", "service.instance.id")
_H_FIXED64_TAGS = b"\x11\x19\x21\x29\x59\x61"  # HistogramDataPoint fields 2-5, 11, 12: tag + 8 bytes
_H_SKIPPED_TAGS = b"\x32\x42"  # fields 6 (bucket counts) and 8 (exemplars), length-delimited
_H_BOUNDS_TAG = 0x3A  # field 7 (explicit bounds), length-delimited
_H_ATTRIBUTES_TAG = 0x4A  # field 9 (attributes), length-delimited, repeated
_H_FLAGS_TAG = 0x50  # field 10 (flags), varint
_E_ATTRIBUTES_TAG = 0x0A  # ExponentialHistogramDataPoint field 1 (attributes): first on the wire
_KV_TAG = b"\x3a"  # NumberDataPoint field 7 (attributes), length-delimited
_MALFORMED = f"malformed {ExportMetricsServiceRequest.DESCRIPTOR.full_name}"

RawRequest = metrics_raw_pb2.ExportMetricsServiceRequest
"""An ExportMetricsServiceRequest's wire, each gauge or sum point left as its bytes."""
BytesRequest = metrics_raw_pb2.ExportMetricsServiceRequestOfBytes
"""An ExportMetricsServiceRequest's wire, each metric left as its bytes."""
_RawMetric = metrics_raw_pb2.Metric
_RawGauge = metrics_raw_pb2.Gauge
_RawSum = metrics_raw_pb2.Sum
_GAUGE_TAG = 0x2A  # Metric field 5 (gauge), length-delimited
_SUM_TAG = 0x3A  # Metric field 7 (sum), length-delimited
_HEAD_TAGS = (0x12, 0x1A)  # Metric fields 2 and 3 (description, unit), length-delimited
_POINT_TAG = 0x0A  # Gauge and Sum field 1 (data_points), length-delimited
_SUM_TAILS = frozenset([b"", b"\x10\x01", b"\x10\x02", b"\x18\x01", b"\x10\x01\x18\x01", b"\x10\x02\x18\x01"])
"""A Sum's fields after its one point, as senders write them: aggregation_temporality, is_monotonic."""


class Parsed(NamedTuple):
    """A serialized ExportMetricsServiceRequest read as a BytesRequest (`parse_request`), with its
    bytes: when a metric or a point does not parse, the request is refused with the error of its whole
    parse (whose text depends on the bytes around them)."""

    request: BytesRequest
    data: bytes


def parse_request(data: bytes) -> Parsed:
    """`data`, a serialized ExportMetricsServiceRequest, read as a BytesRequest. Raises the DecodeError
    of protobuf that the parse of an ExportMetricsServiceRequest raises when this parse fails (a
    metric or a point that does not parse is found by the converter)."""
    try:
        return Parsed(BytesRequest.FromString(data), data)
    except ProtobufDecodeError:
        ExportMetricsServiceRequest.FromString(data)  # raises the error the senders' message gives
        raise


def _number_points(mb: bytes, k: int, is_sum: bool) -> list[bytes] | None:
    """The points of the Gauge or Sum that `mb` (a serialized Metric) holds from `k` to its end, or
    None when that is not laid out so that its parse alone is its parse in a request: anything but
    its points (and a Sum's aggregation_temporality and is_monotonic) may be an unknown field, whose
    parse depends on how deep it is. Parsed, each of its bytes accounted for by its points and fields
    as senders write them (one point is read from the bytes in `OtlpMetrics._convert`)."""
    body = mb[k:]
    try:
        if is_sum:
            msg: Any = _RawSum.FromString(body)
            t = msg.aggregation_temporality
            if not 0 <= t < 0x80:
                return None
            size = (2 if t else 0) + (2 if msg.is_monotonic else 0)
        else:
            msg = _RawGauge.FromString(body)
            size = 0
    except ProtobufDecodeError:
        return None
    points: list[bytes] = msg.data_points[:]
    if points:
        lengths = list(map(len, points))
        top = max(lengths)
        if top < 0x80:
            size += 2 * len(points)
        elif top < 0x4000 and min(lengths) >= 0x80:
            size += 3 * len(points)
        else:
            return None
        size += sum(lengths)
    return points if size == len(body) else None


def _metric_at_depth(mb: bytes) -> Any:
    """A serialized Metric parsed as a Metric of a request (nested as deep); raises ProtobufDecodeError."""
    req = RawRequest.FromString(_wrapped(b"\x0a", _wrapped(b"\x12", _wrapped(b"\x12", mb))))
    return req.resource_metrics[0].scope_metrics[0].metrics[0]


class _Several(Exception):
    """A metric came with more than one data field (gauge, sum, the oneof of the others): an
    ExportMetricsServiceRequest's parse keeps the last, and refuses the request when a point of
    another does not parse. Raised before a row is written; the request is read from its whole parse."""


class _Malformed(Exception):
    """A gauge or sum point that the parse of its request would refuse."""


def _wrapped(field: bytes, data: bytes) -> bytes:
    return field + uvarint(len(data)) + data


def _request_of(points: Iterable[bytes]) -> bytes:
    """A serialized ExportMetricsServiceRequest whose one gauge has these serialized NumberDataPoints:
    their fields nested as deep as in any request (resource_metrics(1).scope_metrics(2).metrics(2).
    gauge(5).data_points(1)), so that they parse there as they parse in the request they came in."""
    gauge = b"".join([b"\x0a" + uvarint(len(p)) + p for p in points])
    return _wrapped(b"\x0a", _wrapped(b"\x12", _wrapped(b"\x12", _wrapped(b"\x2a", gauge))))


def _point_attributes(attributes: Sequence[bytes], strict: bool) -> tuple[Sequence[KeyValue], bool]:
    """The KeyValues of a gauge or sum point's attribute bytes, parsed where an ExportMetricsServiceRequest
    parses them (in a point of a metric of a scope of a resource: the same nesting limit), and whether
    that parse took them (False: only a parse of each alone did, for a message given whole, which
    held them). Raises _Malformed when it does not and `strict` (the request came as bytes, so its
    parse would have refused it)."""
    point = b"".join([_wrapped(_KV_TAG, a) for a in attributes])
    try:
        req = ExportMetricsServiceRequest.FromString(_request_of([point]))
    except ProtobufDecodeError as e:
        if strict:
            raise _Malformed(f"{_MALFORMED}: {e}") from e
        try:
            return [KeyValue.FromString(a) for a in attributes], False
        except ProtobufDecodeError as e2:  # cannot happen: they were a message's
            raise DecodeError(f"{_MALFORMED}: {e2}") from e2
    return req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].attributes, True

Labels = Iterable[tuple[str, str]]
_NONE: dict[Any, Entry] = {}
"""The old series of a metric that has none (never written to)."""
_Series = tuple[str, tuple[str, str] | None, str]  # (metric name, extra label, value text)
_Group = tuple[str, tuple[tuple[tuple[str, str], int, int, tuple[tuple[str, str], ...]], ...]]
"""The series of a histogram point: the reason its _count series is refused ("" when it is not), and
its rows as runs (destination, first and end index in the point's values, (mid, tail) of each)."""
_ExpGroup = tuple[str, tuple[tuple[tuple[str, str], int, int, tuple[tuple[str, str], ...]], ...], tuple[int, ...]]
"""The same for an exponential histogram point, with the indexes of its cumulative counts that are rows."""


def _histogram_key(b: bytes, has_sum: bool) -> tuple[bytes, bytes, bool] | None:
    """The key of a serialized HistogramDataPoint's series: its attribute bytes, its bounds' bytes
    and whether it has a sum (which give its series and their order); None when its bytes hold a
    field not expected here (then the caller keys it by its parsed attributes and bounds).

    A serialized message has its fields in field-number order, so the attributes are one run.
    """
    i = 0
    n = len(b)
    attrs = bounds = b""
    while i < n:
        tag = b[i]
        if tag == _H_ATTRIBUTES_TAG:
            if attrs:
                return None
            start = i
            while i < n and b[i] == _H_ATTRIBUTES_TAG:
                i = skip_length_delimited(b, i)
            attrs = b[start:i]
        elif tag in _H_FIXED64_TAGS:
            i += 9
        elif tag in _H_SKIPPED_TAGS:
            i = skip_length_delimited(b, i)
        elif tag == _H_BOUNDS_TAG:
            start = i
            i = skip_length_delimited(b, i)
            bounds = b[start:i]
        elif tag == _H_FLAGS_TAG:
            i += 1
            while b[i] >= 0x80:
                i += 1
            i += 1
        else:
            return None
    return attrs, bounds, has_sum


def _series_bytes(b: bytes) -> bytes:
    """A serialized NumberDataPoint from its attributes on (its series, as the cache keys it):
    fields 2-6 (times, value, exemplars) come first on the wire and are skipped."""
    i = 0
    n = len(b)
    while i < n:
        tag = b[i]
        if tag in _FIXED64_TAGS:
            i += 9
        elif tag == _EXEMPLARS_TAG:
            i = skip_length_delimited(b, i)
        else:
            break
    return b[i:] if i else b


def _only_series(b: bytes) -> bool:
    """Whether a NumberDataPoint's bytes from the attributes on (which parse) hold nothing but
    attributes and flags: fields whose last occurrence would override the time or value read
    before them, exemplars and unknown fields send the point to `_point`."""
    i = 0
    n = len(b)
    while i < n:
        tag = b[i]
        if tag == _ATTRIBUTE_TAG:
            i = skip_length_delimited(b, i)
        elif tag == _FLAGS_TAG:
            i += 1
            while b[i] >= 0x80:
                i += 1
            i += 1
        else:
            return False
    return True


class _Resource:
    """What one OTLP resource contributes. Hashed by identity: the converter keeps one per
    distinct serialized resource (while it is cached), so it can key the series cache."""

    __slots__ = ("defaults", "info", "info_entry", "overrides")

    def __init__(self, defaults: dict[str, str], overrides: dict[str, str], info: dict[str, str] | None):
        self.defaults = defaults
        self.overrides = overrides
        self.info = info
        self.info_entry: Entry | None = None


Latest = dict[bytes, tuple[_Resource, int]]
"""Per serialized resource of one request: its TargetInfo and the latest timestamp of its points."""


class OtlpMetrics:
    """Holds the caches of OTLP metric conversion: resources, names, label names, series entries.

    Each is two generations (node/cache.py). The series entries are kept per (resource, metric name),
    each a dict of the metric's series, in a young and an old generation of such dicts: a series
    is found with one lookup in the young dict of its metric, and one not used for two turns goes.
    """

    def __init__(self, series: SeriesEncoder, promote: tuple[str, ...], max_series: int) -> None:
        self._series = series
        self._promote = promote
        self._half = max(1, max_series // 2)
        self._ts = Timestamps(9)
        self._resources: Generations[bytes, _Resource] = Generations(max_series)
        self._young: dict[tuple[_Resource, str], dict[Any, Entry]] = {}
        self._old: dict[tuple[_Resource, str], dict[Any, Entry]] = {}
        self._size = 0
        """Series entries in the young generation."""
        self._numbers_of: dict[_Resource, dict[str | bytes, tuple[str, dict[Any, Entry]]]] = {}
        """Per resource, per gauge or sum metric name as it came (or its bytes before its data, which
        parsed): its table's name and its young series dict (one lookup for both); forgotten at each
        turn, with the young generation."""
        self._names: Generations[str, str] = Generations(max_series)
        self._label_names: Generations[str, str] = Generations(max_series)

    def turn(self) -> None:
        """Forget what was not used since the previous turn."""
        self._resources.turn()
        self._old, self._young, self._size = self._young, {}, 0
        self._numbers_of = {}
        self._names.turn()
        self._label_names.turn()

    def start(self) -> Latest:
        """A request begins: what `convert` notes for `finish`."""
        return {}

    def convert(self, req: Parsed | ExportMetricsServiceRequest, out: ResultBuilder, latest: Latest) -> None:
        """Rows of `req` (one request, or one piece of one) into `out`; TargetInfo into `latest`.
        Parsed: it came as bytes (`parse_request`), refused with DecodeError, as their parse refuses
        them, when a gauge or sum point does not parse. A message (OTLP/JSON) is read from its bytes."""
        if isinstance(req, Parsed):
            try:
                self._convert(req.request, out, latest, True)
            except _Several:  # read from the whole parse, which keeps the last and checks all
                try:
                    whole = ExportMetricsServiceRequest.FromString(req.data)
                except ProtobufDecodeError as e:
                    raise DecodeError(f"{_MALFORMED}: {e}") from e
                self.convert(whole, out, latest)
            except _Malformed as m:
                try:
                    ExportMetricsServiceRequest.FromString(req.data)
                except ProtobufDecodeError as e:
                    raise DecodeError(f"{_MALFORMED}: {e}") from e
                raise DecodeError(str(m)) from m  # not reached: the parse of the request refuses them
        else:
            data = req.SerializeToString()
            try:
                self._convert(BytesRequest.FromString(data), out, latest, False)
            except (ProtobufDecodeError, _Malformed) as m:  # nested deeper than a parse takes (OTLP/JSON refuses those)
                try:
                    RawRequest.FromString(data)
                except ProtobufDecodeError as e:
                    raise DecodeError(f"{_MALFORMED}: {e}") from e
                raise DecodeError(f"{_MALFORMED}: {m}") from m  # not reached

    def _convert(self, req: BytesRequest, out: ResultBuilder, latest: Latest, strict: bool) -> None:
        if max(self._size, len(self._young), len(self._resources.young), len(self._names.young)) >= self._half:
            self.turn()
        # first what each metric holds (raises _Several before a row is written), then the rows. A
        # gauge or sum metric laid out as senders write it ([name] [description] [unit] gauge or sum, its
        # points as _number_points reads them) is read from its bytes, known by its bytes before its
        # data (its head: checked to parse the first time); any other is parsed, nested as deep as in
        # a request. A container is taken as a list (a slice): iterating it costs more than that.
        plan: list[tuple[Any, list[tuple[str | bytes, Any, str | None]]]] = []
        for rm in req.resource_metrics:
            metrics: list[tuple[str | bytes, Any, str | None]] = []
            for sm in rm.scope_metrics:
                for mb in sm.metrics[:]:
                    try:
                        if mb[0] == 0x0A and mb[1] < 0x80:  # the name, shorter than 128 bytes
                            j = 2 + mb[1]
                            tag = mb[j]
                            while tag in _HEAD_TAGS and mb[j + 1] < 0x80:
                                j += 2 + mb[j + 1]
                                tag = mb[j]
                            if tag in (_GAUGE_TAG, _SUM_TAG):
                                n = mb[j + 1]
                                k = j + 2
                                if n >= 0x80:
                                    hi = mb[j + 2]
                                    n = n & 0x7F | hi << 7 if hi < 0x80 else -1
                                    k = j + 3
                                end = len(mb)
                                if k + n == end:
                                    if mb[k] == _POINT_TAG:  # one point, then nothing (a sum: its fields)
                                        n = mb[k + 1]
                                        p = k + 2
                                        if n >= 0x80:
                                            hi = mb[k + 2]
                                            n = n & 0x7F | hi << 7 if hi < 0x80 else -1
                                            p = k + 3
                                        q = p + n
                                        if q == end if tag == _GAUGE_TAG else q <= end and mb[q:] in _SUM_TAILS:
                                            metrics.append((mb[:j], (mb[p:q],), None))
                                            continue
                                    points = _number_points(mb, k, tag == _SUM_TAG)
                                    if points is not None:
                                        metrics.append((mb[:j], points, None))
                                        continue
                    except IndexError:
                        pass
                    try:
                        m = _metric_at_depth(mb)
                    except ProtobufDecodeError as e:
                        raise _Malformed(f"{_MALFORMED}: {e}") from e
                    # gauge and sum are outside the oneof: a metric with more than one is read from the whole parse
                    if m.HasField("gauge"):
                        if m.HasField("sum") or m.WhichOneof("data") is not None:
                            raise _Several
                        metrics.append((m.name, m.gauge.data_points[:], None))
                    elif m.HasField("sum"):
                        if m.WhichOneof("data") is not None:
                            raise _Several
                        metrics.append((m.name, m.sum.data_points[:], None))
                    else:
                        kind = m.WhichOneof("data")
                        if kind is not None:
                            metrics.append((m.name, m, kind))
            plan.append((rm.resource, metrics))
        names = self._names
        young = self._young
        numbers_of = self._numbers_of
        tget = self._ts.cache.get
        tformat = self._ts.format
        xxh = xxh3_128_digest
        rows_of = out.rows
        last_dest: tuple[str, str] | None = None
        rows: list[str] = []
        for resource, metrics in plan:
            key, res = self._resource(resource)
            known = numbers_of.get(res)
            if known is None:
                known = numbers_of[res] = {}
            t_max = -1
            for mname, data, kind in metrics:
                if kind is not None:
                    assert isinstance(mname, str)
                    name = names.get(mname)
                    if name is None:
                        name = names.put(mname, prometheus_metric_name(mname))
                    if kind == "histogram":
                        t = self._histograms(data.histogram.data_points, name, res, out)
                    elif kind == "exponential_histogram":
                        t = self._exponentials(data.exponential_histogram.data_points, name, res, out)
                    else:
                        t = self._points(data.summary.data_points, name, res, out, self._summary)
                    if t > t_max:
                        t_max = t
                    continue
                # gauge and sum points: the hot path (see `_new_series`)
                number = known.get(mname)
                if number is None:
                    if isinstance(mname, bytes):  # a metric's bytes before its data: parsed the first time
                        try:
                            text = _RawMetric.FromString(mname).name
                        except ProtobufDecodeError as e:
                            raise _Malformed(f"{_MALFORMED}: {e}") from e
                    else:
                        text = mname
                    name = names.get(text)
                    if name is None:
                        name = names.put(text, prometheus_metric_name(text))
                    inner = young.get((res, name))
                    if inner is None:
                        inner = young[(res, name)] = {}
                    number = known[mname] = (name, inner)
                name, inner = number
                old: dict[Any, Entry] | None = None
                new = False
                for b in data:
                    entry: Entry | None = None
                    try:  # [start time] [time] [as_double | as_int] then its series: attributes, flags
                        i = 9 if b[0] == _START_TAG else 0
                        c = b[i]
                        if c == _TIME_TAG:
                            c = b[i + 9]
                            if c == _DOUBLE_TAG:
                                t, v = _U64_F64(b, i + 1)
                                value = _DOUBLE
                                i += 18
                            elif c == _INT_TAG:
                                t, v = _U64_I64(b, i + 1)
                                value = _INT
                                i += 18
                            else:
                                t = _U64(b, i + 1)[0]
                                value = _NO_VALUE
                                i += 9
                        else:
                            t = 0
                            if c == _DOUBLE_TAG:
                                v = _F64(b, i + 1)[0]
                                value = _DOUBLE
                                i += 9
                            elif c == _INT_TAG:
                                v = _I64(b, i + 1)[0]
                                value = _INT
                                i += 9
                            else:
                                value = _NO_VALUE
                        h = xxh(b[i:])
                        entry = inner.get(h)
                        if entry is None:
                            if old is None:
                                old = self._old.get((res, name)) or _NONE
                            entry = old.get(h)
                            if entry is not None:
                                inner[h] = entry
                                self._size += 1
                            elif not new:
                                new = True
                                self._new_series(data, inner, old, res, name, strict)
                                entry = inner.get(h)
                    except (IndexError, struct.error):  # shorter than its layout: parsed (`_point`)
                        pass
                    if entry is None:  # a layout not read here, or a series whose bytes are not only attributes
                        entry, t, value, v = self._point(b, inner, res, name, strict)
                    dest, mid, tail = entry
                    if dest is None:
                        if mid:
                            out.reject(mid)
                        continue
                    try:
                        stamp = tget(t) or tformat(t)
                    except ValueError as err:
                        out.reject(str(err))
                        continue
                    if value == _DOUBLE:
                        text = repr(v) if v - v == 0.0 else real(v)
                    elif value == _INT:
                        text = str(v)
                    else:
                        out.reject(_NO_VALUE_REASON)
                        continue
                    if dest is not last_dest:
                        rows = rows_of(dest)
                        last_dest = dest
                    rows.append(f"{stamp}{mid}{text}{tail}")
                    if t > t_max:
                        t_max = t
            if res.info is not None and t_max >= 0:
                seen = latest.get(key)
                if seen is None or t_max > seen[1]:
                    latest[key] = (res, t_max)

    def finish(self, latest: Latest, out: ResultBuilder) -> None:
        """The TargetInfo rows of the request."""
        for res, t in latest.values():
            self._target_info(res, t, out)

    # -- resources and labels -------------------------------------------------------------

    def _resource(self, resource: Any) -> tuple[bytes, _Resource]:
        key = resource.SerializeToString()
        res = self._resources.get(key)
        if res is None:
            res = self._resources.put(key, self._new_resource(resource.attributes))
        return key, res

    def _new_resource(self, attributes: Iterable[Any]) -> _Resource:
        attrs = {kv.key: to_label(kv.value) for kv in attributes if kv.key}
        overrides: dict[str, str] = {}
        job = attrs.get("service.name")
        if job is not None:
            namespace = attrs.get("service.namespace")
            overrides["job"] = f"{namespace}/{job}" if namespace else job
        if "service.instance.id" in attrs:
            overrides["instance"] = attrs["service.instance.id"]
        defaults: dict[str, str] = {}
        for key in self._promote:
            if key in attrs:
                defaults[self._label_name(key)] = attrs[key]
        for key, value in attrs.items():
            if self._label_name(key) == DATABASE_LABEL:
                defaults[DATABASE_LABEL] = value
        rest = {k: v for k, v in attrs.items() if k not in _RESOURCE_SERVICE_KEYS}
        info = None
        if rest:
            info = self._join_collisions(rest.items())
            info.update(overrides)
            info[NAME_LABEL] = "target_info"
        return _Resource(defaults, overrides, info)

    def _label_name(self, key: str) -> str:
        name = self._label_names.get(key)
        if name is None:
            name = self._label_names.put(key, prometheus_label_name(key))
        return name

    def _join_collisions(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Label dict of (attribute key, value) pairs; keys equal after sanitising are joined by ";"."""
        grouped: dict[str, dict[str, str]] = {}
        for key, value in pairs:
            grouped.setdefault(self._label_name(key), {})[key] = value
        return {
            name: next(iter(vals.values())) if len(vals) == 1 else ";".join(vals[k] for k in sorted(vals))
            for name, vals in grouped.items()
        }

    def _labels(
        self, attributes: Iterable[Any], res: _Resource, name: str, extra: tuple[str, str] | None
    ) -> Labels:
        labels = dict(res.defaults)
        labels.update(self._join_collisions((kv.key, to_label(kv.value)) for kv in attributes if kv.key))
        labels.update(res.overrides)
        labels[NAME_LABEL] = name
        if extra is not None:
            labels[extra[0]] = extra[1]
        return labels.items()

    def _target_info(self, res: _Resource, latest: int, out: ResultBuilder) -> None:
        if res.info_entry is None:
            assert res.info is not None
            res.info_entry = self._series.encode(res.info.items())
        dest, mid, tail = res.info_entry
        if dest is not None:
            stamp = self._ts.cache.get(latest) or self._ts.format(latest)
            out.rows(dest).append(f"{stamp}{mid}1{tail}")

    def _inner(self, res: _Resource, name: str) -> tuple[dict[Any, Entry], dict[Any, Entry]]:
        """The young and the old series dicts of a metric of a resource."""
        key = (res, name)
        inner = self._young.get(key)
        if inner is None:
            inner = self._young[key] = {}
        return inner, self._old.get(key) or _NONE

    # -- gauge and sum: the hot path (in `_convert`) --------------------------------------------

    # A gauge or sum point comes as its bytes (ingestor.otlp_raw's Gauge and Sum). Senders write a
    # NumberDataPoint's fields in field-number order: [start time] [time] [as_double | as_int], each a
    # tag and 8 bytes, then its series: attributes and flags (exemplars, field 5, come between them).
    # `_convert` reads the time and the value of such a point from its bytes and keys its series by the
    # rest (`xxh3_128_digest`: 16 bytes, made faster than the same hash as an int); a key is cached only
    # when that rest parsed (nested as deep as in the request, `_new_series`) and holds nothing but
    # attributes and flags, so that a hit stands for a point that parses and whose time and value are
    # those read. Any other point (fields in another order or repeated, exemplars, unknown fields,
    # shorter than its layout) is parsed (`_point`).

    def _new_series(self, points: Any, inner: dict[Any, Entry], old: dict[Any, Entry], res: _Resource, name: str,
                    strict: bool) -> None:
        """The entries of the series of `points` (their bytes) in neither generation, into `inner`:
        their bytes from the attributes on (their keys) parsed at once as NumberDataPoints, where a
        request's parse parses them; kept only when they hold nothing but attributes and flags. When
        that parse fails: raises _Malformed (`strict`), or puts none (a message's points: each is then
        parsed alone, `_point`). A point not laid out as `_convert` reads it is left to `_point`."""
        tails: dict[bytes, bytes] = {}
        for b in points:
            try:
                i = 9 if b[0] == _START_TAG else 0
                if b[i] == _TIME_TAG:
                    i += 9
                if b[i] in (_DOUBLE_TAG, _INT_TAG):
                    i += 9
            except IndexError:
                continue
            if i > len(b):
                continue
            tail = b[i:]
            key = xxh3_128_digest(tail)
            if key not in inner and key not in old:
                tails[key] = tail
        if not tails:
            return
        try:
            req = ExportMetricsServiceRequest.FromString(_request_of(tails.values()))
        except ProtobufDecodeError as e:
            if strict:
                raise _Malformed(f"{_MALFORMED}: {e}") from e
            return
        parsed = req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points
        added = 0
        for (key, tail), dp in zip(tails.items(), parsed, strict=True):
            if not _only_series(tail):
                continue
            if dp.flags & _NO_RECORDED_VALUE:
                inner[key] = SKIP
            else:
                inner[key] = self._series.encode(self._labels(dp.attributes, res, name, None))
            added += 1
        self._size += added

    def _point(self, b: bytes, inner: dict[Any, Entry], res: _Resource, name: str,
               strict: bool) -> tuple[Entry, int, int, Any]:
        """A gauge or sum point's bytes parsed (nested as deep as in the request): its entry, time,
        kind of value and value. Raises _Malformed when they do not parse and `strict`; a message's
        point that does not parse there is read as ingestor.otlp_raw's, its attributes as
        `_point_attributes` reads them. Its entry is cached under its bytes from the attributes on as
        that parse writes them (a tuple: apart from the keys of `_new_series`) when they parsed."""
        dp: Any
        try:
            req = ExportMetricsServiceRequest.FromString(_request_of([b]))
        except ProtobufDecodeError as e:
            if strict:
                raise _Malformed(f"{_MALFORMED}: {e}") from e
            dp = metrics_raw_pb2.NumberDataPoint.FromString(b)
            attrs, parsed = _point_attributes(dp.attributes, strict)
        else:
            dp = req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
            attrs, parsed = dp.attributes, True
        key = (_series_bytes(dp.SerializeToString()),)
        entry = inner.get(key)
        if entry is None:
            entry = SKIP if dp.flags & _NO_RECORDED_VALUE else self._series.encode(self._labels(attrs, res, name, None))
            if parsed:
                inner[key] = entry
                self._size += 1
        kind = dp.WhichOneof("value")
        if kind == "as_double":
            return entry, dp.time_unix_nano, _DOUBLE, dp.as_double
        if kind == "as_int":
            return entry, dp.time_unix_nano, _INT, dp.as_int
        return entry, dp.time_unix_nano, _NO_VALUE, None

    # -- histograms and summaries: several series per data point ----------------------------

    def _histograms(self, points: Any, name: str, res: _Resource, out: ResultBuilder) -> int:
        """Rows of HistogramDataPoints; returns the latest timestamp of a point with rows (-1 if none).

        The series of a point (`_count`, `_sum`, a `_bucket` per bound and `+Inf`) are cached
        together (`_Group`) in the metric's series dict, keyed by the point's attribute bytes,
        bounds bytes and whether it has a sum (`_histogram_key`): a known point costs one lookup,
        then its rows are formatted table by table.
        """
        # the metric's series dict; its points' keys (3-tuples) are apart from its series' (ints, pairs)
        inner, old = cast(tuple[dict[Any, _Group], dict[Any, _Group]], self._inner(res, name))
        tget = self._ts.cache.get
        tformat = self._ts.format
        latest = -1
        for dp in points:
            if dp.flags & _NO_RECORDED_VALUE:
                continue
            t = dp.time_unix_nano
            counts = dp.bucket_counts
            bounds = dp.explicit_bounds
            try:
                stamp = tget(t) or tformat(t)
            except ValueError as err:
                out.reject(str(err))
                continue
            n = len(bounds)
            if counts and len(counts) != n + 1:
                out.reject(f"histogram bucket counts do not match its bounds: {len(counts)} counts, {n} bounds")
                continue
            has_sum = dp.HasField("sum")
            key: tuple[Any, ...] | None = _histogram_key(dp.SerializeToString(), has_sum)
            if key is None:
                key = (tuple([kv.SerializeToString() for kv in dp.attributes]), tuple(bounds), has_sum)
            group = inner.get(key)
            if group is None:
                group = old.get(key) or self._histogram_group(dp.attributes, res, name, has_sum, bounds)
                inner[key] = group
                self._size += n + 2 + has_sum
            refused, runs = group
            if refused:  # its _count series is refused, so is the point (a dropped _count is not: the rest is written)
                out.reject(refused)
                continue
            if not runs:
                continue
            count = str(dp.count)
            texts = [count, real(dp.sum)] if has_sum else [count]
            if counts:
                texts += map(str, accumulate(counts[:n]))
            else:
                texts += ["0"] * n
            texts.append(count)
            for dest, lo, hi, series in runs:
                values = texts[lo:hi]
                out.rows(dest).extend([f"{stamp}{mid}{v}{tail}" for (mid, tail), v in zip(series, values, strict=True)])
            if t > latest:
                latest = t
        return latest

    def _histogram_group(
        self, attrs: Sequence[Any], res: _Resource, name: str, has_sum: bool, bounds: Sequence[float]
    ) -> _Group:
        """The series of a histogram point, in row order: _count, [_sum,] a _bucket per le."""
        return self._group(attrs, res, name, has_sum, [label_float(bound) for bound in bounds])

    def _group(self, attrs: Sequence[Any], res: _Resource, name: str, has_sum: bool, les: list[str]) -> _Group:
        """The series of a (classic or exponential) histogram point with buckets `les` (+Inf added),
        in row order: _count, [_sum,] a _bucket per le."""
        bucket = name + "_bucket"
        series: list[tuple[str, tuple[str, str] | None]] = [(name + "_count", None)]
        if has_sum:
            series.append((name + "_sum", None))
        series += [(bucket, ("le", le)) for le in les]
        series.append((bucket, ("le", "+Inf")))
        entries = [self._series.encode(self._labels(attrs, res, n, extra)) for n, extra in series]
        dest, reason, _ = entries[0]
        if dest is None and reason:
            return reason, ()
        runs: list[tuple[tuple[str, str], int, int, tuple[tuple[str, str], ...]]] = []
        lo = 0
        for i in range(1, len(entries) + 1):  # runs of one destination; dropped series (SKIP) cut them
            if i == len(entries) or entries[i][0] is not entries[lo][0]:
                dest = entries[lo][0]
                if dest is not None:
                    runs.append((dest, lo, i, tuple([(mid, tail) for _, mid, tail in entries[lo:i]])))
                lo = i
        return "", tuple(runs)

    def _exponentials(self, points: Any, name: str, res: _Resource, out: ResultBuilder) -> int:
        """Rows of ExponentialHistogramDataPoints, their buckets as classic `le` buckets (exphist.py);
        returns the latest timestamp of a point with rows (-1 if none).

        As `_histograms`: the series of a point are cached together, keyed by its attribute bytes
        (field 1: first on the wire) and its layout (scale, offsets, bucket counts, zero bucket, sum),
        which gives its bounds; with them, which of its cumulative counts have a finite bound.
        """
        inner, old = cast(tuple[dict[Any, _ExpGroup], dict[Any, _ExpGroup]], self._inner(res, name))
        tget = self._ts.cache.get
        tformat = self._ts.format
        latest = -1
        for dp in points:
            if dp.flags & _NO_RECORDED_VALUE:
                continue
            t = dp.time_unix_nano
            try:
                stamp = tget(t) or tformat(t)
            except ValueError as err:
                out.reject(str(err))
                continue
            has_sum = dp.HasField("sum")
            positive = dp.positive
            negative = dp.negative
            pcounts = positive.bucket_counts
            ncounts = negative.bucket_counts
            zero = dp.zero_count
            b = dp.SerializeToString()
            i = 0
            n = len(b)
            while i < n and b[i] == _E_ATTRIBUTES_TAG:
                i = skip_length_delimited(b, i)
            key = (b[:i], (dp.scale, positive.offset, len(pcounts), negative.offset, len(ncounts),
                           repr(dp.zero_threshold) if zero else None, has_sum))
            group = inner.get(key)
            if group is None:
                group = old.get(key) or self._exponential_group(dp, res, name, has_sum)
                inner[key] = group
                self._size += len(group[2]) + 2 + has_sum
            refused, runs, kept = group
            if refused:  # its _count series is refused, so is the point (a dropped _count is not: the rest is written)
                out.reject(refused)
                continue
            if not runs:
                continue
            counts = list(ncounts)
            counts.reverse()
            if zero:
                counts.append(zero)
            counts += pcounts
            totals = list(accumulate(counts))
            count = str(dp.count)
            texts = [count, real(dp.sum)] if has_sum else [count]
            texts += [str(totals[k]) for k in kept]
            texts.append(count)
            for dest, lo, hi, series in runs:
                values = texts[lo:hi]
                out.rows(dest).extend([f"{stamp}{mid}{v}{tail}" for (mid, tail), v in zip(series, values, strict=True)])
            if t > latest:
                latest = t
        return latest

    def _exponential_group(self, dp: Any, res: _Resource, name: str, has_sum: bool) -> _ExpGroup:
        """The series of an exponential histogram point, and the indexes (in its counts from the most
        negative bucket to the most positive one) of those whose bound is finite: a bound that
        overflows a double is left out, and its count goes to the next bucket's (exphist.py)."""
        positive, negative = dp.positive, dp.negative
        # with a count of 1 in each bucket, the cumulative count of a bucket is its index + 1
        buckets = cumulative_buckets(dp.scale, 1 if dp.zero_count else 0, dp.zero_threshold, positive.offset,
                                     [1] * len(positive.bucket_counts), negative.offset,
                                     [1] * len(negative.bucket_counts))
        refused, runs = self._group(dp.attributes, res, name, has_sum, [label_float(bound) for bound, _ in buckets])
        return refused, runs, tuple([total - 1 for _, total in buckets])

    def _points(self, points: Any, name: str, res: _Resource, out: ResultBuilder, series: Any) -> int:
        latest = -1
        for dp in points:
            if dp.flags & _NO_RECORDED_VALUE:
                continue
            t = dp.time_unix_nano
            try:
                stamp = self._ts.cache.get(t) or self._ts.format(t)
                rows: list[_Series] = series(dp, name)
            except ValueError as err:
                out.reject(str(err))
                continue
            if self._emit(out, res, dp.attributes, stamp, rows) and t > latest:
                latest = t
        return latest

    def _emit(
        self, out: ResultBuilder, res: _Resource, attrs: Sequence[Any], stamp: str, rows: list[_Series]
    ) -> bool:
        """Append the rows of one data point; False if none was written (with one rejection when its
        series are refused, none when they are dropped)."""
        akey = tuple([kv.SerializeToString() for kv in attrs])
        entries: list[Entry] = []
        last = ""
        inner: dict[Any, Entry] = _NONE
        old: dict[Any, Entry] = _NONE
        for name, extra, _ in rows:
            if name is not last:  # a point's rows come in runs of one series name
                inner, old = self._inner(res, name)
                last = name
            key = (akey, extra)
            entry = inner.get(key)
            if entry is None:
                entry = old.get(key) or self._series.encode(self._labels(attrs, res, name, extra))
                inner[key] = entry
                self._size += 1
            entries.append(entry)
        dest, reason, _ = entries[0]
        if dest is None and reason:  # refused (an empty reason: that series is dropped, --drop-labels)
            out.reject(reason)
            return False
        emitted = False
        last_dest: tuple[str, str] | None = None
        out_rows: list[str] = []
        for (dest, mid, tail), (_, _, text) in zip(entries, rows, strict=True):
            if dest is not None:
                if dest is not last_dest:
                    out_rows = out.rows(dest)
                    last_dest = dest
                out_rows.append(f"{stamp}{mid}{text}{tail}")
                emitted = True
        return emitted

    @staticmethod
    def _summary(dp: Any, name: str) -> list[_Series]:
        rows: list[_Series] = [(name + "_count", None, str(dp.count)), (name + "_sum", None, real(dp.sum))]
        rows.extend((name, ("quantile", label_float(q.quantile)), real(q.value)) for q in dp.quantile_values)
        return rows
