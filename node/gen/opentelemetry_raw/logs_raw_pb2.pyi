from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SeverityNumber(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_NUMBER_UNSPECIFIED: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_TRACE: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_TRACE2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_TRACE3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_TRACE4: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_DEBUG: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_DEBUG2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_DEBUG3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_DEBUG4: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_INFO: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_INFO2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_INFO3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_INFO4: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_WARN: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_WARN2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_WARN3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_WARN4: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_ERROR: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_ERROR2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_ERROR3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_ERROR4: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_FATAL: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_FATAL2: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_FATAL3: _ClassVar[SeverityNumber]
    SEVERITY_NUMBER_FATAL4: _ClassVar[SeverityNumber]

class LogRecordFlags(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_RECORD_FLAGS_DO_NOT_USE: _ClassVar[LogRecordFlags]
    LOG_RECORD_FLAGS_TRACE_FLAGS_MASK: _ClassVar[LogRecordFlags]
SEVERITY_NUMBER_UNSPECIFIED: SeverityNumber
SEVERITY_NUMBER_TRACE: SeverityNumber
SEVERITY_NUMBER_TRACE2: SeverityNumber
SEVERITY_NUMBER_TRACE3: SeverityNumber
SEVERITY_NUMBER_TRACE4: SeverityNumber
SEVERITY_NUMBER_DEBUG: SeverityNumber
SEVERITY_NUMBER_DEBUG2: SeverityNumber
SEVERITY_NUMBER_DEBUG3: SeverityNumber
SEVERITY_NUMBER_DEBUG4: SeverityNumber
SEVERITY_NUMBER_INFO: SeverityNumber
SEVERITY_NUMBER_INFO2: SeverityNumber
SEVERITY_NUMBER_INFO3: SeverityNumber
SEVERITY_NUMBER_INFO4: SeverityNumber
SEVERITY_NUMBER_WARN: SeverityNumber
SEVERITY_NUMBER_WARN2: SeverityNumber
SEVERITY_NUMBER_WARN3: SeverityNumber
SEVERITY_NUMBER_WARN4: SeverityNumber
SEVERITY_NUMBER_ERROR: SeverityNumber
SEVERITY_NUMBER_ERROR2: SeverityNumber
SEVERITY_NUMBER_ERROR3: SeverityNumber
SEVERITY_NUMBER_ERROR4: SeverityNumber
SEVERITY_NUMBER_FATAL: SeverityNumber
SEVERITY_NUMBER_FATAL2: SeverityNumber
SEVERITY_NUMBER_FATAL3: SeverityNumber
SEVERITY_NUMBER_FATAL4: SeverityNumber
LOG_RECORD_FLAGS_DO_NOT_USE: LogRecordFlags
LOG_RECORD_FLAGS_TRACE_FLAGS_MASK: LogRecordFlags

class AnyValue(_message.Message):
    __slots__ = ("string_value", "bool_value", "int_value", "double_value", "array_value", "kvlist_value", "bytes_value", "string_value_strindex")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    ARRAY_VALUE_FIELD_NUMBER: _ClassVar[int]
    KVLIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_STRINDEX_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    bool_value: bool
    int_value: int
    double_value: float
    array_value: ArrayValue
    kvlist_value: KeyValueList
    bytes_value: bytes
    string_value_strindex: int
    def __init__(self, string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., array_value: _Optional[_Union[ArrayValue, _Mapping]] = ..., kvlist_value: _Optional[_Union[KeyValueList, _Mapping]] = ..., bytes_value: _Optional[bytes] = ..., string_value_strindex: _Optional[int] = ...) -> None: ...

class ArrayValue(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[AnyValue]
    def __init__(self, values: _Optional[_Iterable[_Union[AnyValue, _Mapping]]] = ...) -> None: ...

class KeyValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, values: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "key_strindex")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KEY_STRINDEX_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: AnyValue
    key_strindex: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AnyValue, _Mapping]] = ..., key_strindex: _Optional[int] = ...) -> None: ...

class InstrumentationScope(_message.Message):
    __slots__ = ("name", "version", "attributes", "dropped_attributes_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ATTRIBUTES_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    attributes: _containers.RepeatedCompositeFieldContainer[KeyValue]
    dropped_attributes_count: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., dropped_attributes_count: _Optional[int] = ...) -> None: ...

class EntityRef(_message.Message):
    __slots__ = ("schema_url", "type", "id_keys", "description_keys")
    SCHEMA_URL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_KEYS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_KEYS_FIELD_NUMBER: _ClassVar[int]
    schema_url: str
    type: str
    id_keys: _containers.RepeatedScalarFieldContainer[str]
    description_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, schema_url: _Optional[str] = ..., type: _Optional[str] = ..., id_keys: _Optional[_Iterable[str]] = ..., description_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("attributes", "dropped_attributes_count", "entity_refs")
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ATTRIBUTES_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_REFS_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[KeyValue]
    dropped_attributes_count: int
    entity_refs: _containers.RepeatedCompositeFieldContainer[EntityRef]
    def __init__(self, attributes: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., dropped_attributes_count: _Optional[int] = ..., entity_refs: _Optional[_Iterable[_Union[EntityRef, _Mapping]]] = ...) -> None: ...

class ResourceLogs(_message.Message):
    __slots__ = ("resource", "scope_logs", "schema_url")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_LOGS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_URL_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    scope_logs: _containers.RepeatedCompositeFieldContainer[ScopeLogs]
    schema_url: str
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., scope_logs: _Optional[_Iterable[_Union[ScopeLogs, _Mapping]]] = ..., schema_url: _Optional[str] = ...) -> None: ...

class ScopeLogs(_message.Message):
    __slots__ = ("scope", "log_records", "schema_url")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LOG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_URL_FIELD_NUMBER: _ClassVar[int]
    scope: InstrumentationScope
    log_records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    schema_url: str
    def __init__(self, scope: _Optional[_Union[InstrumentationScope, _Mapping]] = ..., log_records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., schema_url: _Optional[str] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("time_unix_nano", "observed_time_unix_nano", "severity_number", "severity_text", "body", "attributes", "dropped_attributes_count", "flags", "trace_id", "span_id", "event_name")
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_TEXT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ATTRIBUTES_COUNT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: SeverityNumber
    severity_text: str
    body: AnyValue
    attributes: _containers.RepeatedScalarFieldContainer[bytes]
    dropped_attributes_count: int
    flags: int
    trace_id: bytes
    span_id: bytes
    event_name: str
    def __init__(self, time_unix_nano: _Optional[int] = ..., observed_time_unix_nano: _Optional[int] = ..., severity_number: _Optional[_Union[SeverityNumber, str]] = ..., severity_text: _Optional[str] = ..., body: _Optional[_Union[AnyValue, _Mapping]] = ..., attributes: _Optional[_Iterable[bytes]] = ..., dropped_attributes_count: _Optional[int] = ..., flags: _Optional[int] = ..., trace_id: _Optional[bytes] = ..., span_id: _Optional[bytes] = ..., event_name: _Optional[str] = ...) -> None: ...

class ExportLogsServiceRequest(_message.Message):
    __slots__ = ("resource_logs",)
    RESOURCE_LOGS_FIELD_NUMBER: _ClassVar[int]
    resource_logs: _containers.RepeatedCompositeFieldContainer[ResourceLogs]
    def __init__(self, resource_logs: _Optional[_Iterable[_Union[ResourceLogs, _Mapping]]] = ...) -> None: ...
