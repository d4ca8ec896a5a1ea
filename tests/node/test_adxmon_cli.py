"""adx-mon's `ingestor` command line runs this node: flags without a sub-command are `serve`'s,
every flag of adx-mon's cmd/ingestor is accepted with its meaning here or with one WARNING that
says it has none, values are read as urfave/cli reads adx-mon's, and the backend comes from the
endpoints when no --storage-backend names it (docs/adxmon-flags.md).

The command line tests run the real `ingestor` console script in a subprocess, as a pod would."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cluster.health import PeerHealth
from cluster.membership import Peer, StaticMembership
from cluster.view import ClusterView
from node import cli, serve_cli
from node import config as node_config
from node.metrics import NodeMetrics
from node.transfer.router import Router, TransferConfig
from node.wal.repository import Repository, WalConfig
from node.wal.segment import FsyncPolicy
from tests.cluster.tls import make_certs
from tests.harness import ROOT, free_port
from tests.node.test_cli_mistakes import ingestor
from tests.upload.test_upload_log import FakeClient, _write

INGESTOR = Path(sys.executable).with_name("ingestor")
"""The console script a pod runs (the venv's, as `pip install` made it)."""

ADXMON_MAIN = "/work/.mirror/Azure+adx-mon/repo"
KUSTO = "https://adxmon-test.eastus.kusto.invalid"
"""An ADX cluster URL that never resolves: the ADX sink warns that it cannot reach it and starts."""

WARNING = re.compile(r"^\S+ \S+ WARNING node\.config: (.*)$", re.MULTILINE)
NO_EFFECT = "accepted for adx-mon compatibility, has no effect here: "


@dataclass(frozen=True)
class Case:
    """One flag of adx-mon's ingestor as a manifest gives it, and what it does here: a field and
    its value, or a WARNING (`field` None)."""

    flag: str
    value: str | None
    """None: a boolean given bare (`--insecure-skip-verify`)."""
    field: str | None = None
    expected: Any = None
    extra: tuple[str, ...] = ()
    """Flags it needs beside it."""
    warns: str | None = None
    """The start of its WARNING line, when it says one."""

    @property
    def arg(self) -> str:
        return f"--{self.flag}" if self.value is None else f"--{self.flag}={self.value}"


CH = "M=clickhouse://default@clickhouse:9000/observability"
CASES = [
    # cmd/ingestor/main.go at adx-mon's HEAD, in its order
    Case("kubeconfig", "/etc/kubernetes/admin.conf", "kubeconfig", Path("/etc/kubernetes/admin.conf"),
         warns="--kubeconfig: read only by --kubernetes-peers and --drain-on-annotation"),
    Case("namespace", "adx-mon", "namespace", "adx-mon"),
    Case("hostname", "ingestor-0", "node_name", "ingestor-0"),
    Case("region", "eastus", warns=f"--region: {NO_EFFECT}"),
    Case("storage-dir", "/mnt/data", "storage_dir", Path("/mnt/data")),
    Case("storage-backend", "clickhouse", "storage_backend", "clickhouse", extra=(f"--metrics-kusto-endpoints={CH}",)),
    Case("metrics-kusto-endpoints", f"Metrics={KUSTO}", "metrics_kusto_endpoints", (f"Metrics={KUSTO}",)),
    Case("logs-kusto-endpoints", f"Logs={KUSTO}", "logs_kusto_endpoints", (f"Logs={KUSTO}",)),
    Case("cluster-labels", "region=eastus,environment=production", warns=f"--cluster-labels: {NO_EFFECT}"),
    Case("disable-peer-transfer", None, "disable_peer_transfer", True),
    Case("uploads", "5", "uploads", 5),
    Case("max-connections", "500", "max_connections", 500),
    Case("max-segment-size", "67108864", "max_segment_size", 64 << 20),
    Case("max-transfer-size", "10485760", "max_transfer_size", 10 << 20),
    Case("max-disk-usage", "21474836480", "max_disk_usage", 20 << 30),
    Case("max-segment-count", "5000", "max_segment_count", 5000),
    Case("max-transfer-age", "2m", "max_transfer_age", 120.0),
    Case("max-segment-age", "5s", "max_segment_age", 5.0),
    Case("drop-prefix", "Metrics_Noisy,Logs_Debug", "drop_prefix", ("Metrics_Noisy", "Logs_Debug")),
    Case("max-batch-segments", "25", "max_batch_segments", 25),
    Case("enable-wal-fsync", "false", "wal_fsync", FsyncPolicy.NEVER),
    Case("max-transfer-concurrency", "50", "transfers", 50),
    Case("partition-size", "25", warns=f"--partition-size: {NO_EFFECT}"),
    Case("slow-request-threshold", "10s", warns=f"--slow-request-threshold: {NO_EFFECT}"),
    Case("ca-cert", "/etc/certs/tls.crt", "tls_cert", Path("/etc/certs/tls.crt")),
    Case("key", "/etc/certs/tls.key", "tls_key", Path("/etc/certs/tls.key")),
    Case("insecure-skip-verify", None, warns=f"--insecure-skip-verify: {NO_EFFECT}"),
    # removed from adx-mon's ingestor in March 2025, still in older manifests
    Case("add-labels", "cluster=prod", "add_labels", ("cluster=prod",)),
    Case("drop-labels", "^up$=instance", "drop_labels", ("^up$=instance",)),
    Case("drop-metrics", "^go_.*", "drop_metrics", ("^go_.*",)),
    Case("lift-label", "pod", "lift_labels", ("pod",)),
]
HEAD_FLAGS = [c.flag for c in CASES[:27]]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without INGESTOR_* variables, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}, "PYTHONPATH": str(ROOT),
            **extra}


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `ingestor` console script with `args`, in a session of its own that it leaves empty."""
    return ingestor(*args, env=env, timeout=timeout, script=INGESTOR)


def warnings_of(stderr: str) -> list[str]:
    return WARNING.findall(stderr)


def no_effect(flag: str) -> str:
    """The WARNING of one of adx-mon's flags with no effect here, given as `--flag`."""
    return f"--{flag}: {NO_EFFECT}" + next(x.why for x in node_config.ADXMON_ONLY if x.name == flag)


