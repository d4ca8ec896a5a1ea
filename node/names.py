"""Names of databases, tables and columns: the one pattern, the one check, the one set of limits,
and the one spelling of a name in a file name.

A name is 1 to `limit` ASCII letters, digits and underscores, where an underscore only joins two
runs of letters and digits: `[A-Za-z0-9]+(_[A-Za-z0-9]+)*` (`Logs`, `observability_logs`; not
`_x`, `x_`, `a__b`). A name that arrives from outside (a routing attribute, a flag, a DSN, a
transferred segment's prefix) and does not match is refused with `InvalidNameError`, never
cleaned: a valid name cannot hold a separator, a dot, a dash or NUL, so it can never address a
path outside the storage directory, nor break out of SQL.

File names. `_` separates the fields of a segment file name (`<Database>_<Table>[_<SchemaHash>]_<SegmentId>.wal`,
node/wal/names.py), as in adx-mon. So a name is written there in its *file form*: every `_`
becomes `-`, a character no name holds (`observability_logs` -> `observability-logs`). The two
spellings are a bijection (`file_form`, `from_file_form`), so a file name still says exactly which
database and table it holds, and a file-form name is still only letters, digits and `-` inside a
name: no `.`, `/` or NUL, never a leading `-`. A name without `_` is its own file form, so every
file name written before `_` was allowed reads as it did.

Limits. A segment file name must fit in 255 bytes (NAME_MAX): database + table + 36 bytes of
separators, schema hash, id and suffix. So a database is at most `MAX_DATABASE_LEN` (64)
characters and a table `MAX_TABLE_LEN` (150), wherever they come from. A column is at most
`MAX_COLUMN_LEN` (1024), the pattern's bound.

Built on this module: segment file names and prefixes (node/wal/names.py), the table and column
names made from metric and label names (node/rows/names.py `normalize_name`, which cleans free
text into a name instead of refusing it), and SQL identifiers (node/sinks/chschema.py). Column
names in a schema are the one exception: `COLUMN_RE` allows `_` anywhere, as header lines do.
"""

from __future__ import annotations

import re

from node.errors import InvalidNameError

__all__ = ["COLUMN_RE", "FILE_NAME_PATTERN", "MAX_COLUMN_LEN", "MAX_DATABASE_LEN", "MAX_TABLE_LEN", "NAME_CHARS",
           "NAME_PATTERN", "NAME_RE", "file_form", "from_file_form", "is_valid_name", "show", "validate_name"]

MAX_DATABASE_LEN = 64
"""The longest database name (a segment file name must fit in 255 bytes)."""
MAX_TABLE_LEN = 150
"""The longest table name (a segment file name must fit in 255 bytes)."""
MAX_COLUMN_LEN = 1024
"""The longest column name, and the longest name the pattern matches."""

NAME_CHARS = "[A-Za-z0-9]+(_[A-Za-z0-9]+)*"
"""What a name is, as said in error messages: runs of letters and digits joined by single `_`."""
NAME_PATTERN = "[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*"
"""A name of any kind, as a regular expression (the length is checked apart: `is_valid_name`)."""
NAME_RE = re.compile(NAME_PATTERN)
FILE_NAME_PATTERN = "[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*"
"""A name in its file form (`_` written `-`), as a regular expression, for patterns of file names:
it holds no `_`, so `_` separates the fields of a file name without ambiguity."""
COLUMN_RE = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_COLUMN_LEN}}}")
"""A column name in a schema (a segment's `Column:type,...` header line, a sink's table): the one
exception to the pattern, it allows `_` anywhere, as header lines do. Columns are never part of a path."""

_FILE_NAME_RE = re.compile(FILE_NAME_PATTERN)


def is_valid_name(value: str, limit: int = MAX_COLUMN_LEN) -> bool:
    """True when `value` is a name (`NAME_PATTERN`) of 1 to `limit` characters."""
    return isinstance(value, str) and len(value) <= limit and NAME_RE.fullmatch(value) is not None


def show(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters so a 10 KB name stays short."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def validate_name(value: str, what: str, limit: int = MAX_COLUMN_LEN) -> str:
    """Return `value` unchanged if it is a valid name of at most `limit` characters
    (`MAX_DATABASE_LEN` for a database, `MAX_TABLE_LEN` for a table), else raise
    `InvalidNameError` naming `what`:

        invalid <what>: '<value>' does not match [A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-<limit> characters
    """
    if not is_valid_name(value, limit):
        shown = show(value) if isinstance(value, str) else show(repr(value))
        raise InvalidNameError(f"invalid {what}: {shown} does not match {NAME_CHARS} of 1-{limit} characters")
    return value


def file_form(name: str) -> str:
    """A valid name as it is written in a file name: `_` -> `-` (`observability_logs` ->
    `observability-logs`). The caller validated `name`."""
    return name.replace("_", "-")


def from_file_form(text: str, what: str, limit: int = MAX_COLUMN_LEN) -> str:
    """The name whose file form is `text` (`-` -> `_`); InvalidNameError naming `what` when `text`
    is not the file form of a valid name of at most `limit` characters (a `_`, a leading or
    doubled `-`, anything but letters, digits and `-`)."""
    if not isinstance(text, str) or len(text) > limit or _FILE_NAME_RE.fullmatch(text) is None:
        shown = show(text) if isinstance(text, str) else show(repr(text))
        raise InvalidNameError(f"invalid {what} in a file name: {shown} does not match {FILE_NAME_PATTERN} "
                               f"of 1-{limit} characters")
    return text.replace("-", "_")
