"""Request bodies of the HTTP port to protobuf messages: pure functions, no I/O.

Every failure is a typed error from node.errors: DecodeError (400: the sender must not retry),
RequestTooLargeError (413), UnsupportedMediaError (415). Decompression is bounded before it
happens (snappy's declared length) or while it happens (gzip), so a compression bomb is refused
without the memory it asks for.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, TypeVar, cast

import cramjam
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from node.errors import DecodeError, RequestTooLargeError, UnsupportedMediaError
from node.gen.prometheus import remote_raw_pb2
from node.rows.logs import parse_request as parse_logs_request
from node.rows.otlpmetrics import parse_request

M = TypeVar("M", bound=Message)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RW2_PROTO = "io.prometheus.write.v2.request"


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """`application/x-protobuf; proto=X` -> ("application/x-protobuf", {"proto": "X"})."""
    if not content_type:
        return "", {}
    main, *params = content_type.split(";")
    out = {}
    for p in params:
        k, _, v = p.strip().partition("=")
        out[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), out


SNAPPY_MAX_RATIO = 22
"""Most bytes a snappy block can inflate to per byte of block: its densest element, a copy of 64
bytes, takes 3 (21.3:1). A preamble that declares more than this is a lie, refused unallocated."""

INFLATE_IN, INFLATE_OUT = 64 << 10, 256 << 10
"""Gzip is fed to zlib, and taken from it, in pieces this large: neither the input left over between
members nor one call's output is ever more."""
MAX_GZIP_MEMBERS = 4096
"""Members in one gzip body (each costs a fresh inflater: ~15 us; 64 MiB of empty members would be
3 million). Writers make one (Go, the OTel collector) or a few (concatenated files)."""


def snappy_declared_length(prefix: bytes | memoryview) -> int | None:
    """The decompressed length a snappy block's preamble (a uvarint) declares; None while `prefix`
    is too short to hold all of it."""
    n = shift = 0
    for i, b in enumerate(bytes(prefix[:10])):
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
        if i == 9:
            break
    if len(prefix) < 10:
        return None
    raise DecodeError("snappy: bad length header")


def check_snappy_length(declared: int, block_bytes: int | None, max_bytes: int) -> None:
    """Refuse a declared length over `max_bytes` (413) or over what `block_bytes` can hold (400),
    before anything is allocated for it; `block_bytes` None: not known yet."""
    if declared > max_bytes:
        raise RequestTooLargeError(f"snappy body declares {declared} bytes, over the {max_bytes}-byte limit")
    if block_bytes is not None and declared > SNAPPY_MAX_RATIO * block_bytes:
        raise DecodeError(f"snappy body declares {declared} bytes, more than its {block_bytes} bytes can hold")


def snappy_block(body: bytes, max_bytes: int) -> bytes:
    """Decompress a raw snappy block, refusing a declared length over `max_bytes` first."""
    if not body:
        raise DecodeError("empty body")
    declared = snappy_declared_length(body)
    if declared is None:
        raise DecodeError("snappy: bad length header")
    check_snappy_length(declared, len(body), max_bytes)
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # cramjam's DecompressionError
        raise DecodeError(f"body is not a snappy block: {e}") from e


def _inflate(body: bytes, max_bytes: int, keep: bool) -> tuple[bytearray, int]:
    """Gzip (or zlib) members one after the other, at most `max_bytes` of output (RFC 1952, as Go's
    gzip reader and `pigz` write them), at most MAX_GZIP_MEMBERS; bytes after the last member that
    are not one are an error. Input goes in by pieces, so that many members cost linear time (zlib
    hands back a member's leftover input as a copy); output is kept only if `keep`."""
    out = bytearray()
    total = 0
    view = memoryview(body)
    pos = 0
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        while not d.eof:
            data: bytes | memoryview = d.unconsumed_tail
            if not data:
                if pos >= len(body):
                    raise DecodeError("gzip body is truncated")
                data = view[pos:pos + INFLATE_IN]
                pos += len(data)
            try:
                chunk = d.decompress(data, INFLATE_OUT)
            except zlib.error as e:
                raise DecodeError(f"body is not valid gzip: {e}") from e
            total += len(chunk)
            if total > max_bytes:
                raise RequestTooLargeError(f"gzip body inflates past the {max_bytes}-byte limit")
            if keep:
                out += chunk
        pos -= len(d.unused_data)  # the next member starts there
        if pos >= len(body):
            return out, total
    raise DecodeError(f"gzip body of more than {MAX_GZIP_MEMBERS} members")


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """Gzip (or zlib) decompression of at most `max_bytes` output, every member of the body."""
    return bytes(_inflate(body, max_bytes, keep=True)[0])


