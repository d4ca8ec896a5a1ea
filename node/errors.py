"""The project's exceptions, and the one place where they become gRPC and HTTP statuses.

    IngestorError
    ├── InvalidInputError            the caller sent something we refuse (never retried)
    │   ├── InvalidNameError         a database/table/segment name that fails validation
    │   ├── DecodeError              a body that does not decode (protobuf, snappy, JSON, gzip)
    │   ├── RequestTooLargeError     a body over --max-request-bytes
    │   ├── UnsupportedMediaError    an unknown content type or encoding
    │   ├── StalledError             a body or transfer too slow (--stall-timeout, --min-request-rate)
    │   └── ClientGoneError          the client went away before its body was read (nobody to answer)
    ├── OverLimitsError              disk or segment limits reached: backpressure, retry later
    │   └── OverMemoryError          the memory budget (--max-memory) is taken: retry later
    ├── UnavailableError             the node is starting or draining: retry elsewhere/later
    │   └── VanishedSegmentError     a segment being written was deleted outside the node: retry
    ├── CorruptionError              a segment is damaged at (path, offset), with a reason
    ├── UnauthenticatedError         a caller that is not a peer
    ├── AlreadyExistsError           a transferred segment that was accepted before
    ├── BindError                    a port the node was told to listen on cannot be bound (at start)
    └── SinkError                    a sink refused or failed a batch
        └── PermanentSinkError       it will never take this batch (bad schema): quarantine it
            └── SegmentError         one segment of it can never be taken: quarantine that one alone
                └── CorruptSegmentError  it does not read (a CRC, a block that does not decode)

Foreign exceptions (OSError from a full disk, protobuf's DecodeError, ...) are translated into
these at the boundary where they happen, never further up.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from errno import EACCES, EADDRNOTAVAIL, EAFNOSUPPORT
from pathlib import Path

import grpc


class IngestorError(Exception):
    """Base of every error the node raises on purpose."""


class InvalidInputError(IngestorError):
    """The caller sent something that will never be accepted; it must not retry it."""


class InvalidNameError(InvalidInputError):
    """A name from outside (database, table, segment file) fails validation."""


class DecodeError(InvalidInputError):
    """A request body that does not decode."""


class RequestTooLargeError(InvalidInputError):
    """A request body over the configured maximum."""


class UnsupportedMediaError(InvalidInputError):
    """An unknown content type or content encoding."""


class StalledError(InvalidInputError):
    """A request body or transfer that got no byte for --stall-timeout, or averaged under
    --min-request-rate: cut, its reservation released."""


class ClientGoneError(InvalidInputError):
    """The client closed the connection before its body was read: nothing to answer, not the
    node's fault (counted, logged rate-limited, never a 500)."""


