"""A full volume, or a fatal signal, must not stop a node for minutes.

Found by the chaos suite (a node that went quiet with 310 segments; CI, 2026-11-30): with two
receivers, prometheus_client keeps every metric value in a sparse memory-mapped file, then in the
storage directory. On a full volume the first write to a new page of it is a SIGBUS, and chdb
(loaded by the local sink) handles SIGBUS by sleeping up to 300 s with the event loop held before
the process dies. Now the files live in /dev/shm, their pages are allocated before they are
written (no room: the values move to memory, with one ERROR line), and a fatal signal ends the
process at once with its Python stacks written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from node import metrics_files
from tests.harness import ROOT, NodeProcess, fill, scrape, tmpfs
from tests.node.test_grpc import gauge_request

WRITE_KEYS = """
import sys
from prometheus_client import mmap_dict
{install}
d = mmap_dict.MmapedDict(sys.argv[1]) if not {ours} else metrics_files.allocated_dict()(sys.argv[1])
open(sys.argv[2], "w").close()  # the file exists (sparse): the test fills the volume now
while not __import__("os").path.exists(sys.argv[3]):
    __import__("time").sleep(0.01)
for i in range(5000):  # about 500 KB of entries: many pages never written before
    d.write_value(f"key-{{i}}", float(i), 0.0)
assert [v for k, v, t in d.read_all_values()][-1] == 4999.0
print("done")
"""


def _write_keys_on_a_full_volume(tmp_path: Path, ours: bool) -> subprocess.CompletedProcess[str]:
    with tmpfs(tmp_path / "vol", "2m") as vol:
        install = "from node import metrics_files" if ours else ""
        script = WRITE_KEYS.format(install=install, ours=ours)
        opened, filled = tmp_path / "opened", tmp_path / "filled"
        proc = subprocess.Popen([sys.executable, "-c", script, str(vol / "counter_1.db"), str(opened), str(filled)],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        fill(vol)
        filled.touch()
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_stock_metric_file_is_a_sigbus_on_a_full_volume(tmp_path: Path) -> None:
    """What the node ran on before: proves the volume in the next test is full enough to fault."""
    done = _write_keys_on_a_full_volume(tmp_path, ours=False)
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr[-2000:])


def test_our_metric_file_moves_to_memory_on_a_full_volume(tmp_path: Path) -> None:
    done = _write_keys_on_a_full_volume(tmp_path, ours=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done"
    assert "are no longer written to" in done.stderr and "No space left on device" in done.stderr


def test_a_dict_moved_to_memory_keeps_its_values_and_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cls = metrics_files.allocated_dict()
    d = cls(str(tmp_path / "counter_2.db"))
    for i in range(100):
        d.write_value(f"before-{i}", float(i), 1.0)

    def no_room(fd: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics_files, "_allocate", no_room)
    with caplog.at_level(logging.ERROR, logger="node.metrics_files"):
        for i in range(3000):  # past the file's 64 KiB: it would grow
            d.write_value(f"after-{i}", float(i), 2.0)
        d.write_value("before-7", 70.0, 3.0)
    values = {k: v for k, v, _ in d.read_all_values()}
    d.close()
    assert values["before-7"] == 70.0 and values["before-99"] == 99.0 and values["after-2999"] == 2999.0
    assert len(values) == 3100
    assert len([r for r in caplog.records if "are no longer written to" in r.getMessage()]) == 1
    # what the file holds stops where it moved: the entries before, none after
    on_disk = dict((k, v) for k, v, _, _ in cls.read_all_values_from_file(str(tmp_path / "counter_2.db")))
    assert on_disk["before-99"] == 99.0 and "after-2999" not in on_disk


def test_the_metric_files_are_kept_off_the_storage_volume(tmp_path: Path) -> None:
    assert metrics_files.directory(tmp_path / "a").parent == metrics_files.SHM
    assert metrics_files.directory(tmp_path / "a") != metrics_files.directory(tmp_path / "b")
    assert metrics_files.directory(tmp_path / "a", shm=tmp_path / "none") == tmp_path / "a" / "metrics"


FAULT = """
import os, signal, sys, time
import chdb  # installs its fatal-signal handlers
from node import debug
if sys.argv[1] == "ours":
    debug.default_fatal_signals()
