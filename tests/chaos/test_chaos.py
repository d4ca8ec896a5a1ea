"""A short chaos run in the test suite (`make chaos` runs 20 faults): kill -9, SIGTERM with a short
grace, the owner killed mid-transfer, a receiver process killed, a peer cut off, a node's disk full
and (ClickHouse) the sink stopped for a while, on three real nodes in the shape a user runs (two
receivers each, 1 to 3 s segments, 300 + 10 tables of OTLP metrics, OTLP logs and remote-write
load, and a real Prometheus remote-writing its and the nodes' metrics); no acknowledged row or
Prometheus sample lost, none invented, none twice in ClickHouse, no segment left behind, no
process left behind, the cluster live afterwards. In the user shape two adx-mon collectors also
POST segments (metrics, OTLP and native logs, merged sometimes, gzip and plain) to the nodes'
transfer doors, with a POST held in flight at every whole-node fault and one made while the disk
is full (tests/chaos/adxmon.py): every acknowledged segment's rows in the sink, each as many
times as the nodes' transfer ledgers published it. The earlier shape (one receiver, 10 tables, no
Prometheus) runs once, with ClickHouse and four faults. The local-sink run holds at most 40
segment files open per node (`--max-open-segments`, 20 per receiver process for 310 tables), so
that the faults also land on segments whose descriptors were closed and reopened."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chaos.run import DISK_LEFT, SHAPES, Chaos, allowed_duplicates
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the drain of a 300-table backlog takes minutes here


@pytest.mark.parametrize(("sink", "shape", "faults"), [("local", "user", 7), ("clickhouse", "user", 8),
                                                       ("clickhouse", "narrow", 4)])
def test_random_faults_lose_no_acknowledged_row(tmp_path: Path, sink: str, shape: str, faults: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seed = random.randrange(1 << 32)
    env = ""
    if sink == "local":  # the nodes inherit it (every flag is also an INGESTOR_* variable)
        monkeypatch.setenv("INGESTOR_MAX_OPEN_SEGMENTS", "40")
        env = "INGESTOR_MAX_OPEN_SEGMENTS=40 "
    print(f"chaos seed {seed} (replay: {env}python -m tests.chaos.run --seed {seed} --faults {faults} --sink {sink} "
          f"--shape {shape})")
    server = None
    if sink == "clickhouse":
        if find_binary() is None:
            pytest.skip("clickhouse-server is not installed (.ci/run installs it)")
        server = ClickHouseServer(tmp_path / "clickhouse")
    try:
        report = Chaos(tmp_path, seed, server, shape=SHAPES[shape]).run(faults)
    finally:
        if server is not None:
            server.stop()
    print(report)
    assert report.acked > 0 and sum(report.faults.values()) == faults
    assert report.lost == 0, report
    if sink == "clickhouse":  # deliveries resume as they were, but 18.16 cannot deduplicate a retried insert
        assert report.duplicates <= allowed_duplicates(report.acked), report
    assert report.unknown == 0, report
    assert report.segments_left == 0, report
    assert report.disk_left <= DISK_LEFT, report
    assert report.live_after, report
    assert not report.leftovers, report
    assert not report.errors, report
    if SHAPES[shape].adxmon:
        adx = report.adxmon
        assert adx is not None and adx.acked_segments > 0 and adx.gzip_acked > 0 and adx.plain_acked > 0, report
        assert adx.lost == 0 and adx.undelivered == 0 and adx.contradictions == 0 and not adx.errors, report
        assert adx.never_acked == 0, report  # every segment taken once the faults stopped
        # the faults met the door: a POST in flight at each whole-node fault, one during each full disk
        door_faults = ("kill9", "sigterm", "kill_owner", "peer_unreachable", "disk_full")
        assert {k: sum(adx.at_faults.get(k, {}).values()) for k in door_faults} == \
            {k: report.faults[k] for k in door_faults}, report
        if report.faults["disk_full"]:  # the full disk refused with 429, the segment taken elsewhere later
            assert adx.at_faults["disk_full"]["429"] == report.faults["disk_full"], report
    if SHAPES[shape].prometheus:
        prom = report.prom
        assert prom is not None and prom.caught_up and prom.samples > 0, report
        assert prom.lost == 0 and prom.failed == 0 and prom.never_sent == 0, report
        if sink == "clickhouse":  # only a resend by Prometheus itself (an answer lost) may double samples
            assert prom.duplicates <= prom.retried, report