class Node:
    """`ingestor ARGS` (no sub-command) on loopback ports of its own, until stop()."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.http = free_port()
        self.log = tmp_path / "node.log"
        ports = ["--grpc-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{self.http}",
                 "--transfer-addr="]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(INGESTOR), *args, *ports], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=clean_env(), start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def node_of(tmp_path: Path) -> Iterator[Any]:
    started: list[Node] = []

    def start(*args: str) -> Node:
        n = Node(tmp_path, *args)
        started.append(n)
        n.wait_ready()
        return n

    yield start
    for n in started:
        n.stop()


# -- adx-mon's manifests start a node ---------------------------------------------------------------

def manifest_args(storage: Path) -> list[str]:
    """The container args of adx-mon's build/k8s/ingestor.yaml (and of the operator's template),
    with $ADX_URL set and /mnt/data here."""
    return [f"--storage-dir={storage}", "--max-segment-age=5s", "--max-disk-usage=21474836480",
            "--max-transfer-size=10485760", "--max-connections=1000", "--insecure-skip-verify",
            f"--metrics-kusto-endpoints=Metrics={KUSTO}", f"--logs-kusto-endpoints=Logs={KUSTO}"]


def test_adxmons_manifest_command_line_starts_a_node_on_adx(tmp_path: Path, node_of: Any) -> None:
    node = node_of(*manifest_args(tmp_path / "data"))
    log = node.log.read_text()
    assert warnings_of(log) == [no_effect("insecure-skip-verify")]
    assert "ADX sink: the cluster endpoint https://adxmon-test.eastus.kusto.invalid" in log  # adx, from the URLs
    assert node.stop() == 0
    assert (tmp_path / "data" / "wal").is_dir()


@pytest.mark.parametrize("backend", [["--storage-backend", "clickhouse"], []], ids=["given", "inferred"])
def test_adxmons_clickhouse_dev_stack_command_line_starts_a_node_on_clickhouse(tmp_path: Path, node_of: Any,
                                                                                backend: list[str]) -> None:
    """The ingestor's arguments in adx-mon's tools/clickhouse/dev_stack.sh (a ClickHouse host that
    never resolves: the sink warns and the node starts); without --storage-backend, from the DSNs."""
    dsn = "tcp://default:devpass@clickhouse.invalid:9000"
    node = node_of("--storage-dir", str(tmp_path / "data"), *backend,
                   "--metrics-kusto-endpoints", f"observability={dsn}",
                   "--logs-kusto-endpoints", f"observability_logs={dsn}",
                   "--max-segment-size", str(64 * 1024 * 1024), "--max-transfer-size", str(64 * 1024 * 1024))
    log = node.log.read_text()
    assert re.search(r"ClickHouse sink: .*observability.*clickhouse\.invalid", log), log  # the sink of the DSNs
    assert warnings_of(log) == [] and "devpass" not in log
    assert node.stop() == 0


def test_every_adxmon_flag_at_once_starts_a_node_and_each_warns_once(tmp_path: Path, node_of: Any) -> None:
    """With two receiver processes: each flag is warned about once for the node, not once a process."""
    certs = make_certs(tmp_path / "certs")
    values = {"storage-dir": str(tmp_path / "data"), "ca-cert": str(certs.cert), "key": str(certs.key),
              "kubeconfig": str(tmp_path / "kubeconfig")}
    args = [f"--{c.flag}={values[c.flag]}" if c.flag in values else c.arg for c in CASES
            if c.flag != "storage-backend"] + ["--storage-backend=ADX", "--receivers=2"]
    node = node_of(*args)
    warned = warnings_of(node.log.read_text())
    expected = [c.warns for c in CASES if c.warns]
    assert len(warned) == len(expected)
    for start in expected:
        assert sum(w.startswith(start) for w in warned) == 1, (start, warned)
    assert node.stop() == 0


# -- each flag, alone ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.flag)
def test_each_adxmon_flag_sets_its_field_or_says_it_has_no_effect(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the process, through the same steps as `ingestor` (the parser, the environment, the
    checks before serve): the field it sets, or its one WARNING."""
    for key in [k for k in os.environ if k.startswith("INGESTOR_")]:
        monkeypatch.delenv(key)
    base = [] if case.flag == "storage-dir" else ["--storage-dir", "/x"]
    argv = cli.serve_by_default([*base, case.arg, *case.extra], {})
    args = cli.build_parser().parse_args(argv)
    merged = serve_cli.with_environment(args, args.serve_parser)
    config = node_config.from_args(merged)
    notes = node_config.warnings(args, merged, {})
    if case.field is not None:
        assert getattr(config, case.field) == case.expected
        assert getattr(config, case.field) != getattr(node_config.parse(["--storage-dir", "/x"], env={}), case.field)
    assert [n for n in notes if not n.startswith(case.warns or "\0")] == []
    assert len(notes) == (1 if case.warns else 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.flag)
