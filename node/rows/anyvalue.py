"""OTLP `AnyValue`s and attribute lists as JSON (dynamic columns) and as label strings (metrics).

JSON mapping: string -> string, int -> number, double -> number (NaN and infinities, which JSON
cannot hold, -> the strings "NaN", "Infinity", "-Infinity"), bool -> true/false, bytes -> base64
string, array -> array, kvlist -> object (a repeated key: the last wins), unset -> null.
"""

from __future__ import annotations

import base64
import json
import json.encoder
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from node.rows.csvtext import label_float, real

JsonValue = Any
"""What `json` can encode: str, int, float, bool, None, list, dict."""


def _make_encoder() -> Callable[[JsonValue], str]:
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    # JSONEncoder.encode builds this C encoder anew on every call; build it once. No circular
    # reference check (markers=None): the values are trees made from protobuf messages.
    iterencode = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    return lambda value: "".join(iterencode(value, 0))


encode_json = _make_encoder()
"""Compact JSON text, UTF-8 kept as is (allow_nan=False: a non-finite float here is a bug)."""


def to_json(v: AnyValue) -> JsonValue:
    """An `AnyValue` as a JSON-encodable Python value."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        d = v.double_value
        return d if d - d == 0.0 else real(d)
    if kind == "bool_value":
        return v.bool_value
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if kind == "array_value":
        return [to_json(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes_json(v.kvlist_value.values)
    return None


def attributes_json(kvs: Iterable[KeyValue]) -> dict[str, JsonValue]:
    """A list of `KeyValue`s as a dict (a repeated key: the last wins)."""
    out: dict[str, JsonValue] = {}
    for kv in kvs:
        v = kv.value
        if v.WhichOneof("value") == "string_value":
            out[kv.key] = v.string_value
        else:
            out[kv.key] = to_json(v)
    return out


def to_label(v: AnyValue) -> str:
    """An `AnyValue` as a Prometheus label value (pdata's `AsString`): strings as they are, ints in
    decimal, doubles like Go's 'f' -1 format, bools `true`/`false`, bytes base64, arrays and
    kvlists as compact JSON, unset as ""."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return str(v.string_value)
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return label_float(v.double_value)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind is None:
        return ""
    value = to_json(v)
    return value if isinstance(value, str) else encode_json(value)