def gunzip_size(body: bytes, max_bytes: int) -> int:
    """What `gunzip` would return, counted without keeping it (memory: one piece of output), with
    the same errors: a gzip bomb is refused without the memory it asks for."""
    return _inflate(body, max_bytes, keep=False)[1]


def decode_remote_write(body: bytes, content_encoding: str | None, content_type: str | None,
                        max_bytes: int) -> remote_raw_pb2.RawWriteRequest:
    """Prometheus remote write 1.0: a snappy block of a `prometheus.WriteRequest`, read as a
    `RawWriteRequest` (proto/prometheus/remote_raw.proto: the same wire, each series left as its
    bytes), which the converter reads fastest. A body that is not protobuf is refused here; a series
    in it that does not parse, by the converter (DecodeError too, which the port answers 400)."""
    mt, params = media_type(content_type)
    if mt not in ("", PROTOBUF):
        raise UnsupportedMediaError(f"remote write needs {PROTOBUF}, not {mt!r}")
    proto = params.get("proto", "").lower()
    if proto == RW2_PROTO:
        raise UnsupportedMediaError("remote write 2.0 is not supported; send protocol 1.0 "
                                    "(prometheus.WriteRequest)")
    if proto not in ("", "prometheus.writerequest"):
        raise UnsupportedMediaError(f"unknown remote write message {proto!r}")
    enc = (content_encoding or "snappy").strip().lower()
    if enc != "snappy":
        raise UnsupportedMediaError(f"remote write needs Content-Encoding snappy, not {enc!r}")
    raw = snappy_block(body, max_bytes)
    try:
        return remote_raw_pb2.RawWriteRequest.FromString(raw)
    except ProtobufDecodeError as e:
        raise DecodeError(f"malformed prometheus.WriteRequest: {e}") from e


_HEX_ID_FIELDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _HEX_ID_FIELDS and isinstance(v, str):
                try:
                    out[k] = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError as e:
                    raise DecodeError(f"{k} {v[:40]!r} is not hex") from e
            else:
                out[k] = _hex_ids_to_base64(v)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(x) for x in node]
    return node


def decode_otlp(body: bytes, content_type: str | None, content_encoding: str | None, message_cls: type[M],
                max_bytes: int) -> M:
    """OTLP/HTTP: protobuf or JSON, identity or gzip. An ExportMetricsServiceRequest or an
    ExportLogsServiceRequest in protobuf is read as gRPC's are, with its bytes (the `parse_request`
    and `Parsed` of node/rows/otlpmetrics.py and node/rows/logs.py, not the message: their converters
    read it fastest, and do not parse it twice), refused as the parse of the message is."""
    enc = (content_encoding or "identity").strip().lower()
    if enc == "gzip":
        body = gunzip(body, max_bytes)
    elif enc != "identity":
        raise UnsupportedMediaError(f"unsupported Content-Encoding {enc!r}: use gzip or none")
    mt, _ = media_type(content_type)
    name = message_cls.DESCRIPTOR.full_name
    if mt == PROTOBUF:
        try:
            if message_cls is ExportMetricsServiceRequest:
                # read as ingestor.otlp_raw's: a gauge or sum point's attributes left as their bytes,
                # which the converter parses for a new series only, refusing them as this parse would
                return cast(M, parse_request(body))
            if message_cls is ExportLogsServiceRequest:  # a record's attributes left as their bytes, as above
                return cast(M, parse_logs_request(body))
            return message_cls.FromString(body)
        except ProtobufDecodeError as e:
            raise DecodeError(f"malformed {name}: {e}") from e
    if mt == JSON:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
            raise DecodeError(f"body is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise DecodeError(f"{name} in JSON must be an object")
        try:
            return json_format.ParseDict(_hex_ids_to_base64(doc), message_cls(), ignore_unknown_fields=True)
        except (json_format.ParseError, binascii.Error, ValueError, TypeError, RecursionError) as e:
            raise DecodeError(f"malformed {name} JSON: {e}") from e
    raise UnsupportedMediaError(f"unsupported Content-Type {mt or '(none)'!r}: use {PROTOBUF} or {JSON}")