def test_the_ingestor_command_takes_each_adxmon_flag(case: Case, tmp_path: Path) -> None:
    """`ingestor --storage-dir FILE --FLAG=VALUE`: parsed and checked (a WARNING for the flags with no
    effect, exactly once), up to the check of the storage directory, which is a file here so that
    no node starts."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    base = [] if case.flag == "storage-dir" else [f"--storage-dir={not_a_dir}"]
    arg = f"--storage-dir={not_a_dir}" if case.flag == "storage-dir" else case.arg
    r = run(*base, arg, *case.extra)
    assert "Traceback" not in r.stderr and "error:" not in r.stderr, r.stderr
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
        f"ingestor serve: --storage-dir {not_a_dir} is not a directory; pass a directory (it is created when missing)")
    warned = warnings_of(r.stderr)
    assert len(warned) == (1 if case.warns else 0) and all(w.startswith(str(case.warns)) for w in warned), r.stderr


def test_the_list_is_adxmons(tmp_path: Path) -> None:
    """The cases above are every flag of adx-mon's cmd/ingestor/main.go (when its mirror is here)."""
    try:
        main = subprocess.run(["git", "-C", ADXMON_MAIN, "show", "HEAD:cmd/ingestor/main.go"], capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("adx-mon's repository is not here")
    assert re.findall(r'cli\.\w+Flag\{Name: "([^"]+)"', main) == HEAD_FLAGS


# -- how urfave/cli reads values -------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "field", "expected"), [
    (["--insecure-skip-verify=false", "--disable-peer-transfer=false"], "disable_peer_transfer", False),
    (["--disable-peer-transfer=T"], "disable_peer_transfer", True),
    (["--disable-peer-transfer", "true"], "disable_peer_transfer", True),
    (["--enable-wal-fsync"], "wal_fsync", FsyncPolicy.ON_ROTATE),
    (["--enable-wal-fsync=0"], "wal_fsync", FsyncPolicy.NEVER),
    (["--max-segment-size=0x4000000"], "max_segment_size", 64 << 20),
    (["--max-segment-count=1_000"], "max_segment_count", 1000),
    (["--max-segment-size", "64MiB"], "max_segment_size", 64 << 20),
    (["--max-segment-age=1m30s"], "max_segment_age", 90.0),
    (["--max-transfer-age=1.5h"], "max_transfer_age", 5400.0),
    (["--max-transfer-age=250ms"], "max_transfer_age", 0.25),
    (["--max-transfer-age=500000us"], "max_transfer_age", 0.5),
    (["--drop-prefix=A_B", "--drop-prefix", "C_D, E_F"], "drop_prefix", ("A_B", "C_D", "E_F")),
    ([f"--metrics-kusto-endpoints=A={KUSTO},B={KUSTO}"], "metrics_kusto_endpoints", (f"A={KUSTO}", f"B={KUSTO}")),
    (["--metrics-kusto-endpoints=M=clickhouse://u@h1:9000,h2:9000/db"], "metrics_kusto_endpoints",
     ("M=clickhouse://u@h1:9000,h2:9000/db",)),  # a DSN's several hosts stay one endpoint
    (["--lift-label=pod", "--lift-labels", "namespace,container"], "lift_labels", ("pod", "namespace", "container")),
    (["--lift-label=pod=PodName"], "lift_labels", ("pod",)),
    ([f"--metrics-kusto-endpoints=M={KUSTO}", "--storage-backend=ADX"], "storage_backend", "adx"),
    (["--drop-metrics=^go_,^process_", "--drop-metrics", "_bucket$"], "drop_metrics", ("^go_", "^process_",
                                                                                       "_bucket$")),
    (["--drop-labels=^node_=^(instance|pod)$, .*=^id$"], "drop_labels", ("^node_=^(instance|pod)$", ".*=^id$")),
    (["--add-labels=cluster=prod,region=", "-add-labels", "zone=z1"], "add_labels",
     ("cluster=prod", "region=", "zone=z1")),
    (["-hostname=ingestor-1"], "node_name", "ingestor-1"),
    (["-max-segment-age", "7s"], "max_segment_age", 7.0),
])
def test_values_are_read_as_urfave_cli_reads_them(args: list[str], field: str, expected: object) -> None:
    """Booleans as `--flag=false` (or T, 0...), Go's integers and durations, repeated flags and comma
    lists, one dash as Go's flag package allows."""
    parser = cli.build_parser()
    argv = cli.serve_by_default(["--storage-dir=/x", *args], {})
    options = {o for o in cli._serve_parser(parser)._option_string_actions if o.startswith("--")}
    ns = parser.parse_args(["serve", *cli.long_dashes(argv[1:], options)])
    assert getattr(node_config.from_args(ns), field) == expected