os.kill(os.getpid(), signal.SIGBUS)
time.sleep(60)
"""


@pytest.mark.parametrize("ours", [True, False])
def test_a_fatal_signal_after_chdb_loaded_ends_the_process_at_once(ours: bool) -> None:
    pytest.importorskip("chdb")
    proc = subprocess.Popen([sys.executable, "-c", FAULT, "ours" if ours else "chdb"], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=15)
        ended = True
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        ended = False
    if ours:
        assert ended and proc.returncode == -signal.SIGBUS
        assert "Fatal Python error: Bus error" in err and "line 7 in <module>" in err
    else:  # chdb's own handler: the process lingers (up to 300 s) with the faulting thread held
        assert not ended


def test_a_node_that_faults_dies_at_once_and_its_restart_delivers_every_row(tmp_path: Path) -> None:
    """The node of the chaos run: chdb loaded by the local sink, a SIGBUS in the supervisor. It
    used to linger 300 s, not serving; now it exits at once, and a restart delivers every row."""
    node = NodeProcess(tmp_path / "data", "--receivers", "2", "--max-segment-age", "1s", "--upload-interval",
                       "0.5s").start(timeout=60)
    names = [f"fault_{k}" for k in range(10)]
    with grpc.insecure_channel(node.grpc_addr) as ch:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
        for name in names:
            stub.Export(gauge_request(name, points=5), timeout=10)
    deadline = time.monotonic() + 30
    while "uploaded" not in node.log() and time.monotonic() < deadline:  # the local sink has loaded chdb
        time.sleep(0.2)
    assert node.proc is not None
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGBUS)
    # it dies of the signal, re-raised once the stacks are written; or of a SIGSEGV inside that
    # dump: faulthandler reads the other threads' frames while they run, which can fault (seen once
    # in a fresh clone's suite: the Bus error's stacks half written, then a Segmentation fault)
    assert node.proc.wait(30) in (-signal.SIGBUS, -signal.SIGSEGV)
    assert time.monotonic() - t0 < 10
    assert "Fatal Python error: Bus error" in node.log()
    node.start(timeout=60)
    try:
        counts = _wait_stored(node, names, 60)
        assert all(counts.get(_table(n), 0) == 5 for n in names), counts
    finally:
        node.stop()


@pytest.mark.slow
def test_two_receivers_on_a_full_volume_keep_serving_and_deliver_every_row_after(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "vol", "400m") as vol:
        node = NodeProcess(vol / "data", "--receivers", "2", "--max-segment-age", "1s", "--upload-interval", "0.5s",
                           "--shutdown-grace", "10s")
        node.log_path = tmp_path / "node.log"  # off the volume: kept after it is unmounted
        node.start(timeout=60)
        try:
            assert not (vol / "data" / "metrics").exists()
            acked: list[str] = []
            codes: list[str] = []
            with grpc.insecure_channel(node.grpc_addr) as ch:
                stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)

                def send(name: str) -> None:
                    try:
                        stub.Export(gauge_request(name, points=5), timeout=10)
                        acked.append(name)
                    except grpc.RpcError as e:
                        codes.append(e.code().name)

                for k in range(20):
                    send(f"before_full_{k}")
                filler = fill(vol, leave=64 << 10)
                try:
                    for k in range(200):  # refused: each a new table, each answered
                        send(f"while_full_{k}")
                    t0 = time.monotonic()
                    with urllib.request.urlopen(node.http_url + "/healthz", timeout=5) as r:
                        assert r.status == 200
                    assert time.monotonic() - t0 < 2
                finally:
                    filler.unlink()
                assert set(codes) == {"RESOURCE_EXHAUSTED"}, codes
                for k in range(20):
                    send(f"after_full_{k}")
            assert len(acked) >= 40
            counts = _wait_stored(node, acked, 90)  # every acknowledged table's rows reach the local store
            missing = [n for n in acked if counts.get(_table(n), 0) < 5]
            assert not missing, (missing, counts)
            deadline, in_a_row = time.monotonic() + 30, 0  # each receiver answers /readyz for itself
            while in_a_row < 6 and time.monotonic() < deadline:
                in_a_row = in_a_row + 1 if node.ready() else 0
                time.sleep(0.2)
            assert in_a_row >= 6, node.not_ready
            assert scrape(node.http_url + "/metrics")["ingestor_ready"] == 1.0
        finally:
            node.stop()


def _table(metric: str) -> str:
    return "".join(part.capitalize() for part in metric.split("_"))


def _wait_stored(node: NodeProcess, names: list[str], timeout: float) -> dict[str, int]:
    """Rows per table in the local store, once each of `names` has its 5 (or at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _table_counts(node)
        if all(counts.get(_table(n), 0) >= 5 for n in names) or time.monotonic() > deadline:
            return counts
        time.sleep(1)


def _table_counts(node: NodeProcess) -> dict[str, int]:
    sql = "SELECT _table, count() FROM merge('Metrics', '.') GROUP BY _table"
    r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(node.storage_dir),
                        "--format", "json", sql], capture_output=True, text=True, timeout=120, cwd=ROOT)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return {row["_table"]: int(row["count()"]) for row in rows}


def test_a_full_disk_does_not_stop_the_tick_that_closes_segments(tmp_path: Path) -> None:
    """The node of the chaos run with the ClickHouse sink (seed 3822227962): the supervisor's tick
    raised ENOSPC writing cluster.json on the full disk and was never run again, so its active
    segments (310: one per table) never closed, and their rows waited for a restart."""
    with tmpfs(tmp_path / "vol", "400m") as vol:
        node = NodeProcess(vol / "data", "--receivers", "2", "--max-segment-age", "1s", "--upload-interval", "0.5s",
                           "--shutdown-grace", "10s")
        node.args += ["--peers", f"{node.name}={node.grpc_addr}", "--peer-token", "t"]  # cluster.json every tick
        node.log_path = tmp_path / "node.log"
        node.start(timeout=60)
        try:
            filler = fill(vol)
            time.sleep(3)  # ticks meet the full disk
            filler.unlink()
            names = [f"after_tick_{k}" for k in range(16)]
            for name in names:  # a connection each: both receivers take some
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request(name, points=5), timeout=10)
            counts = _wait_stored(node, names, 30)
            assert all(counts.get(_table(n), 0) == 5 for n in names), (counts, node.log()[-3000:])
        finally:
            node.stop()
