"""A real node's WAL journal (`--wal-journal-tables`, docs/wal.md): a request over many tables is
acknowledged from the journal, and a kill -9 before its round (of the node, or of one of its
receiver processes) loses none of its rows and doubles none."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from node.wal.journal import journal_id
from node.wal.names import host_id, segment_host
from tests.harness import NodeProcess, scrape
from tests.node.test_grpc import T0

KEEP = ("--min-batch-size", "1TB", "--max-segment-age", "1h", "--shutdown-grace", "0s")
"""Nothing uploaded: the rows stay in the segment files, which the tests read."""


def _journals(node: NodeProcess) -> list[Path]:
    return sorted((node.storage_dir / "wal" / "active").glob("*.journal"))


def _counts(node: NodeProcess, tables: list[str]) -> Counter[str]:
    return Counter({t: len(node.rows("Metrics", t)) for t in tables})


def test_an_sdk_export_over_many_tables_survives_a_kill_before_its_round(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    node = NodeProcess(tmp_path / "data", *KEEP).start()
    exporter = OTLPMetricExporter(endpoint=node.grpc_addr, insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("journal")
    for i in range(150):  # 150 metric names: 150 tables in one export, over --wal-journal-tables (100)
        meter.create_counter(f"wide_{i}").add(i + 1, {"pod": "p1"})
    assert provider.force_flush(10_000)
    tables = [f"Wide{i}" for i in range(150)]
    try:
        # acknowledged, and in the journal only: its round is seconds away
        assert len(_journals(node)) == 1
        assert sum(_counts(node, tables).values()) == 0
        deadline = time.monotonic() + 3  # the gauge is set at the node's tick (every second)
        while scrape(node.http_url + "/metrics").get("ingestor_wal_journal_bytes", 0) <= 0:
            assert time.monotonic() < deadline, "ingestor_wal_journal_bytes stayed 0"
            time.sleep(0.1)
        node.kill()
        node.start()
        assert _journals(node) == []
        counts = _counts(node, tables)
        assert counts == Counter(dict.fromkeys(tables, 1)), counts  # every table's row, once
        values = {t: node.rows("Metrics", t)[0].rsplit(b",", 1)[1] for t in ("Wide0", "Wide149")}
        assert values == {"Wide0": b"1", "Wide149": b"150"}
        assert "journals split: 1" in node.log()
    finally:
        provider.shutdown()
        node.stop()


def _wide(request: int, tables: int) -> metrics_service_pb2.ExportMetricsServiceRequest:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    for t in range(tables):
        m = sm.metrics.add(name=f"spread_{t}")
        dp = m.gauge.data_points.add(time_unix_nano=T0 + request * 1_000_000, as_double=float(request))
        dp.attributes.add(key="req", value=common_pb2.AnyValue(string_value=str(request)))
    return req


def test_a_killed_receivers_journal_is_split_by_the_supervisor(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--receivers", "2").start()
    assert node.proc is not None
    tables = 120
    sent = 0
    child = host_id("node-0", 1)
    try:
        for k in range(40):  # one connection each: the kernel spreads them over both receivers
            with grpc.insecure_channel(node.grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(_wide(k, tables), timeout=10)
            sent += 1
            if child in {segment_host(journal_id(p)) for p in _journals(node)} and k >= 8:
                break
        hosts = {segment_host(journal_id(p)) for p in _journals(node)}
        assert child in hosts, f"no request reached receiver 1 ({hosts})"
        children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True)
        receiver = [int(p) for p in children.stdout.split()
                    if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()
                    and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(receiver) == 1
        os.kill(receiver[0], signal.SIGKILL)  # before its round (5 s): its rows are in its journal only
        deadline = time.monotonic() + 30
        while "receiver 1: " not in node.log() or not node.ready():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        assert not any(segment_host(journal_id(p)) == child for p in _journals(node))  # split by the supervisor
    finally:
        assert node.stop() == 0
    names = [f"Spread{t}" for t in range(tables)]
    counts = _counts(node, names)
    assert counts == Counter(dict.fromkeys(names, sent)), counts
    for t in (0, tables - 1):  # each request's row once in every table
        reqs = Counter(r.rsplit(b",", 1)[1] for r in node.rows("Metrics", f"Spread{t}"))
        assert reqs == Counter({str(float(k)).encode(): 1 for k in range(sent)}), reqs
    assert list((node.storage_dir / "wal" / "active").iterdir()) == []
