from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableStatus(_message.Message):
    __slots__ = ("database", "table", "closed_segments", "closed_bytes", "active_bytes", "owner")
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    database: str
    table: str
    closed_segments: int
    closed_bytes: int
    active_bytes: int
    owner: str
    def __init__(self, database: _Optional[str] = ..., table: _Optional[str] = ..., closed_segments: _Optional[int] = ..., closed_bytes: _Optional[int] = ..., active_bytes: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_disk_usage", "max_segment_count", "max_segment_size", "max_segment_age_seconds")
    MAX_DISK_USAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_disk_usage: int
    max_segment_count: int
    max_segment_size: int
    max_segment_age_seconds: float
    def __init__(self, max_disk_usage: _Optional[int] = ..., max_segment_count: _Optional[int] = ..., max_segment_size: _Optional[int] = ..., max_segment_age_seconds: _Optional[float] = ...) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("name", "address", "healthy", "self", "unhealthy_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    healthy: bool
    self: bool
    unhealthy_reason: str
    def __init__(self_, name: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., self: _Optional[bool] = ..., unhealthy_reason: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_name", "ready", "readiness_reason", "tables", "disk_usage_bytes", "segment_count", "limits", "peers", "owned_prefixes", "transfer_queue", "version")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    READINESS_REASON_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    DISK_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    OWNED_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_QUEUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    ready: bool
    readiness_reason: str
    tables: _containers.RepeatedCompositeFieldContainer[TableStatus]
    disk_usage_bytes: int
    segment_count: int
    limits: Limits
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    owned_prefixes: _containers.RepeatedScalarFieldContainer[str]
    transfer_queue: int
    version: str
    def __init__(self, node_name: _Optional[str] = ..., ready: _Optional[bool] = ..., readiness_reason: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[TableStatus, _Mapping]]] = ..., disk_usage_bytes: _Optional[int] = ..., segment_count: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., owned_prefixes: _Optional[_Iterable[str]] = ..., transfer_queue: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
