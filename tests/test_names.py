"""node/names.py: one pattern, one `validate_name`, one set of limits, one file form, and every
place that takes a name from outside agreeing with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from node import names
from node.errors import InvalidNameError, PermanentSinkError
from node.names import (
    MAX_COLUMN_LEN,
    MAX_DATABASE_LEN,
    MAX_TABLE_LEN,
    NAME_RE,
    file_form,
    from_file_form,
    is_valid_name,
    show,
    validate_name,
)
from node.rows.routing import DATABASE_KEY, TABLE_KEY, Router, routing_value
from node.sinks.adx import parse_endpoints
from node.sinks.chschema import ident
from node.wal import format as fmt
from node.wal.names import SegmentName, make_prefix, parse_filename, validate_prefix
from node.wal.repository import Block, Repository, WalConfig

HOSTILE = ["", "../x", "a/b", "..", "a\x00b", "tablé", "таблица", "a b", "a\n", "a-b", "a.b", "a`b", "a;b",
           "\uff41", "x" * 10240, "_", "_a", "a_", "a__b", "_ingestor_batches", "a_-b", "a_/b", "a_.b", "a_\x00",
           "-a", "a-"]
UNDERSCORED = ["observability_logs", "a_b", "A_1_z", "x_" * 31 + "yz", "docker_journal"]


def test_the_limits() -> None:
    assert (MAX_DATABASE_LEN, MAX_TABLE_LEN, MAX_COLUMN_LEN) == (64, 150, 1024)
    longest = SegmentName("D" * MAX_DATABASE_LEN, "T" * MAX_TABLE_LEN, "z" * 13, "f" * 16).filename
    assert len(longest.encode()) <= 255  # NAME_MAX


@pytest.mark.parametrize(("what", "limit"), [("database", MAX_DATABASE_LEN), ("table", MAX_TABLE_LEN),
                                             ("column", MAX_COLUMN_LEN)])
def test_a_name_of_the_limit_is_taken_one_more_is_refused(what: str, limit: int) -> None:
    assert validate_name("N" * limit, what, limit) == "N" * limit
    assert is_valid_name("N" * limit, limit) and not is_valid_name("N" * (limit + 1), limit)
    with pytest.raises(InvalidNameError, match=rf"^invalid {what}: 'N+'(\.\.\. \(\d+ characters\))? does not match "
                                               rf"\[A-Za-z0-9\]\+\(_\[A-Za-z0-9\]\+\)\* of 1-{limit} characters$"):
        validate_name("N" * (limit + 1), what, limit)


def test_the_default_limit_is_a_columns() -> None:
    assert validate_name("C" * MAX_COLUMN_LEN, "column") == "C" * MAX_COLUMN_LEN
    with pytest.raises(InvalidNameError, match=r"of 1-1024 characters$"):
        validate_name("C" * (MAX_COLUMN_LEN + 1), "column")


@pytest.mark.parametrize("name", HOSTILE, ids=[repr(n[:12]) for n in HOSTILE])
def test_hostile_names_are_refused_with_one_error_text(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(InvalidNameError) as err:
        validate_name(name, "kusto.table", MAX_TABLE_LEN)
    pattern = "[A-Za-z0-9]+(_[A-Za-z0-9]+)*"
    assert str(err.value) == f"invalid kusto.table: {show(name)} does not match {pattern} of 1-150 characters"
    assert len(str(err.value)) < 200


def test_show_cuts_long_values() -> None:
    assert show("abc") == "'abc'"
    assert show("x" * 65) == f"{'x' * 64!r}... (65 characters)"


def test_one_pattern() -> None:
    assert NAME_RE.pattern == "[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*"
    # The segment file names are built on it: a file name's database and table are names, in file form.
    for name in ["A", "Metrics9", "N" * MAX_DATABASE_LEN, *UNDERSCORED]:
        parsed = parse_filename(f"{file_form(name)}_{file_form(name)}_0123456789abcdef.wal")
        assert (parsed.database, parsed.table) == (name, name)
    for name in HOSTILE:
        if name == "a-b":  # refused as a name, but it is the file form of a_b
            continue
        with pytest.raises(InvalidNameError):
            parse_filename(f"{name}_T_0123456789abcdef.wal")
        with pytest.raises(InvalidNameError):
            parse_filename(f"{file_form(name)}_T_0123456789abcdef.wal")
    assert parse_filename("a-b_T_0123456789abcdef.wal").database == "a_b"


@pytest.mark.parametrize("name", UNDERSCORED)
def test_underscores_join_words_and_are_dashes_in_file_names(name: str) -> None:
    assert validate_name(name, "database", MAX_DATABASE_LEN) == name
    form = file_form(name)
    assert "_" not in form and form.replace("-", "_") == name
    assert from_file_form(form, "database", MAX_DATABASE_LEN) == name
    seg = SegmentName(name, name, "abc", "0123456789abcdef")
    assert seg.filename == f"{form}_{form}_abc_0123456789abcdef.wal"
    assert parse_filename(seg.filename) == seg


@pytest.mark.parametrize("text", ["a_b", "-a", "a-", "a--b", "", "../x", "a.b", "a/b", "a\x00b", "é", "a b", "x" * 65])
def test_a_file_form_is_only_ever_the_form_of_a_name(text: str) -> None:
    with pytest.raises(InvalidNameError, match=r"^invalid database in a file name: "):
        from_file_form(text, "database", MAX_DATABASE_LEN)


SAMPLES = ["A", "Metrics", "0", "N" * 64, "N" * 65, "N" * 150, "N" * 151, "a_" * 32 + "b", *UNDERSCORED, *HOSTILE]


def _refuses(call: Callable[[], object]) -> bool:
    try:
        call()
    except (InvalidNameError, PermanentSinkError, ValueError):
        return True
    return False


@pytest.mark.parametrize("name", SAMPLES, ids=[repr(n[:12]) + f"x{len(n)}" for n in SAMPLES])
def test_every_door_agrees_with_the_limits(tmp_path: Path, name: str) -> None:
    database_ok, table_ok = is_valid_name(name, MAX_DATABASE_LEN), is_valid_name(name, MAX_TABLE_LEN)
    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    # The WAL (writes, prefixes, transferred prefixes).
    assert _refuses(lambda: repo.write_many([Block(name, "T", fmt.KIND_METRIC, b"x\n", 1)])) is not database_ok
    assert _refuses(lambda: repo.write_many([Block("Db", name, fmt.KIND_METRIC, b"x\n", 1)])) is not table_ok
    assert _refuses(lambda: make_prefix(name, "T")) is not database_ok
    assert _refuses(lambda: make_prefix("Db", name)) is not table_ok
    if "-" not in name:  # (a name with `-` is refused, but may be the file form of another)
        assert _refuses(lambda: validate_prefix(f"{file_form(name)}_T")) is not database_ok
    # Routing attributes and defaults.
    value = AnyValue(string_value=name)
    assert isinstance(routing_value(DATABASE_KEY, value, "resource"), InvalidNameError) is not database_ok
    assert isinstance(routing_value(TABLE_KEY, value, "resource"), InvalidNameError) is not table_ok
    assert _refuses(lambda: Router(name, "T", None)) is not database_ok
    assert _refuses(lambda: Router("Db", name, None)) is not table_ok
    # The sinks' databases.
    assert _refuses(lambda: parse_endpoints([f"{name}=https://x.kusto.windows.net"])) is not database_ok
    assert _refuses(lambda: ident(name)) is not is_valid_name(name)


def test_a_transferred_prefix_over_the_database_limit_reserves_nothing(tmp_path: Path) -> None:
    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    with pytest.raises(InvalidNameError, match=r"^invalid database in a file name: .* of 1-64 characters$"):
        repo.begin_import(f"{'D' * 65}_T", 1000)
    with pytest.raises(InvalidNameError, match=r"^invalid table in a file name: .* of 1-150 characters$"):
        repo.begin_import(f"D_{'T' * 151}", 1000)
    assert repo.disk_usage() == 0 and repo.over_limits() == ""


def test_module_exports() -> None:
    assert set(names.__all__) >= {"validate_name", "is_valid_name", "show", "MAX_DATABASE_LEN", "MAX_TABLE_LEN",
                                  "MAX_COLUMN_LEN"}
