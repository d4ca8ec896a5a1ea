from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentMetadata(_message.Message):
    __slots__ = ("name", "size", "crc32", "sender")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    crc32: int
    sender: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., crc32: _Optional[int] = ..., sender: _Optional[str] = ...) -> None: ...

class TransferSegmentRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: SegmentMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[SegmentMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class TransferSegmentResponse(_message.Message):
    __slots__ = ("blocks", "bytes")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    def __init__(self, blocks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
