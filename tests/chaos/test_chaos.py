"""A short chaos run in the test suite (`make chaos` runs 20 faults): kill -9, SIGTERM with a short
grace and the owner killed mid-transfer, on three real nodes under load; no acknowledged row lost,
none invented, no segment left behind, the cluster live afterwards."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chaos.run import Chaos

pytestmark = pytest.mark.slow


def test_six_random_faults_lose_no_acknowledged_row(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"chaos seed {seed} (replay: python -m tests.chaos.run --seed {seed} --faults 6)")
    report = Chaos(tmp_path, seed).run(6)
    print(report)
    assert report.acked > 0 and sum(report.faults.values()) == 6
    assert report.lost == 0, report
    assert report.unknown == 0, report
    assert report.segments_left == 0, report
    assert report.live_after, report
