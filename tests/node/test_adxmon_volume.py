"""A volume adx-mon used, under a real node: the image of the StatefulSet is swapped and the volume
still holds adx-mon's segments, directly in --storage-dir (node/wal/adopt.py).

The volume is laid out as adx-mon's ingestor leaves it, with files built by the adx-mon encoder
written apart from the node (tests/adxmon/segments.py): two closed metrics segments, the active
one of an adx-mon that was killed (a torn tail), a segment under a name that is not a segment name,
a transfer's temp file of an older adx-mon and a file of the operator's. A node started on it
adopts the segments, and every row of their good blocks reaches the local sink; the rest is
quarantined or left alone; a second start adopts nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adxmon import segments as adx
from tests.harness import ROOT, NodeProcess

pytest.importorskip("chdb")

FLAGS = ["--transfer-addr=", "--max-segment-age", "1s", "--upload-interval", "0.5s", "--shutdown-grace", "60s"]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms


def samples(metric: str, start: int, n: int) -> list[adx.Sample]:
    return [adx.Sample({"__name__": metric, "adxmon_database": "Metrics", "host": f"h{i % 2}"}, T0 + i * 1000, i + 0.25)
            for i in range(start, start + n)]


class Volume:
    """What adx-mon left in `root`, and what of it must reach the sink."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root = root
        ids = adx.FlakeIds(host=321)
        cpu = [samples("cpu", 0, 5), samples("cpu", 5, 4)]
        self.cpu = root / adx.metrics_filename("Metrics", "Cpu", ids.next())
        self.cpu.write_bytes(adx.metrics_segment(cpu))
        cpu2 = [samples("cpu", 9, 3)]
        self.cpu2 = root / adx.metrics_filename("Metrics", "Cpu", ids.next())
        self.cpu2.write_bytes(adx.metrics_segment(cpu2, compression="snappy"))
        mem = [samples("mem", 0, 6), samples("mem", 6, 6), samples("mem", 12, 6)]
        whole = adx.metrics_segment(mem)
        self.torn_cut = 9  # the last block's write, cut short by the kill
        self.mem = root / adx.metrics_filename("Metrics", "Mem", ids.next())
        self.mem.write_bytes(whole[:-self.torn_cut])
        self.values = {"Cpu": sorted(s.value for b in cpu + cpu2 for s in b),
                       "Mem": sorted(s.value for b in mem[:2] for s in b)}
        self.adopted_bytes = self.cpu.stat().st_size + self.cpu2.stat().st_size + len(whole) - len(
            adx.block(adx.metrics_csv(mem[2])))
        bad = root / adx.filename("Metrics", "Disk.Used", adx.schema_hash(), ids.next())
        bad.write_bytes(adx.metrics_segment([samples("disk", 0, 3)]))
        self.bad = bad.name
        self.bad_bytes = bad.read_bytes()
        tmp = root / (adx.metrics_filename("Metrics", "Cpu", ids.next()) + ".tmp")
        tmp.write_bytes(adx.metrics_segment([samples("cpu", 100, 2)])[:40])
        (root / "README.operator").write_text("do not delete\n")
        self.left_alone = {p.name: p.read_bytes() for p in (tmp, root / "README.operator")}


def query(storage: Path, sql: str) -> list[dict[str, object]]:
    """`ingestor query`'s rows; none before the first upload made the store."""
    r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(storage), "--format", "json",
                        sql], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if r.returncode == 1 and "nothing was uploaded to it yet" in r.stderr:
        return []
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def values(storage: Path, table: str) -> list[float]:
    tables = {str(r["name"]) for r in query(storage, "SELECT name FROM system.tables WHERE database = 'Metrics'")}
    if table not in tables:
        return []
    return [float(str(r["Value"])) for r in query(storage, f"SELECT Value FROM Metrics.{table} ORDER BY Value")]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not in {timeout}s: {what}"
        time.sleep(0.5)


def root_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != "transfers.ledger"
            and not p.name.startswith(("cluster.json", "leaving", "transfers.ledger"))}


def test_a_reused_adxmon_volume_loses_nothing(tmp_path: Path) -> None:
    vol = Volume(tmp_path / "data")
    node = NodeProcess(vol.root, *FLAGS)
    node.start()
    try:
        wait_for(lambda: values(vol.root, "Cpu") == vol.values["Cpu"] and values(vol.root, "Mem") == vol.values["Mem"],
                 "every row of adx-mon's good blocks in the local sink")
        wait_for(lambda: not list((vol.root / "wal").glob("*.wal")), "the adopted segments deleted once delivered")
    finally:
        assert node.stop() == 0
    log = node.log()
    adopted = [line for line in log.splitlines() if "that adx-mon left in" in line and "adopted" in line]
    assert len(adopted) == 1, log
    assert adopted[0].split(" INFO ", 1)[-1].endswith(
        f"adopted 3 segments ({vol.adopted_bytes} bytes, 1 repaired) that adx-mon left in {vol.root}"), adopted
    assert " INFO " in adopted[0]
    quarantined = [line for line in log.splitlines() if "WARNING" in line and vol.bad in line]
    assert len(quarantined) == 1 and str(vol.root / "quarantine") in quarantined[0], log
    assert (vol.root / "quarantine" / vol.bad).read_bytes() == vol.bad_bytes
    alone = [line for line in log.splitlines() if "left alone" in line]
    assert len(alone) == 1 and " INFO " in alone[0] and all(n in alone[0] for n in vol.left_alone), log
    assert root_files(vol.root) == vol.left_alone  # every segment gone from the root, the rest untouched
    assert values(vol.root, "Cpu") == vol.values["Cpu"] and values(vol.root, "Mem") == vol.values["Mem"]

    # A second start on the same volume: nothing is adopted again, nothing is delivered twice.
    before = len(log)
    again = NodeProcess(vol.root, *FLAGS)
    again.start()
    try:
        time.sleep(3)  # six upload rounds
        assert values(vol.root, "Cpu") == vol.values["Cpu"] and values(vol.root, "Mem") == vol.values["Mem"]
    finally:
        assert again.stop() == 0
    second = again.log()[before:]
    assert "WAL recovered 0 segments" in second, second
    assert "adopted" not in second and "quarantine" not in second, second
    assert root_files(vol.root) == vol.left_alone
    assert sorted(p.name for p in (vol.root / "quarantine").iterdir()) == [vol.bad, vol.bad + ".reason.txt"]
