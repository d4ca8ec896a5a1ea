"""One metric series (a label set) as the constant part of its CSV rows, and where those rows go.

A metrics row is `Timestamp,SeriesId,"Labels",Value[,Added...][,Lifted...]\\n`. Everything but
the timestamp and the value depends only on the label set, so it is computed once per series and
cached by the converters as an `Entry`:

    Entry = (dest, mid, tail)
      dest  (database, table), or None when the series is refused or skipped; one tuple object
            per destination, so hot loops can compare destinations with `is`
      mid   ',<SeriesId>,"<Labels JSON>",'  -- or, when dest is None, the refusal reason
                                                ("" = skip: neither stored nor refused)
      tail  '[,<added value>...][,<lifted value>...]\\n'  (--add-labels, --lift-labels)

    row = timestamp + mid + value + tail

adx-mon's `--drop-metrics`, `--drop-labels` and `--add-labels` (filters.py) act here, once per
series: a dropped series is `SKIP` (its points neither stored nor refused; said in one INFO line a
minute per expression), dropped labels are gone before `Labels` and `SeriesId` are made, and each
added column is a constant field of `tail`, before the lifted ones.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import xxhash

from node.cache import Generations
from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN, is_valid_name, show
from node.ratelog import RateLimitedLog
from node.rows.anyvalue import encode_json
from node.rows.batch import Schema
from node.rows.csvtext import field, quoted
from node.rows.filters import MetricFilters
from node.rows.names import normalize_name

log = logging.getLogger(__name__)

Entry = tuple[tuple[str, str] | None, str, str]

SKIP: Entry = (None, "", "")
"""A series whose points are neither stored nor refused (OTLP 'no recorded value', `--drop-metrics`)."""

NAME_LABEL = "__name__"
DATABASE_LABEL = "adxmon_database"
RESERVED_PREFIX = "adxmon_"

MAX_CACHED_NAMES = 131072
"""Metric names and destinations each cache holds at most."""

BASE_SCHEMA: Schema = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))

_ALNUM = re.compile(r"[A-Za-z0-9]+")
_TOP_BIT = 1 << 63
_WRAP = 1 << 64


def series_id(labels: Iterable[tuple[str, str]]) -> int:
    """xxhash64 of name+value of every label, concatenated in the given order, as a signed int64.
    Callers pass labels sorted by name."""
    h: int = xxhash.xxh64_intdigest("".join([n + v for n, v in labels]).encode("utf-8"))
    return h - _WRAP if h >= _TOP_BIT else h


def database_of_label(value: str) -> str:
    """The database an `adxmon_database` label names: the value itself when it is a name (letters and
    digits, runs joined by single `_`: `observability_metrics`, as its endpoint is keyed); otherwise
    its [A-Za-z0-9] characters, case kept, as adx-mon keeps them (`prod-eu.1` -> `prodeu1`). May be
    "" (nothing to keep) or longer than a database name may be: the caller refuses those."""
    if is_valid_name(value, MAX_DATABASE_LEN):
        return value
    return "".join(_ALNUM.findall(value))


class SeriesEncoder:
    """Builds `Entry`s for label sets, per the node's routing and lifting configuration.

    `lift_labels` are matched case-insensitively; their columns are ordered by lower-cased label
    name and named with `normalize_name`. A series that lacks a lifted label gets "" there. The
    columns of `filters` (`--add-labels`) come before them, in the order given.
    """

    def __init__(
        self, default_database: str, lift_labels: tuple[str, ...], allowed_databases: frozenset[str] | None,
        filters: MetricFilters | None = None,
    ) -> None:
        """Raises ValueError for a configuration that cannot produce valid tables."""
        if not is_valid_name(default_database, MAX_DATABASE_LEN):
            raise ValueError(f"invalid default metrics database: {show(default_database)}")
        self._default_database = default_database
        self._allowed = allowed_databases
        self._filters = filters = filters or MetricFilters()
        self._added = "".join(["," + field(value) for _, value in filters.columns])
        self._said = RateLimitedLog(log)
        self.dropped_series = 0
        """Series `--drop-metrics` dropped (each time it is encoded: again after the caches forgot it)."""
        configured = {name.lower(): name for name in reversed(lift_labels)}  # first spelling wins
        lifted = sorted(configured)
        self._lift = {name: i for i, name in enumerate(lifted)}
        self.schema: Schema = (BASE_SCHEMA + tuple((name, "string") for name, _ in filters.columns)
                               + tuple((normalize_name(configured[name]), "string") for name in lifted))
        columns = [column for column, _ in self.schema]
        lowered = [column.lower() for column in columns]
        for name, _ in filters.columns:
            if lowered.count(name.lower()) > 1:
                raise ValueError(f"--add-labels column {name!r} is also another column (in any case): "
                                 f"{', '.join(columns)}")
        for name, column in zip(lifted, columns[len(BASE_SCHEMA) + len(filters.columns) :], strict=True):
            if not column or columns.count(column) > 1:
                raise ValueError(f"lift label {name!r} makes column {column!r}, which is empty or not unique")
        self._tables: Generations[str, str] = Generations(MAX_CACHED_NAMES)
        self._dests: Generations[tuple[str, str], tuple[str, str]] = Generations(MAX_CACHED_NAMES)

    def turn(self) -> None:
        """Forget the names not used since the previous turn (node/cache.py)."""
        self._tables.turn()
        self._dests.turn()

    def table_of(self, metric: str) -> str:
        """Table name of a metric name (cached; "" if it has no [A-Za-z0-9] character)."""
        table = self._tables.get(metric)
        if table is None:
            self._tables.turn_if_full()
            table = self._tables.put(metric, normalize_name(metric, MAX_TABLE_LEN))
        return table

    def encode(self, labels: Iterable[tuple[str, str]]) -> Entry:
        """The `Entry` of a label set (any order; `__name__` included)."""
        pairs = sorted(labels, key=lambda kv: kv[0])
        if self._filters.drops:
            kept = self._filters.keep(pairs)
            if isinstance(kept, str):
                return self._dropped(pairs, kept)
            pairs = kept
        metric: str | None = None
        database_raw: str | None = None
        lifted = [""] * len(self._lift)
        seen = [False] * len(self._lift)
        shown: dict[str, str] = {}
        for name, value in pairs:
            if name == NAME_LABEL:
                metric = value
                continue
            if name.startswith(RESERVED_PREFIX):
                if name == DATABASE_LABEL:
                    database_raw = value
                continue
            i = self._lift.get(name.lower())
            if i is not None and not seen[i]:
                seen[i] = True
                lifted[i] = value
                continue
            shown[name] = value
        if metric is None:
            return None, "series without a __name__ label", ""
        table = self.table_of(metric)
        if not table:
            return None, f"metric name without [A-Za-z0-9] characters: {show(metric)}", ""
        database = self._default_database
        if database_raw is not None:
            database = database_of_label(database_raw)
            if not database:
                return None, f"adxmon_database without [A-Za-z0-9] characters: {show(database_raw)}", ""
            if len(database) > MAX_DATABASE_LEN:
                return None, f"adxmon_database longer than {MAX_DATABASE_LEN} characters: {show(database_raw)}", ""
        if self._allowed is not None and database not in self._allowed:
            return None, f"database has no configured sink: {show(database)}", ""
        sid = series_id(pairs)
        mid = f",{sid},{quoted(encode_json(shown))},"
        tail = self._added + "".join(["," + field(v) for v in lifted]) + "\n"
        dest = self._dests.get((database, table))
        if dest is None:
            self._dests.turn_if_full()
            dest = self._dests.put((database, table), (database, table))
        return dest, mid, tail

    def _dropped(self, pairs: list[tuple[str, str]], rule: str) -> Entry:
        self.dropped_series += 1
        metric = next(value for name, value in pairs if name == NAME_LABEL)
        self._said.log(logging.INFO, rule, "--drop-metrics %s matches metric %s: its points are not stored",
                       show(rule), show(metric))
        return SKIP
