"""Routing of logs and spans by the `kusto.database` / `kusto.table` attributes.

A value found on a log record wins over one on its resource (spans use only the resource), which
wins over the configured default; database and table are resolved independently. A value that is
not a string holding a name (node/names.py: runs of [A-Za-z0-9] joined by single `_`, at most 64
characters for a database, 150 for a table: `observability_logs`) refuses the item that would use
it -- it is never cleaned into a name. `kusto.*` attributes are left out of the JSON of the
attributes they were read from.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from node.cache import Generations
from node.errors import InvalidNameError
from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN, is_valid_name, show, validate_name
from node.rows.anyvalue import JsonValue, to_json

DATABASE_KEY = "kusto.database"
TABLE_KEY = "kusto.table"
ROUTING_PREFIX = "kusto."

MAX_CACHED_DESTINATIONS = 131072
"""(database, table) pairs the router keeps one tuple of, at most."""

Choice = str | InvalidNameError | None
"""A routing value: a valid name, the error of an invalid one, or None when absent."""


def routing_value(key: str, value: AnyValue, where: str) -> Choice:
    """The routing choice made by attribute `key` with AnyValue `value` found on `where`."""
    what = f"{where} attribute {key}"
    if value.WhichOneof("value") != "string_value":
        return InvalidNameError(f"invalid {what}: {show(str(to_json(value)))} is not a string")
    try:
        return validate_name(value.string_value, what, MAX_DATABASE_LEN if key == DATABASE_KEY else MAX_TABLE_LEN)
    except InvalidNameError as err:
        return err


def split_attributes(kvs: Iterable[KeyValue], where: str) -> tuple[dict[str, JsonValue], Choice, Choice]:
    """Attributes as a JSON dict without `kusto.*`, and the database and table choices they make."""
    attrs: dict[str, JsonValue] = {}
    database: Choice = None
    table: Choice = None
    for kv in kvs:
        key = kv.key
        v = kv.value
        if key.startswith(ROUTING_PREFIX):
            if key == DATABASE_KEY:
                database = routing_value(key, v, where)
            elif key == TABLE_KEY:
                table = routing_value(key, v, where)
        elif v.WhichOneof("value") == "string_value":
            attrs[key] = v.string_value
        else:
            attrs[key] = to_json(v)
    return attrs, database, table


class Router:
    """Resolves (database, table) from the record's and the resource's choices and the defaults."""

    def __init__(
        self, default_database: str | None, default_table: str | None, allowed_databases: frozenset[str] | None
    ) -> None:
        """Raises ValueError for an invalid default name."""
        for what, name in (("database", default_database), ("table", default_table)):
            if name is not None and not is_valid_name(name, MAX_DATABASE_LEN if what == "database" else MAX_TABLE_LEN):
                raise ValueError(f"invalid default {what}: {show(name)}")
        self._default_database = default_database
        self._default_table = default_table
        self._allowed = allowed_databases
        self._dests: Generations[tuple[str, str], tuple[str, str]] = Generations(MAX_CACHED_DESTINATIONS)

    def turn(self) -> None:
        """Forget the destinations not used since the previous turn (node/cache.py)."""
        self._dests.turn()

    def resolve(
        self, database: Choice, table: Choice, resource_database: Choice, resource_table: Choice
    ) -> tuple[str, str] | str:
        """The destination, or the reason the item is refused."""
        db = database if database is not None else resource_database
        if db is None:
            db = self._default_database
        tb = table if table is not None else resource_table
        if tb is None:
            tb = self._default_table
        if isinstance(db, InvalidNameError):
            return str(db)
        if isinstance(tb, InvalidNameError):
            return str(tb)
        if db is None or tb is None:
            missing = " and ".join(k for k, v in ((DATABASE_KEY, db), (TABLE_KEY, tb)) if v is None)
            return f"no {missing} attribute and no default configured"
        if self._allowed is not None and db not in self._allowed:
            return f"database has no configured sink: {show(db)}"
        dest = self._dests.get((db, tb))
        if dest is None:
            self._dests.turn_if_full()
            dest = self._dests.put((db, tb), (db, tb))
        return dest
