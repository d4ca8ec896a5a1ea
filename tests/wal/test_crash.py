"""kill -9 at random moments: every block whose write returned survives, intact."""

from __future__ import annotations

import os
import random
from pathlib import Path

from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from tests.wal.helpers import killed_at_random


def _recovered(directory: Path) -> set[tuple[int, int]]:
    repo = Repository(WalConfig(directory))
    report = repo.start()
    assert report.ignored == []
    seen: set[tuple[int, int]] = set()
    for info in repo.closed_segments():
        # a closed segment's blocks may be compacted (segment.compact): one block holds the rows of
        # many writes, so each write is checked as its run of lines, in order
        lines = b"".join(iter_rows(info.path)).splitlines()
        at = 0
        while at < len(lines):
            run, i, pad = lines[at].split(b",")
            key = (int(run), int(i))
            n = 1 + key[1] % 7
            # the write is intact: every line of it is the same, whole line
            assert lines[at : at + n] == [lines[at]] * n
            assert pad == b"x" * (key[1] % 300)
            assert key not in seen
            seen.add(key)
            at += n
    # Verified: drop them, as an uploader would, so each run scans only its own data.
    repo.remove(repo.closed_segments())
    return seen


def test_sigkill_loses_no_written_block(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"crash test seed {seed} (CRASH_SEED={seed} replays it)")
    acked: set[tuple[int, int]] = set()
    for run in range(50):
        for line in killed_at_random("tests.wal.crash_writer", [str(tmp_path), str(run)], rng, 0.08):
            run_s, i_s = line.split(b",")
            acked.add((int(run_s), int(i_s)))
        run_acked = {k for k in acked if k[0] == run}
        missing = run_acked - _recovered(tmp_path)
        assert not missing, f"seed {seed}, run {run}: lost {sorted(missing)[:5]}"
    assert len(acked) > 500
    assert list(tmp_path.rglob("*.wal")) == []
