"""Names from outside are validated, never cleaned into a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import InvalidNameError
from node.names import MAX_TABLE_LEN, validate_name
from node.wal import format as fmt
from node.wal.names import FlakeIds, host_id, parse_filename, schema_hash, validate_prefix
from node.wal.repository import Repository, WalConfig
from tests.wal.helpers import write_block

HOSTILE = ["../x", "a/b", "..", "/abs", "", "x" * 10240, "a\x00b", "таблица", "a_b", "a.b", "a\\b",
           " a", "a\n", "%2e%2e"]


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
                "Me-trics_Cpu_0123456789abcdef.wal", "Metrics_Cpu_0123456789abcdef.wal.tmp"]:
        with pytest.raises(InvalidNameError):
            parse_filename(bad)


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
