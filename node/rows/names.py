"""The table and column names of metrics and labels, and the Prometheus-style names of OTLP metrics
and labels: row conversion, which turns free text into names.

`normalize_name` turns a *metric or label name* into a table or column name (rows.md). It is only
used for names that are meant to be free text (metric names, `adxmon_database` values). A name that
arrives as a *routing target* (`kusto.database`, `kusto.table`) is never cleaned: it is checked by
`node.names.validate_name` (the one pattern and the one set of limits) and refused if invalid.
"""

from __future__ import annotations

import re

from node.names import MAX_COLUMN_LEN

__all__ = ["normalize_name", "prometheus_label_name", "prometheus_metric_name"]

_DROPPED = re.compile(r"[^A-Za-z0-9]+")
_PROM_METRIC_INVALID = re.compile(r"[^A-Za-z0-9_:]")
_PROM_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_]")


def normalize_name(s: str, limit: int = MAX_COLUMN_LEN) -> str:
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
