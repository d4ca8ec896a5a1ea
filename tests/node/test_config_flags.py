"""`ingestor serve`'s flags are declared once, on NodeConfig's fields: the parser, the environment
and the components' configurations all come from those declarations."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from node import config
from node.upload.batcher import BatchPolicy
from node.wal.repository import WalConfig
from node.wal.segment import FsyncPolicy


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ingestor serve")
    config.add_serve_flags(p)
    return p


def test_every_field_is_a_flag_and_every_flag_a_field() -> None:
    """Each option is a field, one of its aliases (adx-mon's names), a switch that sets a field, or
    one of adx-mon's flags that mean nothing here; and each of those is an option."""
    options = {o[2:].replace("-", "_") for a in parser()._actions for o in a.option_strings if o.startswith("--")}
    fields = {f.name for f in dataclasses.fields(config.NodeConfig)}
    specs = [f.metadata["flag"] for f in dataclasses.fields(config.NodeConfig)]
    aliases = {a.replace("-", "_") for s in specs for a in s.aliases}
    switches = {s.switch.name.replace("-", "_") for s in specs if s.switch is not None}
    adxmon_only = {x.name.replace("-", "_") for x in config.ADXMON_ONLY}
    assert options - {"help"} == fields | aliases | switches | adxmon_only
    assert not fields & (aliases | switches | adxmon_only) and not aliases & adxmon_only


def test_an_alias_is_one_option_with_its_field_and_one_variable() -> None:
    """`--hostname` is `--node-name`'s own option (one line of help), and INGESTOR_HOSTNAME its
    variable; two names of one flag in the environment that disagree are a usage error."""
    action = next(a for a in parser()._actions if "--node-name" in a.option_strings)
    assert action.option_strings == ["--node-name", "--hostname"] and action.dest == "node_name"
    assert config.parse(["--storage-dir", "/x"], env={"INGESTOR_HOSTNAME": "h-1"}).node_name == "h-1"
    assert config.parse(["--storage-dir", "/x", "--node-name", "n"], env={"INGESTOR_HOSTNAME": "h-1"}).node_name == "n"
    same = {"INGESTOR_HOSTNAME": "h-1", "INGESTOR_NODE_NAME": "h-1"}
    assert config.parse(["--storage-dir", "/x"], env=same).node_name == "h-1"
    with pytest.raises(SystemExit):
        config.parse(["--storage-dir", "/x"], env={**same, "INGESTOR_NODE_NAME": "other"})


def test_components_defaults_are_the_nodes_defaults(tmp_path: Path) -> None:
    c = config.parse(["--storage-dir", str(tmp_path)], env={})
    wal, batching = WalConfig(directory=tmp_path), BatchPolicy()
    assert dataclasses.replace(c.wal(3), directory=tmp_path, node_name=wal.node_name, worker=0,
                               min_free_disk=0) == wal
    assert dataclasses.replace(c.batching(), max_wait=batching.max_wait) == batching
    assert c.wal(3).worker == 3 and c.wal(3).directory == tmp_path / "wal"
    uploads = c.uploads_config()
    assert (uploads.quarantine_dir, uploads.deliveries_dir) == (tmp_path / "quarantine", tmp_path / "deliveries")
    help_text = parser().format_help()
    assert "close a segment at this size (default 1GiB)" in " ".join(help_text.split())


def test_table_names_take_150_characters_and_databases_64(tmp_path: Path) -> None:
    base = ["--storage-dir", str(tmp_path)]
    assert config.parse([*base, "--default-logs-table", "T" * 150], env={}).default_logs_table == "T" * 150
    assert config.parse([*base, "--default-traces-table", "T" * 150], env={}).default_traces_table == "T" * 150
    assert config.parse([*base, "--default-logs-database", "D" * 64], env={}).default_logs_database == "D" * 64
    for flag, value in (("--default-logs-table", "T" * 151), ("--default-logs-database", "D" * 65),
                        ("--default-metrics-database", "a__b"), ("--default-traces-table", "../x")):
        with pytest.raises(SystemExit):
            config.parse([*base, flag, value], env={})


def test_the_environment_gives_every_kind_of_flag(tmp_path: Path) -> None:
    env = {"INGESTOR_STORAGE_DIR": str(tmp_path), "INGESTOR_ADX_INGEST_BY_TAGS": "true",
           "INGESTOR_KUBERNETES_PEERS": "false", "INGESTOR_WAL_FSYNC": "always", "INGESTOR_MAX_SEGMENT_AGE": "1m",
           "INGESTOR_PEERS": "a=h:1, b=h:2", "INGESTOR_LIFT_LABELS": "pod,ns"}
    c = config.parse([], env=env)
    assert (c.storage_dir, c.adx_ingest_by_tags, c.kubernetes_peers, c.wal_fsync, c.max_segment_age) == (
        tmp_path, True, False, FsyncPolicy.ALWAYS, 60.0)
    assert (c.peers, c.lift_labels) == (("a=h:1", "b=h:2"), ("pod", "ns"))
    assert config.parse(["--peers", "c=h:3"], env=env).peers == ("c=h:3",)  # the command line replaces the list
    for key, bad in (("INGESTOR_ADX_INGEST_BY_TAGS", "maybe"), ("INGESTOR_WAL_FSYNC", "sometimes")):
        with pytest.raises(SystemExit):
            config.parse([], env={**env, key: bad})


def test_the_peer_token_stays_out_of_the_configurations_repr(tmp_path: Path) -> None:
    c = config.parse(["--storage-dir", str(tmp_path), "--peer-token", "s3cret"], env={})
    assert c.peer_token == "s3cret" and "s3cret" not in repr(c)


def test_an_empty_variable_is_no_variable(tmp_path: Path) -> None:
    """`INGESTOR_X=$UNSET` keeps the default, for `serve` and for every reader of the flags alike
    (env_defaults): an empty storage directory is not the current directory."""
    c = config.parse(["--storage-dir", str(tmp_path)],
                     env={"INGESTOR_MAX_SEGMENT_AGE": " ", "INGESTOR_DEFAULT_LOGS_TABLE": "", "INGESTOR_PEERS": ""})
    d = config.parse(["--storage-dir", str(tmp_path)], env={})
    assert (c.max_segment_age, c.default_logs_table, c.peers) == (d.max_segment_age, d.default_logs_table, d.peers)


def test_drop_and_add_flags_reach_the_metrics_converter(tmp_path: Path) -> None:
    """adx-mon's --drop-metrics, --drop-labels and --add-labels are fields like any other (flag and
    variable), and `converters_of` hands them to the metrics converter, whose schema has the column."""
    from node.server import converters_of

    c = config.parse(["--storage-dir", str(tmp_path), "--drop-metrics", "^go_", "--add-labels", "cluster=prod"],
                     env={"INGESTOR_DROP_LABELS": "^up$=instance"})
    assert (c.drop_metrics, c.drop_labels, c.add_labels) == (("^go_",), ("^up$=instance",), ("cluster=prod",))
    metrics = converters_of(c).metrics
    assert (metrics.cfg.drop_metrics, metrics.cfg.drop_labels, metrics.cfg.add_labels) == (
        c.drop_metrics, c.drop_labels, c.add_labels)
    assert metrics.schema[4:] == (("cluster", "string"),)
    assert config.NodeConfig(storage_dir=tmp_path).drop_metrics == ()
