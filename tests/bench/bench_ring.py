"""Ownership ring: balance, keys moved on a join and a leave, and `owner()` lookups per second."""

from __future__ import annotations

import time
from collections import Counter

from cluster.ring import Ring

KEYS = [f"Metrics_ContainerCpuUsageSecondsTotal_{i}" for i in range(100_000)]


def pods(n: int) -> list[str]:
    return [f"ingestor-{i}" for i in range(n)]


def moved_fraction(before: list[str], after: list[str]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def lookups_per_second(ring: Ring, seconds: float = 1.0) -> float:
    done = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for key in KEYS[:10_000]:
            ring.owner(key)
        done += 10_000
    return done / elapsed


def main() -> None:
    print(f"{len(KEYS):,} keys")
    print(f"{'peers':>5}  {'max/mean':>8}  {'moved join':>10}  {'moved leave':>11}  {'1/N':>6}  {'owner()/s':>10}")
    for n in (3, 10, 50):
        ring = Ring(pods(n))
        owners = [ring.owner(k) for k in KEYS]
        balance = max(Counter(owners).values()) / (len(KEYS) / n)
        join = Ring(pods(n + 1))
        leave = Ring(pods(n - 1))  # a StatefulSet scales down by its highest ordinal
        moved_join = moved_fraction(owners, [join.owner(k) for k in KEYS])
        moved_leave = moved_fraction(owners, [leave.owner(k) for k in KEYS])
        rate = lookups_per_second(ring)
        print(f"{n:>5}  {balance:>8.3f}  {moved_join:>10.4f}  {moved_leave:>11.4f}  {1 / n:>6.4f}  {rate:>10,.0f}")


if __name__ == "__main__":
    main()
