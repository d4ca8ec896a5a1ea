"""Shared helpers of the WAL tests: building segments with known blocks, writing one block through a
repository, and what a repository counts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.wal import format as fmt
from node.wal.names import Schema
from node.wal.repository import Block, Repository, WalStats


def rows_for(i: int, n: int = 3) -> bytes:
    return b"".join(f"2026-11-24T04:00:{i % 60:02d}.000Z,{i * 10 + j},\"{{}}\",{j}.5\n".encode()
                    for j in range(n))


def make_segment(path: Path, blocks: list[bytes]) -> list[int]:
    """Write a segment of the given block values; return the end offset of every block."""
    ends = []
    data = bytearray(fmt.MAGIC)
    for value in blocks:
        header, payload = fmt.encode_block(fmt.KIND_METRIC, value.count(b"\n"), value)
        data += header + payload
        ends.append(len(data))
    path.write_bytes(bytes(data))
    return ends


def write_block(repo: Repository, database: str, table: str, kind: int, value: bytes | bytearray, count: int,
                schema: Schema | None = None) -> None:
    """Append one block of rows (CSV text) to the table's active segment: a request of one block
    (`Repository.write_many`). Raises InvalidNameError or OverLimitsError, writing nothing then."""
    repo.write_many([Block(database, table, kind, value, count, schema)])


def wal_stats(repo: Repository) -> WalStats:
    """The segments `repo` counts (its bytes and segments, closed ones per prefix, active bytes per
    prefix), from its private state: what the tests check its accounting against."""
    with repo._lock:
        closed = {p: (len(d), sum(i.size for i in d.values())) for p, d in repo._closed.items() if d}
        wals = list(repo._wals.items())
        usage, count = repo._usage, repo._segments
    active = {}
    for (db, table, sid), w in wals:
        with w.lock:
            size = w.mark().size
        if size:
            active[f"{db}_{table}_{sid}" if sid else f"{db}_{table}"] = size
    return WalStats(usage, count, closed, active)


ROOT = Path(__file__).resolve().parents[2]


def killed_at_random(module: str, args: list[str], rng: random.Random, most: float) -> list[bytes]:
    """Run `python -m module args` (a writer that prints "ready", then a line for each write once it
    returned), kill -9 it after a random 0 to `most` seconds, and return the lines it printed."""
    child = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    time.sleep(rng.uniform(0.0, most))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    return out.splitlines()
