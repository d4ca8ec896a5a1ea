"""Hostile strings in every string column: the rows the converters write, read back by a strict
RFC 4180 reader (and by Python's csv module), hold exactly what was sent (the sinks' tests check
the same once stored)."""

from __future__ import annotations

import csv
import io

import pytest

from node.rows.batch import ConvertResult
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
