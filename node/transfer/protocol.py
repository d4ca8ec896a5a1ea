"""What the two sides of `ingestor.v1.Transfer` (proto/ingestor/v1/transfer.proto) agree on, said once:
the sender (`client.py`) and the receiver (`service.py`) both import it from here.

One call carries one segment: the metadata first (`SegmentMetadata`), then the bytes in chunks of
at most `MAX_CHUNK`. The caller proves it is a peer with `TOKEN_HEADER: TOKEN_SCHEME <token>` (or
a client certificate); the receiver sends `READY_HEADER` as its initial metadata once it accepted
the metadata, and only then does the sender stream the bytes.

The receiver's status tells the sender what to do with its copy (`Outcome`, `outcome_of`):

- OK / ALREADY_EXISTS (`ACCEPTED` / `ALREADY_HAD`): the peer holds the rows durably; the sender
  deletes its segments;
- INVALID_ARGUMENT (`REFUSED`): the peer will never take these bytes; the sender uploads them;
- anything else (`PEER_FAILED`: unreachable, RESOURCE_EXHAUSTED, UNAVAILABLE while it drains,
  UNAUTHENTICATED): the sender marks the peer unhealthy and keeps its segments (the next round
  routes them to the next peer, or uploads them).

Of those, the codes in `IN_DOUBT` say nothing of what the peer did with a stream it received
whole: it may have committed it (see `router.py` for what the sender does then).
"""

from __future__ import annotations

import enum

import grpc

TOKEN_HEADER = "authorization"
"""The call's metadata key of the peer token."""
TOKEN_SCHEME = "Bearer "
"""What precedes the token in its value: `authorization: Bearer <token>`."""
READY_HEADER = "x-ingestor-transfer-ready"
"""Initial metadata of a receiver that accepted the segment's metadata: stream the bytes."""
MAX_CHUNK = 4 << 20
"""The largest chunk a message carries: the sender's chunk size, and the receiver's limit."""


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    ALREADY_HAD = "already_had"
    REFUSED = "refused"
    PEER_FAILED = "peer_failed"

    @property
    def delivered(self) -> bool:
        return self in (Outcome.ACCEPTED, Outcome.ALREADY_HAD)


_OUTCOMES = {
    grpc.StatusCode.OK: Outcome.ACCEPTED,
    grpc.StatusCode.ALREADY_EXISTS: Outcome.ALREADY_HAD,
    grpc.StatusCode.INVALID_ARGUMENT: Outcome.REFUSED,
}

IN_DOUBT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                      grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
"""Failures that say nothing of what the peer did with a stream it received whole."""


def outcome_of(code: grpc.StatusCode) -> Outcome:
    """What the receiver's status means for the sender's copy."""
    return _OUTCOMES.get(code, Outcome.PEER_FAILED)
