"""Soak: a 3-node cluster under steady load for a long time; RSS and open file descriptors of every
node, sampled every second, must stay flat.

`python -m tests.chaos.soak --minutes 30` (`make soak`); the suite runs 3 minutes. "Flat": the
median over the last 30 s is at most `RSS_BOUND` (64 MiB) above the median over the 30 s that
follow the warm-up (the first fifth of the run, at least 30 s), and likewise `FD_BOUND` (16)
descriptors and `THREAD_BOUND` (8) threads. (A node's RSS settles near 450 MB with the local
sink's embedded ClickHouse; the bound is what a leak of one buffer per batch would exceed within
minutes. The first soak found chdb leaking five threads and fifteen descriptors per batch.) The
load and the oracle are those of the chaos run (`tests/chaos/run.py`), without faults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.run import Chaos

RSS_BOUND = 64 << 20
FD_BOUND = 16
THREAD_BOUND = 8
WINDOW = 30.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@dataclass
class Series:
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (seconds since start, rss, fds, threads)

    def median(self, start: float, end: float, index: int) -> float:
        values = [s[index] for s in self.samples if start <= s[0] < end]
        return statistics.median(values) if values else 0.0


@dataclass
class SoakReport:
    seconds: float
    rows: int
    lost: int
    growth: dict[str, tuple[float, float, float]]
    """node -> (RSS growth in bytes, fd growth, thread growth)"""
    peak_rss: dict[str, int]

    def ok(self) -> bool:
        return self.lost == 0 and all(r <= RSS_BOUND and f <= FD_BOUND and t <= THREAD_BOUND
                                      for r, f, t in self.growth.values())

    def __str__(self) -> str:
        nodes = "; ".join(f"{n}: RSS {r / 2**20:+.1f} MiB (peak {self.peak_rss[n] / 2**20:.0f} MiB), fds {f:+.0f}, "
                          f"threads {t:+.0f}" for n, (r, f, t) in sorted(self.growth.items()))
        return (f"soak {self.seconds:.0f}s: {self.rows} rows acknowledged, {self.lost} lost; growth after warm-up "
                f"(bounds {RSS_BOUND >> 20} MiB, {FD_BOUND} fds, {THREAD_BOUND} threads): {nodes}")


def soak(root: Path, seconds: float, seed: int = 1) -> SoakReport:
    chaos = Chaos(root, seed)
    series = {n.name: Series() for n in chaos.nodes}
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            for n in chaos.nodes:
                if n.proc is not None and n.proc.poll() is None:
                    pid = n.proc.pid
                    series[n.name].samples.append((time.monotonic() - t0, rss_bytes(pid), fd_count(pid),
                                                   thread_count(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = chaos.run(0, steady=seconds)
    finally:
        stop.set()
        sampler.join(10)
    warm = max(WINDOW, seconds / 5)
    growth = {}
    for name, s in series.items():
        end = max((x[0] for x in s.samples), default=0.0)
        growth[name] = (s.median(end - WINDOW, end + 1, 1) - s.median(warm, warm + WINDOW, 1),
                        s.median(end - WINDOW, end + 1, 2) - s.median(warm, warm + WINDOW, 2),
                        s.median(end - WINDOW, end + 1, 3) - s.median(warm, warm + WINDOW, 3))
    peak = {name: max((x[1] for x in s.samples), default=0) for name, s in series.items()}
    return SoakReport(seconds, report.acked, report.lost, growth, peak)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.soak")
    p.add_argument("--minutes", type=float, default=30.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = soak(Path(tmp), args.minutes * 60)
    print(report)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
