"""A short chaos run in the test suite (`make chaos` runs 20 faults): kill -9, SIGTERM with a short
grace, the owner killed mid-transfer, a peer frozen, and (ClickHouse) the sink stopped for a while
and a node's disk full, on three real nodes under OTLP metrics, OTLP logs and remote-write load;
no acknowledged row lost, none invented, none twice in ClickHouse, no segment left behind, the
cluster live afterwards."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chaos.run import DISK_LEFT, Chaos
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sink", ["local", "clickhouse"])
def test_six_random_faults_lose_no_acknowledged_row(tmp_path: Path, sink: str) -> None:
    seed = random.randrange(1 << 32)
    print(f"chaos seed {seed} (replay: python -m tests.chaos.run --seed {seed} --faults 6 --sink {sink})")
    server = None
    if sink == "clickhouse":
        if find_binary() is None:
            pytest.skip("clickhouse-server is not installed (.ci/run installs it)")
        server = ClickHouseServer(tmp_path / "clickhouse")
    try:
        report = Chaos(tmp_path, seed, server).run(6)
    finally:
        if server is not None:
            server.stop()
    print(report)
    assert report.acked > 0 and sum(report.faults.values()) == 6
    assert report.lost == 0, report
    if sink == "clickhouse":  # deduplication tokens, and deliveries resumed as they were (docs/reliability.md)
        assert report.duplicates == 0, report
    assert report.unknown == 0, report
    assert report.segments_left == 0, report
    assert report.disk_left <= DISK_LEFT, report
    assert report.live_after, report
