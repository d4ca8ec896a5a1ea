"""Names from outside are validated, never cleaned into a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import InvalidNameError
from node.names import MAX_TABLE_LEN, validate_name
from node.wal import format as fmt
from node.wal.names import (
    FlakeIds,
    SegmentName,
    database_of,
    host_id,
    make_prefix,
    parse_filename,
    parse_prefix,
    schema_hash,
    validate_prefix,
)
from node.wal.repository import Repository, WalConfig
from tests.wal.helpers import write_block

HOSTILE = ["../x", "a/b", "..", "/abs", "", "x" * 10240, "a\x00b", "таблица", "a__b", "_a", "a_", "a.b", "a\\b",
           " a", "a\n", "%2e%2e", "-a", "a--b", "a_/b", "a_.._b"]


@pytest.mark.parametrize("name", HOSTILE, ids=[repr(n[:12]) for n in HOSTILE])
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name, "table", MAX_TABLE_LEN)
    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    with pytest.raises(InvalidNameError):
        write_block(repo, name, "T", fmt.KIND_METRIC, b"x\n", 1)
    with pytest.raises(InvalidNameError):
        write_block(repo, "Db", name, fmt.KIND_METRIC, b"x\n", 1)
    with pytest.raises(InvalidNameError):
        validate_prefix(f"{name}_T")
    assert list((tmp_path / "wal").rglob("*")) == [tmp_path / "wal" / "active"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]


def test_valid_names_and_filenames_round_trip() -> None:
    assert validate_name("ContainerCpu9", "table", MAX_TABLE_LEN) == "ContainerCpu9"
    n = parse_filename("Metrics_Cpu_1a2b_0123456789abcdef.wal")
    assert (n.database, n.table, n.schema, n.segment_id) == ("Metrics", "Cpu", "1a2b", "0123456789abcdef")
    assert n.filename == "Metrics_Cpu_1a2b_0123456789abcdef.wal"
    n2 = parse_filename("Metrics_Cpu_0123456789abcdef.wal")
    assert n2.schema is None and n2.prefix == "Metrics_Cpu"
    for bad in ["../Metrics_Cpu_0123456789abcdef.wal", "Metrics_Cpu_0123.wal", "Metrics_Cpu_x.wal",
                "-Metrics_Cpu_0123456789abcdef.wal", "Me--trics_Cpu_0123456789abcdef.wal",
                "Metrics-_Cpu_0123456789abcdef.wal", "Metrics_Cpu_0123456789abcdef.wal.tmp",
                "Metrics_Cpu_ABC_0123456789abcdef.wal", "Metrics_Cpu_a_b_0123456789abcdef.wal",
                "Me.trics_Cpu_0123456789abcdef.wal", "Metrics_Cp/u_0123456789abcdef.wal",
                "x" * 300 + "_Cpu_0123456789abcdef.wal"]:
        with pytest.raises(InvalidNameError):
            parse_filename(bad)


def test_a_name_with_underscores_is_written_with_dashes_and_read_back() -> None:
    n = SegmentName("observability_logs", "docker_journal", "1a2b", "0123456789abcdef")
    assert n.filename == "observability-logs_docker-journal_1a2b_0123456789abcdef.wal"
    assert n.prefix == "observability-logs_docker-journal_1a2b"
    assert parse_filename(n.filename) == n
    assert parse_prefix(n.prefix) == ("observability_logs", "docker_journal", "1a2b")
    assert database_of(n.prefix) == "observability_logs"
    assert make_prefix("observability_logs", "Logs") == "observability-logs_Logs"
    assert parse_prefix("observability-logs_Logs") == ("observability_logs", "Logs", None)
    # A prefix split on `_` by hand gives file forms: what every reader must not do.
    assert n.prefix.split("_")[0] == "observability-logs" != n.database


def test_a_file_name_has_one_reading() -> None:
    """Each name -> file name -> name round trip is exact, and two different (database, table,
    schema) never share a file name: `_` only ever separates fields."""
    words = ["a", "b", "a_b", "b_a", "a_b_c", "ab", "t"]
    seen: dict[str, tuple[str, str, str | None]] = {}
    for db in words:
        for table in words:
            for schema in (None, "t", "ab"):
                name = SegmentName(db, table, schema, "0123456789abcdef")
                assert name.filename not in seen, (name, seen.get(name.filename))
                seen[name.filename] = (db, table, schema)
                back = parse_filename(name.filename)
                assert (back.database, back.table, back.schema) == (db, table, schema)


def test_an_adx_mon_file_with_underscores_is_read_as_adx_mon_reads_it() -> None:
    """adx-mon's ParseFilename splits on every `_`: 4 fields are database, table, schema, id. Its
    writers strip `_` from names, so `observability_logs_t_<id>.wal` can only mean database
    `observability`, table `logs`, schema `t` -- and that is how it is read here too."""
    n = parse_filename("observability_logs_t_0123456789abcdef.wal")
    assert (n.database, n.table, n.schema) == ("observability", "logs", "t")
    n = parse_filename("observability_logs_0123456789abcdef.wal")
    assert (n.database, n.table, n.schema) == ("observability", "logs", None)
    with pytest.raises(InvalidNameError):  # 5 fields: adx-mon refuses it too
        parse_filename("observability_logs_docker_t_0123456789abcdef.wal")


def test_flake_ids_are_time_ordered_and_unique() -> None:
    ids = FlakeIds(host_id("node-0"))
    seen = [ids.next() for _ in range(20000)]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert all(len(i) == 16 for i in seen)
    import time
    created = parse_filename(f"A_B_{seen[-1]}.wal").created_ms
    assert abs(created - time.time() * 1000) < 60_000
    assert host_id("node-0", 0) != host_id("node-0", 1)


def test_schema_hash_is_base36_of_xxhash64() -> None:
    import xxhash
    schema = (("Timestamp", "datetime"), ("Value", "real"))
    n = xxhash.xxh64_intdigest(b"TimestampdatetimeValuereal")
    assert int(schema_hash(schema), 36) == n
    assert schema_hash(schema) != schema_hash((("Timestamp", "datetime"), ("Value", "long")))


def test_a_transferred_segment_of_a_database_with_underscores_is_imported(tmp_path: Path) -> None:
    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    imp = repo.begin_import(make_prefix("observability_logs", "docker_journal", "abc"), 1000)
    assert (imp.name.database, imp.name.table, imp.name.schema) == ("observability_logs", "docker_journal", "abc")
    assert imp.final.name.startswith("observability-logs_docker-journal_abc_")
    assert repo.disk_usage("observability_logs") == 1000  # reserved under the database's name
