"""The soak in the suite: three minutes of steady load on three nodes with the local sink (`make
soak` runs 30); every node's RSS, open descriptors and threads stay flat (bounds in soak.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.soak import soak

pytestmark = pytest.mark.slow


def test_three_minutes_of_load_leave_memory_descriptors_and_threads_flat(tmp_path: Path) -> None:
    report = soak(tmp_path, 180)
    print(report)
    assert report.rows > 10_000, report
    assert report.lost == 0, report
    assert report.growth.keys() == {"ingestor-0", "ingestor-1", "ingestor-2"}
    assert report.ok(), report