class OverLimitsError(IngestorError):
    """Disk usage or segment count over the configured limit; the write was not done."""

    def __init__(self, message: str, retry_after_seconds: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def disk_full(e: OSError, what: str) -> OSError | OverLimitsError:
    """`e` as the over-limits error of a full disk ("disk full <what>: <strerror>") when it is one
    (ENOSPC, EDQUOT: the write is refused as a limit is, RESOURCE_EXHAUSTED / 429), else `e`."""
    if e.errno in (28, 122):  # ENOSPC, EDQUOT
        return OverLimitsError(f"disk full {what}: {e.strerror}")
    return e


class OverMemoryError(OverLimitsError):
    """The node's memory budget for requests in flight is taken (node/budget.py); nothing was
    read or written for this request. Unlike the disk limits, it says nothing about readiness:
    it ends as the requests in flight end."""


class UnavailableError(IngestorError):
    """The node is not ready (starting) or is draining."""

    def __init__(self, message: str, retry_after_seconds: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class VanishedSegmentError(UnavailableError):
    """The file of a segment being written was deleted by something other than the node (a person
    freeing space, say): the request is refused, nothing of it kept, and its retry goes to a new
    segment (the vanished one is taken out of service: node/wal/table.py)."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        super().__init__(f"segment {os.fspath(path)} was deleted outside the node while it was written; "
                         "it is replaced by a new one: retry", retry_after_seconds=1.0)


class UnauthenticatedError(IngestorError):
    """A caller without the peer credentials."""


class AlreadyExistsError(IngestorError):
    """A transferred segment that this node accepted before (the transfer is idempotent)."""


class BindError(IngestorError):
    """A port the node was told to listen on cannot be bound: the address as given, which port
    (gRPC, HTTP), the flag that sets it, and why (`errno` 0 when the reason is not known). Its text
    names the problem and the fix, for `ingestor serve` to print as its one line."""

    def __init__(self, addr: str, port: str, flag: str, reason: str, errno: int = 0) -> None:
        self.addr = addr
        self.port = port
        self.flag = flag
        self.reason = reason
        self.errno = errno
        super().__init__(f"cannot listen on {addr} ({port}): {reason}; {self.fix}")

    @classmethod
    def of(cls, addr: str, port: str, flag: str, err: OSError) -> BindError:
        """From the OSError of a bind (or of getaddrinfo, whose errno is negative)."""
        code = err.errno or 0
        text = err.strerror if isinstance(err, socket.gaierror) or code <= 0 else os.strerror(code)
        text = text or str(err)
        return cls(addr, port, flag, text[:1].lower() + text[1:], code)

    @property
    def fix(self) -> str:
        if self.errno == EACCES:
            return f"ports under 1024 need privileges: pass {self.flag} with a higher port"
        if self.errno in (EADDRNOTAVAIL, EAFNOSUPPORT) or self.errno < 0:
            return f"pass {self.flag} with an address of this host"
        return f"free the port or pass {self.flag}"


class CorruptionError(IngestorError):
    """A segment is damaged: everything from `offset` on is not trusted."""

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")
        self.path = Path(path)
        self.offset = offset
        self.reason = reason


class SinkError(IngestorError):
    """A sink failed a batch; the batch is released and retried later with backoff."""


class PermanentSinkError(SinkError):
    """A sink will never accept this batch as it is (e.g. a schema it rejects): quarantine it."""


class SegmentError(PermanentSinkError):
    """One segment of a batch can never be taken (its rows do not fit the batch's columns, or it
    does not read): that segment is quarantined alone, and the batch's other segments go again
    without it. `rows_before`: rows of the batch the sink had been handed before it (0 when none was)."""

    def __init__(self, path: Path, message: str, rows_before: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.rows_before = rows_before


class CorruptSegmentError(SegmentError):
    """A segment of a batch that does not read: a block whose CRC fails, or that does not decode."""

    def __init__(self, path: Path, reason: str, rows_before: int = 0) -> None:
        super().__init__(path, f"segment {path.name} is corrupt: {reason}", rows_before)


@dataclass(frozen=True)
class Status:
    """How an error is reported: gRPC code, HTTP status and an optional retry hint."""

    grpc_code: grpc.StatusCode
    http_status: int
    retry_after_seconds: float | None = None


def status_of(err: BaseException) -> Status:
    """Map an exception to the status it is reported with. Unknown errors are internal (retried)."""
    if isinstance(err, RequestTooLargeError):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
    if isinstance(err, UnsupportedMediaError):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, 415)
    if isinstance(err, StalledError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, 408)
    if isinstance(err, ClientGoneError):
        return Status(grpc.StatusCode.CANCELLED, 499)
    if isinstance(err, InvalidInputError):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, 400)
    if isinstance(err, OverLimitsError):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, err.retry_after_seconds)
    if isinstance(err, UnavailableError):
        return Status(grpc.StatusCode.UNAVAILABLE, 503, err.retry_after_seconds)
    if isinstance(err, UnauthenticatedError):
        return Status(grpc.StatusCode.UNAUTHENTICATED, 401)
    if isinstance(err, AlreadyExistsError):
        return Status(grpc.StatusCode.ALREADY_EXISTS, 409)
    if isinstance(err, CorruptionError):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, 400)
    return Status(grpc.StatusCode.INTERNAL, 500)
