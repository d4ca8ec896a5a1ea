"""Names of databases, tables and columns, and the Prometheus-style names of OTLP metrics and labels.

Two different operations live here and must not be confused:

* `normalize_name` turns a *metric or label name* into a table or column name (rows.md). It is
  only used for names that are meant to be free text (metric names, `adxmon_database` values).
* `validate_name` checks a name that arrives as a *routing target* (`kusto.database`,
  `kusto.table`). Such a name is never cleaned: anything that is not `[A-Za-z0-9]`, at most 64
  (database) or 150 (table) characters, is refused with `InvalidNameError`.
"""

from __future__ import annotations

import re

from node.errors import InvalidNameError
from node.wal.names import MAX_DATABASE_LEN, MAX_NAME_LEN, MAX_TABLE_LEN

__all__ = ["MAX_DATABASE_LEN", "MAX_NAME_LEN", "MAX_TABLE_LEN", "is_valid_name", "normalize_name", "show",
           "validate_name"]
NAME_RE = re.compile(r"[A-Za-z0-9]{1,1024}")

_DROPPED = re.compile(r"[^A-Za-z0-9]+")
_PROM_METRIC_INVALID = re.compile(r"[^A-Za-z0-9_:]")
_PROM_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_]")


def is_valid_name(s: str, limit: int = MAX_NAME_LEN) -> bool:
    """True when `s` is 1 to `limit` ASCII letters and digits, nothing else."""
    return NAME_RE.fullmatch(s) is not None and len(s) <= limit


def show(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters so a 10 KB name stays short."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def validate_name(value: str, what: str, limit: int = MAX_NAME_LEN) -> str:
    """Return `value` unchanged if it is a valid name, else raise `InvalidNameError` naming `what`."""
    if NAME_RE.fullmatch(value) is None or len(value) > limit:
        raise InvalidNameError(f"invalid {what}: {show(value)} does not match [A-Za-z0-9]{{1,{limit}}}")
    return value


def normalize_name(s: str, limit: int = MAX_NAME_LEN) -> str:
    """Table/column name of a metric or label: keep [A-Za-z0-9], upper-case each letter that follows a
    dropped character and the first letter, cap at `limit` (1024 for a column, MAX_TABLE_LEN for a
    table, MAX_DATABASE_LEN for a database). May return "" (nothing to keep).

    >>> normalize_name("container_cpu_usage_seconds_total")
    'ContainerCpuUsageSecondsTotal'
    """
    parts = _DROPPED.split(s)
    joined = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return (joined[:1].upper() + joined[1:])[:limit]


def prometheus_metric_name(name: str) -> str:
    """The Prometheus name of an OTLP metric (underscore escaping, no unit or type suffixes):
    characters outside [A-Za-z0-9_:] become "_", a leading digit gets a "_" prefix."""
    out = _PROM_METRIC_INVALID.sub("_", name)
    if out[:1].isdigit():
        out = "_" + out
    return out


def prometheus_label_name(key: str) -> str:
    """The Prometheus label name of an OTLP attribute key: characters outside [A-Za-z0-9_] become "_",
    a leading digit gets "key_", a single leading "_" gets "key" (Prometheus's OTLP translation)."""
    out = _PROM_LABEL_INVALID.sub("_", key)
    if out[:1].isdigit():
        out = "key_" + out
    elif out.startswith("_") and not out.startswith("__"):
        out = "key" + out
    return out
