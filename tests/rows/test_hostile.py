"""Hostile strings in every string column: the rows the converters write, read back by a strict
RFC 4180 reader (and by Python's csv module), hold exactly what was sent (the sinks' tests check
the same once stored)."""

from __future__ import annotations

import csv
import io

import pytest

from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from tests.rows.build import log_record, logs_request
from tests.rows.hostile import CASES, check, strict_csv


def read(results: tuple[ConvertResult, ...]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for result in results:
        for tb in result.tables.values():
            names = [name for name, _ in tb.schema]
            text = tb.data.decode()
            parsed = strict_csv(text)
            assert parsed == list(csv.reader(io.StringIO(text, newline=""), strict=True))
            assert len(parsed) == tb.count
            rows += [dict(zip(names, row, strict=True)) for row in parsed]
    return rows


@pytest.mark.parametrize("name", CASES)
def test_rows_hold_what_was_sent(name: str) -> None:
    case = CASES[name]()
    check(case, read(case.results))


@pytest.mark.parametrize("text", ["'a\n", "a'\n", "\\N\n", " a\n", "a\t\n", 'a"b\n', '"a"b\n', "a", "a\r\n"])
def test_the_strict_reader_refuses(text: str) -> None:
    with pytest.raises(AssertionError):
        strict_csv(text)


# -- hostile routing names ----------------------------------------------------------------------

ROUTED = ["observability_logs", "a_b_c", "Logs2"]
REFUSED = ["_a", "a_", "a__b", "a-b", "../x", "a_/b", "a_..", "_", "a_\x00", "a_" * 32 + "b"]


@pytest.mark.parametrize("name", ROUTED + REFUSED)
def test_a_routing_name_with_underscores_is_taken_as_it_is_or_refused(name: str) -> None:
    """`kusto.database` joins words with single `_` (adx-mon's `observability_logs`); anything else
    around an `_` is refused as it ever was, never cleaned into another name."""
    conv = LogsConverter(LogsConfig("Logs", "Default", allowed_databases=frozenset({"Logs", *ROUTED})))
    result = conv.convert(logs_request(log_record({"kusto.database": name, "kusto.table": "docker_journal"})))
    if name in ROUTED:
        assert (result.accepted, result.rejected) == (1, 0)
        assert list(result.tables) == [(name, "docker_journal")]
    else:
        assert (result.accepted, result.rejected) == (0, 1)
        assert result.tables == {}
        assert result.reasons[0].startswith("invalid log record attribute kusto.database: ")
