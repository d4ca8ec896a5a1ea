"""A real node's lifecycle: SIGTERM with requests in flight, a second signal, several receiver
processes sharing the ports, and a receiver killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from node.wal.names import host_id, segment_host
from tests.harness import NodeProcess, free_port, scrape
from tests.node.test_grpc import gauge_request

KEEP = ["--min-batch-size", "1TB", "--max-segment-age", "1h"]  # nothing uploaded: rows stay in the WAL


def _sender(addr: str, name: str, acked: list[int], stop: threading.Event, errors: list[str]) -> None:
    with grpc.insecure_channel(addr) as ch:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
        i = 0
        while not stop.is_set():
            try:
                stub.Export(gauge_request(name, points=50, attrs=3, start=i * 50), timeout=10)
                acked.append(i)
            except grpc.RpcError as e:
                errors.append(e.code().name)
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    return
            i += 1


def test_sigterm_with_requests_in_flight_loses_no_acknowledged_row(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--shutdown-grace", "0s").start()
    stop = threading.Event()
    acked: list[list[int]] = [[] for _ in range(4)]
    errors: list[str] = []
    threads = [threading.Thread(target=_sender, args=(node.grpc_addr, f"inflight_{k}", acked[k], stop, errors))
               for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert node.stop(signal.SIGTERM) == 0
    stop.set()
    for t in threads:
        t.join()
    assert sum(len(a) for a in acked) > 20
    assert set(errors) <= {"UNAVAILABLE", "CANCELLED"}
    for k in range(4):
        rows = node.rows("Metrics", f"Inflight{k}")
        assert len(rows) >= len(acked[k]) * 50  # every acknowledged point (and maybe unacknowledged ones)
        assert len(rows) == len(set(rows))
    # closed cleanly: nothing is left active
    assert list((node.storage_dir / "wal" / "active").iterdir()) == []
    assert "node node-0 stopped" in node.log()


def test_second_signal_exits_at_once_and_the_next_start_recovers(tmp_path: Path) -> None:
    # A sink that cannot be reached keeps the drain busy for its whole grace period.
    dead = f"Metrics=clickhouse://u@127.0.0.1:{free_port()}/Metrics"
    node = NodeProcess(tmp_path / "data", *KEEP, "--shutdown-grace", "30s", "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", dead).start()
    with grpc.insecure_channel(node.grpc_addr) as ch:
        metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("twice", points=7), timeout=10)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "draining" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.05)
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 1
    assert time.monotonic() - t0 < 5  # at once, not after the 30 s grace
    assert "second SIGTERM: exiting at once" in node.log()
    again = NodeProcess(tmp_path / "data", *KEEP, "--storage-backend", "clickhouse", "--metrics-kusto-endpoints",
                        dead, "--shutdown-grace", "0s").start()
    try:
        assert len(again.rows("Metrics", "Twice")) == 7
    finally:
        again.stop()


def test_a_drain_that_cannot_finish_still_exits_within_the_grace(tmp_path: Path) -> None:
    # A sink that cannot be reached keeps the drain busy: the node stops uploading early enough
    # that the process is gone within --shutdown-grace (it used to exit after it), its rows on disk.
    dead = f"Metrics=clickhouse://u@127.0.0.1:{free_port()}/Metrics"
    node = NodeProcess(tmp_path / "data", *KEEP, "--shutdown-grace", "6s", "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", dead).start()
    with grpc.insecure_channel(node.grpc_addr) as ch:
        metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("late", points=7), timeout=10)
    assert node.proc is not None
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    took = time.monotonic() - t0
    assert took < 6.0, f"exited {took:.2f}s after SIGTERM, past its 6 s grace"
    assert "grace period over with 1 segments" in node.log()
    assert len(list((node.storage_dir / "wal").glob("*.wal"))) == 1


def test_two_receivers_share_the_ports_and_survive_a_killed_receiver(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--receivers", "2", "--shutdown-grace", "0s").start()
    assert node.proc is not None
    try:
        sent = 0
        for k in range(16):  # one connection each: the kernel spreads them over both receivers
            with grpc.insecure_channel(node.grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request(f"spread_{k % 4}", points=10,
                                                                                     start=k * 10), timeout=10)
                sent += 10
        active = list((node.storage_dir / "wal" / "active").glob("*.wal"))
        hosts = {segment_host(p.name.rsplit("_", 1)[1][:16]) for p in active}
        assert hosts == {host_id("node-0", 0), host_id("node-0", 1)}  # both receivers took connections
        m = scrape(node.http_url + "/metrics")
        total = sum(v for k, v in m.items() if k.startswith("ingestor_rows_total{"))
        assert total == sent  # the counters of both processes, whichever answered

        # kill -9 one receiver: the supervisor adopts its active segments and starts a new one
        import subprocess
        children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True)
        pids = [int(p) for p in children.stdout.split()]
        receiver = [p for p in pids if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()
                    and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(receiver) == 1
        os.kill(receiver[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "receiver 1: " not in node.log() or not node.ready():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        assert "active segments recovered" in node.log()
        with grpc.insecure_channel(node.grpc_addr) as ch:
            metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("after_kill", points=5), timeout=10)
    finally:
        assert node.stop() == 0
    got = sum(len(node.rows("Metrics", f"Spread{k}")) for k in range(4))
    assert got == sent
    assert len(node.rows("Metrics", "AfterKill")) == 5
    assert list((node.storage_dir / "wal" / "active").iterdir()) == []


def test_bad_sink_configuration_is_a_clear_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys
    for endpoint in ("Metrics", "Me/trics=clickhouse://h:9000/x", "Metrics=ftp://h/x"):
        r = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--storage-dir", str(tmp_path),
                            "--storage-backend", "clickhouse", "--metrics-kusto-endpoints", endpoint],
                           capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("ingestor serve: ") and "Traceback" not in r.stderr
