"""adx-mon's `--drop-metrics`, `--drop-labels` and `--add-labels`, as rules the series encoder
applies once per series (series.py; docs/rows.md, "Dropped metrics and labels, added columns").

What adx-mon's ingestor did with them (cmd/ingestor/main.go and transform/transformer.go, up to
January 2025, when its remote write handler left the ingestor; the flags were removed in March 2025):

* `--drop-metrics REGEX`: a series whose metric name (the `__name__` label, before it becomes a
  table name) the expression matches is not stored. The match is Go's `regexp.Match`: anywhere in
  the name, unanchored (`up` matches `up`, `node_uptime` and `backup_total`; `^up$` matches `up`
  alone), so here `re.search`. adx-mon answered the request as a success and counted the samples in
  `adxmon_ingestor_metrics_dropped_total{metric}`.
* `--drop-labels METRIC_REGEX=LABEL_REGEX`: from the series of a metric whose name METRIC_REGEX
  matches, every label whose *name* LABEL_REGEX matches is removed, both unanchored; never
  `__name__`. It happened before the series was written, so a dropped label is in neither
  `Labels` nor `SeriesId` nor a lifted column, and two series that differ only in dropped labels
  become one. adx-mon matched the first label's value (the metric name when `__name__` sorts
  first, which its sort ensures for every name here); here the metric name itself. Here the
  `adxmon_*` labels are not dropped either: they are not stored, they route (dropping
  `adxmon_database` made adx-mon's write of the series fail).
* `--add-labels NAME=VALUE`: not a label at all in adx-mon's ingestor: a constant column of its
  ingestion mapping (`AddConstMapping(NAME, VALUE)`), so every metrics table it created had a
  `string` column NAME holding VALUE on every row, placed after `Value` and before the lifted
  columns, and `Labels` and `SeriesId` did not change. Here the same column, written in each row
  (series.py caches it with the series, so it costs nothing per point).

Values are checked as adx-mon checked them: a regular expression must compile, `--drop-labels` and
`--add-labels` items are split at `=` and must have exactly two parts. Python's `re` reads the
syntax adx-mon's users write (classes, anchors, alternation, repetition, `(?i)`) as Go's RE2 does;
what RE2 has and `re` has not (`\\pL`, `[[:alpha:]]`, `\\z`) is refused or read otherwise. Here
NAME must also be a column name (`[A-Za-z0-9_]`, as every column is).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from node.names import COLUMN_RE

NAME_LABEL = "__name__"
RESERVED_PREFIX = "adxmon_"


def drop_metric_rule(text: str) -> re.Pattern[str]:
    """A `--drop-metrics` item compiled; ValueError if it is not a regular expression."""
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"not a regular expression: {text!r}: {e}") from None


def drop_label_rule(text: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A `--drop-labels` item, `METRIC_REGEX=LABEL_REGEX`, compiled; ValueError otherwise."""
    parts = text.split("=")
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected METRIC_REGEX=LABEL_REGEX (one '=')")
    return drop_metric_rule(parts[0]), drop_metric_rule(parts[1])


def add_label_rule(text: str) -> tuple[str, str]:
    """An `--add-labels` item, `NAME=VALUE`, as (column, value); ValueError otherwise."""
    parts = text.split("=")
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected NAME=VALUE (one '=')")
    name, value = parts
    if not COLUMN_RE.fullmatch(name):
        raise ValueError(f"{text!r}: the column name {name!r} is not 1-1024 characters of [A-Za-z0-9_]")
    return name, value


class MetricFilters:
    """The three flags' rules, compiled. Raises ValueError for an item that is not valid, or a
    column added twice (in any case)."""

    def __init__(self, drop_metrics: Iterable[str] = (), drop_labels: Iterable[str] = (),
                 add_labels: Iterable[str] = ()) -> None:
        self.drop_metrics = tuple(drop_metric_rule(x) for x in drop_metrics)
        self.drop_labels = tuple(drop_label_rule(x) for x in drop_labels)
        self.columns = tuple(add_label_rule(x) for x in add_labels)
        """(column, value) of each `--add-labels`, in the order given."""
        for name, _ in self.columns:
            same = [other for other, _ in self.columns if other.lower() == name.lower()]
            if len(same) > 1:
                raise ValueError(f"--add-labels names one column more than once: {', '.join(map(repr, same))}")
        self.drops = bool(self.drop_metrics or self.drop_labels)
        """Whether any series or label can be dropped (else `keep` need not be asked)."""

    def dropped_by(self, metric: str) -> str | None:
        """The `--drop-metrics` expression (its text) that drops `metric`, or None."""
        for rule in self.drop_metrics:
            if rule.search(metric):
                return rule.pattern
        return None

    def label_rules(self, metric: str) -> tuple[re.Pattern[str], ...]:
        """The LABEL_REGEXes of the `--drop-labels` rules whose METRIC_REGEX matches `metric`."""
        return tuple(label for name, label in self.drop_labels if name.search(metric))

    def keep(self, labels: Sequence[tuple[str, str]]) -> list[tuple[str, str]] | str:
        """`labels` (a series' label set, `__name__` included) without the labels `--drop-labels`
        drops, in their order; or, when `--drop-metrics` drops the whole series, the expression that
        does. A set without `__name__` is returned whole (the encoder refuses it)."""
        metric = next((value for name, value in labels if name == NAME_LABEL), None)
        if metric is None:
            return list(labels)
        rule = self.dropped_by(metric)
        if rule is not None:
            return rule
        rules = self.label_rules(metric)
        if not rules:
            return list(labels)
        return [(name, value) for name, value in labels
                if name == NAME_LABEL or name.startswith(RESERVED_PREFIX) or not any(r.search(name) for r in rules)]
