"""Names of databases, tables and columns: the one pattern, the one check, the one set of limits.

A name is 1 to `limit` ASCII letters and digits, `[A-Za-z0-9]`, nothing else. A name that arrives
from outside (a routing attribute, a flag, a DSN, a transferred segment's prefix) and does not
match is refused with `InvalidNameError`, never cleaned: a valid name cannot hold a separator, a
dot or NUL, so it can never address a path outside the storage directory, nor break out of SQL.

Limits. A segment file name (`<Database>_<Table>[_<SchemaHash>]_<SegmentId>.wal`, node/wal/names.py)
must fit in 255 bytes (NAME_MAX): database + table + 36 bytes of separators, schema hash, id and
suffix. So a database is at most `MAX_DATABASE_LEN` (64) characters and a table `MAX_TABLE_LEN`
(150), wherever they come from. A column is at most `MAX_COLUMN_LEN` (1024), the pattern's bound.

Built on this module: segment file names and prefixes (node/wal/names.py), the table and column
names made from metric and label names (node/rows/names.py `normalize_name`, which cleans free
text into a name instead of refusing it), and SQL identifiers (node/sinks/chschema.py). Column
names in a schema are the one exception: `COLUMN_RE` also allows `_`.
"""

from __future__ import annotations

import re

from node.errors import InvalidNameError

__all__ = ["COLUMN_RE", "MAX_COLUMN_LEN", "MAX_DATABASE_LEN", "MAX_TABLE_LEN", "NAME_CHARS", "NAME_PATTERN", "NAME_RE",
           "is_valid_name", "show", "validate_name"]

MAX_DATABASE_LEN = 64
"""The longest database name (a segment file name must fit in 255 bytes)."""
MAX_TABLE_LEN = 150
"""The longest table name (a segment file name must fit in 255 bytes)."""
MAX_COLUMN_LEN = 1024
"""The longest column name, and the longest name the pattern matches."""

NAME_CHARS = "[A-Za-z0-9]"
"""The characters of a name, as a regular expression character class."""
NAME_PATTERN = f"{NAME_CHARS}{{1,{MAX_COLUMN_LEN}}}"
"""A name of any kind, as a regular expression (for patterns built from names, such as file names)."""
NAME_RE = re.compile(NAME_PATTERN)
COLUMN_RE = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_COLUMN_LEN}}}")
"""A column name in a schema (a segment's `Column:type,...` header line, a sink's table): the one
exception to the pattern, it also allows `_`, as header lines do. Columns are never part of a path."""


def is_valid_name(value: str, limit: int = MAX_COLUMN_LEN) -> bool:
    """True when `value` is 1 to `limit` ASCII letters and digits, nothing else."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None and len(value) <= limit


def show(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters so a 10 KB name stays short."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def validate_name(value: str, what: str, limit: int = MAX_COLUMN_LEN) -> str:
    """Return `value` unchanged if it is a valid name of at most `limit` characters
    (`MAX_DATABASE_LEN` for a database, `MAX_TABLE_LEN` for a table), else raise
    `InvalidNameError` naming `what`:

        invalid <what>: '<value>' does not match [A-Za-z0-9]{1,<limit>}
    """
    if not is_valid_name(value, limit):
        shown = show(value) if isinstance(value, str) else show(repr(value))
        raise InvalidNameError(f"invalid {what}: {shown} does not match {NAME_CHARS}{{1,{limit}}}")
    return value