@pytest.mark.parametrize(("env", "field", "expected"), [
    ({"INGESTOR_STORAGE_BACKEND": "ClickHouse", "INGESTOR_METRICS_KUSTO_ENDPOINTS": CH}, "storage_backend",
     "clickhouse"),
    ({"INGESTOR_HOSTNAME": "ingestor-2"}, "node_name", "ingestor-2"),
    ({"INGESTOR_MAX_TRANSFER_CONCURRENCY": "50"}, "transfers", 50),
    ({"INGESTOR_CA_CERT": "/c.pem", "INGESTOR_KEY": "/c.key"}, "tls_key", Path("/c.key")),
    ({"INGESTOR_ENABLE_WAL_FSYNC": "false"}, "wal_fsync", FsyncPolicy.NEVER),
    ({"INGESTOR_DISABLE_PEER_TRANSFER": "true"}, "disable_peer_transfer", True),
    ({"INGESTOR_LIFT_LABEL": "pod", "INGESTOR_LIFT_LABELS": "ns"}, "lift_labels", ("ns", "pod")),
    ({"INGESTOR_DROP_METRICS": "^go_,^process_"}, "drop_metrics", ("^go_", "^process_")),
    ({"INGESTOR_DROP_LABELS": "up=instance"}, "drop_labels", ("up=instance",)),
    ({"INGESTOR_ADD_LABELS": "cluster=prod"}, "add_labels", ("cluster=prod",)),
])
def test_the_environment_of_adxmons_flags(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(node_config.parse(["--storage-dir", "/x"], env=env), field) == expected


def test_a_warned_flag_from_the_environment_is_named_as_the_variable() -> None:
    args = cli.build_parser().parse_args(["serve", "--storage-dir", "/x"])
    env = {"INGESTOR_REGION": "eastus", "INGESTOR_PARTITION_SIZE": "25"}
    assert node_config.warnings(args, args, env) == [no_effect("region").replace("--region", "INGESTOR_REGION"),
                                                      no_effect("partition-size").replace("--partition-size",
                                                                                          "INGESTOR_PARTITION_SIZE")]


# -- the backend, from the endpoints ---------------------------------------------------------------------

@pytest.mark.parametrize(("endpoints", "backend"), [
    ([], "local"),
    ([f"Metrics={KUSTO}", "Logs=https://help.kusto.windows.net"], "adx"),
    (["Metrics=https://ingest-c.westeurope.kusto.fabric.microsoft.com"], "adx"),
    (["Metrics=https://c.eastus.kustomfa.windows.net"], "adx"),
    (["Metrics=clickhouse://default:pw@ch:9000/observability"], "clickhouse"),
    (["Metrics=tcp://default:pw@ch:9000", "Logs=native://ch:9440?secure=true"], "clickhouse"),
    (["Metrics=http://ch:8123/db", "Logs=https://user:pw@ch.example.com:8443"], "clickhouse"),
    (["Metrics=clickhouse://a:9000,b:9000/db"], "clickhouse"),
])
def test_the_backend_is_inferred_from_the_endpoints(endpoints: list[str], backend: str) -> None:
    assert node_config.storage_backend_of(None, [("--metrics-kusto-endpoints", e) for e in endpoints]) == backend


@pytest.mark.parametrize(("args", "line"), [
    (["--storage-backend=local", "--metrics-kusto-endpoints=M=clickhouse://default:s3cret@ch:9000/db"],
     "--storage-backend local uploads to no endpoint, but --metrics-kusto-endpoints M=clickhouse://ch:9000/... is "
     "given: drop the endpoints, or pass --storage-backend adx or clickhouse"),
    ([f"--metrics-kusto-endpoints=Metrics={KUSTO}", "--logs-kusto-endpoints=Logs=tcp://ch:9000"],
     f"--metrics-kusto-endpoints Metrics={KUSTO} is an ADX endpoint and --logs-kusto-endpoints Logs=tcp://ch:9000 a "
     "ClickHouse one: a node uploads to one backend; pass the endpoints of one"),
    (["--storage-backend", "clickhouse", f"--traces-kusto-endpoints=Traces={KUSTO}"],
     f"--storage-backend clickhouse, but --traces-kusto-endpoints Traces={KUSTO} is an ADX endpoint: give a ClickHouse "
     "one, or pass --storage-backend adx"),
    (["--storage-backend=adx", "--metrics-kusto-endpoints=M=http://ch:8123"],
     "--storage-backend adx, but --metrics-kusto-endpoints M=http://ch:8123 is a ClickHouse endpoint: give an ADX one, "
     "or pass --storage-backend clickhouse"),
    (["--metrics-kusto-endpoints=M=https://kusto.example.com"],
     "cannot tell the backend of --metrics-kusto-endpoints M=https://kusto.example.com from its scheme or host: pass "
     "--storage-backend adx or clickhouse"),
    (["--wal-fsync=always", "--enable-wal-fsync"],
     "--enable-wal-fsync=true is --wal-fsync on-rotate, but --wal-fsync always is given too: pass one of them"),
])
def test_endpoints_never_ignored_and_contradictions_are_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    """Said before the node starts (no WAL), one line, exit 2; a password in a DSN is not shown."""
    r = run(f"--storage-dir={tmp_path / 'd'}", *args, timeout=30)
    assert (r.returncode, r.stderr) == (2, f"ingestor serve: error: {line} (see ingestor serve --help)\n")
    assert not (tmp_path / "d" / "wal").exists()


def test_an_unknown_endpoint_with_its_backend_given_is_the_sinks_to_judge() -> None:
    assert node_config.storage_backend_of("adx", [("--metrics-kusto-endpoints", "M=http://kustainer:8080")]) == "adx"


# -- the command itself ----------------------------------------------------------------------------------

def test_help_version_and_sub_commands_still_work(tmp_path: Path) -> None:
    top = run("--help")
    assert top.returncode == 0 and "Flags without a COMMAND run serve" in " ".join(top.stdout.split())
    assert all(re.search(rf"^    {c} ", top.stdout, re.MULTILINE) for c in ("serve", "status", "query", "wal"))
    for flag in ("--version", "-v"):
        r = run(flag)
        assert r.returncode == 0 and r.stdout.startswith("ingestor ")
    serve_help = run("--storage-dir=/x", "--help")  # serve's help, as adx-mon's flags ask for it
    assert serve_help.returncode == 0 and serve_help.stdout.startswith("usage: ingestor serve")
    assert "--hostname NODE_NAME" in serve_help.stdout and "--region REGION" in serve_help.stdout
    wal = run("wal", "ls", str(tmp_path / "missing"))
    assert wal.returncode == 1 and wal.stderr.startswith(f"ingestor wal ls: {tmp_path / 'missing'}: ")
    bogus = run("--bogus")
    assert (bogus.returncode, bogus.stderr) == (
        2, "ingestor serve: error: unrecognized arguments: --bogus (see ingestor serve --help)\n")


def test_ingestor_alone_serves_where_the_environment_says(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = run(env={"INGESTOR_STORAGE_DIR": str(not_a_dir), "INGESTOR_REGION": "eastus"})
    assert r.returncode == 1 and r.stderr.endswith(f"ingestor serve: --storage-dir {not_a_dir} is not a directory; "
                                                   "pass a directory (it is created when missing)\n")
    assert [w.split(":")[0] for w in warnings_of(r.stderr)] == ["INGESTOR_REGION"]
    alone = run()
    assert alone.returncode == 2 and "the following arguments are required: COMMAND" in alone.stderr


def test_warnings_follow_the_log_format_and_level(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    as_json = run(f"--storage-dir={not_a_dir}", "--region=eastus", "--log-format=json")
    first = as_json.stderr.splitlines()[0]
    assert first.startswith("{") and '"level": "WARNING"' in first and "--region: accepted" in first
    quiet = run(f"--storage-dir={not_a_dir}", "--region=eastus", "--log-level=error")
    assert quiet.stderr.count("\n") == 1 and "--region" not in quiet.stderr


def test_make_run_stays_local(tmp_path: Path) -> None:
    c = node_config.parse(["--storage-dir", str(tmp_path), "--node-name", "local-0", "--receivers", "0",
                           "--max-segment-age", "10s"], env={})
    assert c.storage_backend == "local" and c.endpoints == ()


# -- --disable-peer-transfer -----------------------------------------------------------------------------

def test_disable_peer_transfer_uploads_everything_here(tmp_path: Path) -> None:
    """With a peer that owns some of the tables, the router plans transfers of them; with
    --disable-peer-transfer it plans none and leaves every segment to upload here."""
    view = ClusterView("me", "127.0.0.1:1", StaticMembership([Peer("me", "127.0.0.1:1"), Peer("n1", "127.0.0.1:2")]),
                       PeerHealth(60))
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    _write(wal, [f"T{i}" for i in range(12)])
    segments = wal.closed_segments()
    metrics = NodeMetrics(CollectorRegistry())
    on = node_config.parse(["--storage-dir", str(tmp_path)], env={}).transfers_config()
    off = node_config.parse(["--storage-dir", str(tmp_path), "--disable-peer-transfer"], env={}).transfers_config()
    assert (on.disabled, off.disabled) == (False, True)
    transfers, rest = Router(view, FakeClient(), on, metrics).plan(segments, set())  # type: ignore[arg-type]
    assert transfers and len(rest) < len(segments)
    router = Router(view, FakeClient(), off, metrics)  # type: ignore[arg-type]
    transfers, rest = router.plan(segments, set())
    assert (transfers, sorted(s.path for s in rest), router.queued) == ([], sorted(s.path for s in segments), 0)
    assert TransferConfig().disabled is False
    wal.stop()


def test_argparse_namespace_of_a_switch_is_apart_from_its_field() -> None:
    """--enable-wal-fsync has its own destination: --wal-fsync alone keeps its meaning."""
    ns = cli.build_parser().parse_args(["serve", "--storage-dir", "/x", "--wal-fsync", "always"])
    assert isinstance(ns, argparse.Namespace) and ns.switch_wal_fsync is None
    assert node_config.from_args(ns).wal_fsync is FsyncPolicy.ALWAYS


@pytest.mark.parametrize(("args", "line"), [
    (["--drop-labels=up"], "argument --drop-labels: 'up': expected METRIC_REGEX=LABEL_REGEX (one '=')"),
    (["--drop-labels=a=b=c"], "argument --drop-labels: 'a=b=c': expected METRIC_REGEX=LABEL_REGEX (one '=')"),
    (["--drop-metrics=^go_,(x"], "argument --drop-metrics: not a regular expression: '(x': missing ), unterminated "
     "subpattern at position 0"),
    (["--add-labels=cluster"], "argument --add-labels: 'cluster': expected NAME=VALUE (one '=')"),
    (["--add-labels=cluster-name=prod"], "argument --add-labels: 'cluster-name=prod': the column name "
     "'cluster-name' is not 1-1024 characters of [A-Za-z0-9_]"),
    (["--add-labels=value=1"], "--add-labels column 'value' is also another column (in any case): Timestamp, "
     "SeriesId, Labels, Value, value"),
    (["--add-labels=pod=x", "--lift-label=pod"], "--add-labels column 'pod' is also another column (in any case): "
     "Timestamp, SeriesId, Labels, Value, pod, Pod"),
    (["--add-labels=a=1,A=2"], "--add-labels names one column more than once: 'a', 'A'"),
])
def test_bad_drop_and_add_values_are_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    """adx-mon refused these at start too (a regex that does not compile, an item that is not two
    parts around `=`), or would have made a table it cannot ingest into (a column twice)."""
    r = run(f"--storage-dir={tmp_path / 'd'}", *args, timeout=30)
    assert (r.returncode, r.stderr) == (2, f"ingestor serve: error: {line} (see ingestor serve --help)\n")
    assert not (tmp_path / "d" / "wal").exists()


# -- --drop-metrics, --drop-labels and --add-labels in a running node -------------------------------------

def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def query_json(storage: Path, sql: str, wait: float = 90) -> list[dict[str, Any]]:
    """`ingestor query --wait` (the console script, as a person runs it) in JSON lines."""
    import json

    r = run("query", "--storage-dir", str(storage), "--wait", str(wait), "--format", "json", sql, timeout=wait + 60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_a_node_with_adxmons_drop_and_add_flags_stores_what_adxmon_stored(tmp_path: Path, node_of: Any) -> None:
    """Started as adx-mon's manifests start it (no sub-command, adx-mon's flag names), fed by
    remote write and OTLP/HTTP: the dropped metrics make no table and no refusal, the dropped
    labels are in neither Labels nor SeriesId nor their lifted column, and every row has the added
    columns, after Value and before the lifted one, as adx-mon's ingestion mapping had them."""
    import cramjam
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Histogram, HistogramDataPoint, Metric

    from node import query_cli
    from tests.rows.build import metrics_request, remote_write, sid
    from tests.rows.test_otlp_metrics import gauge, point

    storage = tmp_path / "data"
    node = node_of(f"--storage-dir={storage}", "--max-segment-age=1s", "--upload-interval=1s",
                   "--drop-metrics=^go_", "--drop-metrics", "_bucket$", "--drop-labels=^node_=^(instance|pod)$",
                   "--drop-labels=^http_=^http_route$", "--add-labels=cluster=prod,region=eastus", "--lift-label=pod")
    now_ms = int(time.time() * 1000)
    instance = {"instance": "10.0.0.7:9100", "pod": "api-0"}
    rw = remote_write(({"__name__": "go_goroutines", **instance}, [(12.0, now_ms)]),
                      ({"__name__": "node_cpu_seconds_total", "mode": "idle", **instance}, [(1.5, now_ms)]),
                      ({"__name__": "up", **instance}, [(1.0, now_ms)]))
    status, _ = _post(f"http://127.0.0.1:{node.http}/api/v1/write", bytes(cramjam.snappy.compress_raw(
        rw.SerializeToString())), {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"})
    assert status == 204
    now_ns = now_ms * 1_000_000
    hist = HistogramDataPoint(time_unix_nano=now_ns, count=3, sum=1.5, bucket_counts=[1, 2], explicit_bounds=[0.5])
    otlp = metrics_request(gauge("http.active", point(2.0, {"http.route": "/cart", "http.method": "GET"}, t=now_ns)),
                           Metric(name="latency", histogram=Histogram(data_points=[hist])),
                           resource={"service.name": "api", "host.name": "h1"})
    status, body = _post(f"http://127.0.0.1:{node.http}/v1/metrics", otlp.SerializeToString(),
                         {"Content-Type": "application/x-protobuf"})
    assert status == 200 and not ExportMetricsServiceResponse.FromString(body).HasField("partial_success")

    # `ingestor query` finds the node though it was started without `serve`, and reads its flags
    found = query_cli.serving_node(storage)
    assert found is not None and found[0] == node.proc.pid
    assert (found[1].max_segment_age, found[1].drop_metrics) == (1.0, ("^go_", "_bucket$"))
    assert query_cli.timing(storage).node == f"the node serving {storage} (pid {node.proc.pid})"

    expected = ["HttpActive", "LatencyCount", "LatencySum", "NodeCpuSecondsTotal", "TargetInfo", "Up"]
    tables = query_json(storage, "SELECT groupArraySorted(100)(name) AS t FROM system.tables "
                        "WHERE database = 'Metrics' HAVING length(t) >= 6")
    assert tables == [{"t": expected}]
    columns = query_json(storage, "SELECT groupArray(name) AS c FROM (SELECT name FROM system.columns WHERE "
                         "database = 'Metrics' AND table = 'Up' ORDER BY position)")
    assert columns == [{"c": ["Timestamp", "SeriesId", "Labels", "Value", "cluster", "region", "Pod"]}]
    rows = query_json(storage, "SELECT _table AS t, SeriesId, Labels, Value, cluster, region, Pod FROM merge("
                      "'Metrics', '^(NodeCpuSecondsTotal|Up|HttpActive|LatencyCount)$') ORDER BY t")
    cpu = {"__name__": "node_cpu_seconds_total", "mode": "idle"}
    up = {"__name__": "up", **instance}
    http = {"__name__": "http_active", "http_method": "GET", "job": "api"}
    count = {"__name__": "latency_count", "job": "api"}
    assert rows == [
        {"t": "HttpActive", "SeriesId": sid(http), "Labels": '{"http_method":"GET","job":"api"}', "Value": 2,
         "cluster": "prod", "region": "eastus", "Pod": ""},
        {"t": "LatencyCount", "SeriesId": sid(count), "Labels": '{"job":"api"}', "Value": 3, "cluster": "prod",
         "region": "eastus", "Pod": ""},
        {"t": "NodeCpuSecondsTotal", "SeriesId": sid(cpu), "Labels": '{"mode":"idle"}', "Value": 1.5,
         "cluster": "prod", "region": "eastus", "Pod": ""},
        {"t": "Up", "SeriesId": sid(up), "Labels": '{"instance":"10.0.0.7:9100"}', "Value": 1,
         "cluster": "prod", "region": "eastus", "Pod": "api-0"},
    ]
    log = node.log.read_text()
    assert "--drop-metrics '^go_' matches metric 'go_goroutines': its points are not stored" in log
    assert "--drop-metrics '_bucket$' matches metric 'latency_bucket': its points are not stored" in log
    assert warnings_of(log) == [] and "refused" not in log
    assert node.stop() == 0


def test_query_finds_a_node_started_as_adxmons_manifests_start_it(tmp_path: Path) -> None:
    """`ingestor --storage-dir ...` (no sub-command), with Go's one-dash flags, and `ingestor`
    alone configured by its environment, are nodes to `ingestor query`; `ingestor query` and
    `ingestor --help` are not, nor a file named ingestor another program reads."""
    from node import query_cli
    from tests.node.test_quickstart import _fake_process

    proc, work = tmp_path / "proc", tmp_path / "work"
    work.mkdir()
    python, script = "/srv/.venv/bin/python3.11", "/srv/.venv/bin/ingestor"
    _fake_process(proc, 10, [python, script, "query", "--storage-dir", "./a", "SELECT 1"], {}, work)
    _fake_process(proc, 11, [python, script, "--help"], {"INGESTOR_STORAGE_DIR": "./a"}, work)
    _fake_process(proc, 12, ["tail", "-f", "/var/log/ingestor"], {"INGESTOR_STORAGE_DIR": "./a"}, work)
    _fake_process(proc, 13, [python, script, "-storage-dir=./a", "-max-segment-age", "7s"], {}, work)
    _fake_process(proc, 14, [python, script], {"INGESTOR_STORAGE_DIR": "./b", "INGESTOR_MAX_SEGMENT_AGE": "8s"}, work)
    _fake_process(proc, 15, [python, "-m", "node.cli", "--storage-dir", "./c", "--max-segment-age=9s"], {}, work)
    _fake_process(proc, 16, ["/usr/local/bin/ingestor", "--storage-dir", "./d", "--max-segment-age=4s"], {}, work)
    for directory, pid, age in (("a", 13, 7.0), ("b", 14, 8.0), ("c", 15, 9.0), ("d", 16, 4.0)):
        found = query_cli.serving_node(work / directory, proc)
        assert found is not None and (found[0], found[1].max_segment_age) == (pid, age), directory
    assert query_cli.serving_node(work / "e", proc) is None
    assert query_cli._serve_args([python, script, "serve", "--storage-dir", "./a"]) == ["--storage-dir", "./a"]
    assert query_cli._serve_args([python, script]) is None  # no INGESTOR_STORAGE_DIR: the usage error
