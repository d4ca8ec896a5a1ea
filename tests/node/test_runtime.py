"""A node process's collector (node/runtime.py): its thresholds keep requests over many tables from
filling the oldest generation with what is already dead, and its pauses are on /metrics."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from node import runtime
from tests.harness import NodeProcess, scrape

WORKLOAD = """
import gc, json, sys, tempfile
from pathlib import Path
from node import runtime
if sys.argv[1] == "tuned":
    runtime.tune()
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.otlpmetrics import parse_request
from node.wal.repository import Repository, WalConfig
from tests.bench.bench_scale import request

bodies = [request(10_000, i, 1) for i in range(10)]  # 1,000 tables a request, 10,000 in all
conv = MetricsConverter(MetricsConfig())

def write(wal, i):
    wal.write_many(list(conv.convert_otlp_pieces([parse_request(bodies[i % 10])]).tables.values()))

with tempfile.TemporaryDirectory() as d:
    wal = Repository(WalConfig(directory=Path(d), max_segment_age=3600))
    wal.start()
    for i in range(10):  # every table and series exists
        write(wal, i)
    wal.split_journal()
    if sys.argv[1] == "tuned":
        runtime.freeze()
    before = [s["collections"] for s in gc.get_stats()]
    for i in range(300):
        write(wal, i)
    after = [s["collections"] for s in gc.get_stats()]
    wal.stop()
print(json.dumps([a - b for a, b in zip(after, before)]))
"""


def _collections(mode: str) -> list[int]:
    """Collections per generation while one process converts and writes 300 requests of 1,000
    tables (a Prometheus shard's shape), with CPython's thresholds or the node's."""
    out = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    counts: list[int] = json.loads(out.stdout.strip().splitlines()[-1])
    return counts


def test_the_node_thresholds_keep_wide_requests_out_of_full_collections() -> None:
    default, tuned = _collections("default"), _collections("tuned")
    # CPython's 700: young collections inside every request, promoting its live containers, then
    # full collections of the whole heap (measured: 698 / 63 / 4)
    assert default[2] >= 1, default
    assert tuned[2] == 0, tuned
    assert sum(tuned) * 20 < sum(default), (tuned, default)


def test_pauses_are_kept_per_generation_until_drained() -> None:
    pauses = runtime.GcPauses()
    pauses.start()
    try:
        pauses.start()  # once only
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.stop()
    gc.collect(1)  # after stop: not recorded
    got = pauses.drain()
    assert [g for g, _ in got] == [0, 2]
    assert all(0 <= s < 5 for _, s in got)
    assert pauses.drain() == []


def test_pauses_kept_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runtime, "MAX_PAUSES", 3)
    pauses = runtime.GcPauses()
    pauses.start()
    try:
        for _ in range(5):
            gc.collect(0)
    finally:
        pauses.stop()
    assert len(pauses.drain()) == 3


def test_each_node_process_reports_its_collector_pauses(tmp_path: Path) -> None:
    """`ingestor serve` and each receiver process it spawns collect and freeze once they serve (a
    full collection, after the pauses are watched): their ticks put it on /metrics, summed over
    the processes."""
    node = NodeProcess(tmp_path / "data", "--receivers", "2").start()
    try:
        key = 'ingestor_gc_pause_seconds_count{generation="2"}'
        deadline = time.monotonic() + 20
        seen = 0.0
        while time.monotonic() < deadline:
            seen = scrape(f"{node.http_url}/metrics").get(key, 0.0)
            if seen >= 2:
                break
            time.sleep(0.3)
        assert seen >= 2, f"{seen} full collections on /metrics: freeze() did not run in both processes"
    finally:
        node.stop()


def test_the_c_library_is_loaded_once_and_a_missing_function_is_none() -> None:
    from node import libc

    assert libc.libc() is libc.libc() and libc.libc() is not libc.libc(keep_gil=True)
    assert libc.function("no_such_function_in_libc") is None
    malloc_trim = libc.function("malloc_trim")
    assert malloc_trim is not None and malloc_trim(0) in (0, 1)
