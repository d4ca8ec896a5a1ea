"""How the node's log lines look: `--log-format text` (for a person) or `json` (for a log pipeline).

json writes one object per line: `time` (RFC 3339, UTC, milliseconds), `level`, `logger`,
`message`, and `exc_info` (the traceback, as one string) and `stack_info` when the record has
them; a receiver process adds `receiver` (its index). A message's newlines are escaped, so a
record is always one line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def rfc3339(created: float) -> str:
    """`created` (a record's Unix time) as `2026-12-01T02:03:04.567Z`."""
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `fields` are added to every object (a receiver's index)."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc_info"] = record.exc_text
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        doc.update(self._fields)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(fmt: str, receiver: int | None = None) -> logging.Formatter:
    """The formatter of `--log-format fmt`; `receiver`: the index of a receiver process."""
    if fmt == "json":
        return JsonFormatter({"receiver": receiver} if receiver is not None else None)
    if fmt != "text":
        raise ValueError(f"unknown log format {fmt!r}: choose from {', '.join(FORMATS)}")
    return logging.Formatter(TEXT if receiver is None else TEXT.replace("%(name)s", f"receiver-{receiver} %(name)s"))


def setup(fmt: str = "text", level: str | int = logging.INFO, receiver: int | None = None) -> None:
    """The root logger writes to stderr in `fmt` from `level` on, replacing its handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, receiver))
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True)
