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
from tests.node.test_cli_mistakes import session
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
    Case("add-labels", "cluster=prod", warns=f"--add-labels: {NO_EFFECT}"),
    Case("drop-labels", "^up$=instance", warns=f"--drop-labels: {NO_EFFECT}"),
    Case("drop-metrics", "^go_.*", warns=f"--drop-metrics: {NO_EFFECT}"),
    Case("lift-label", "pod", "lift_labels", ("pod",)),
]
HEAD_FLAGS = [c.flag for c in CASES[:27]]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without INGESTOR_* variables, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}, "PYTHONPATH": str(ROOT),
            **extra}


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `ingestor` console script with `args`, in a session of its own that it leaves empty."""
    proc = subprocess.Popen([str(INGESTOR), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=clean_env(**(env or {})), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session(proc.pid), err
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
