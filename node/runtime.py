"""How a node process sets up its runtime: glibc's allocator and Python's garbage collector.

Each node process (`ingestor serve`, and every receiver process it spawns) calls `tune()` once
before it starts, and `freeze()` once it serves. Tests that build nodes inside pytest's own process
call neither: these are settings of a process, not of a node.

The collector. A request is converted into thousands of short-lived containers (a row list, a
batch and a block for each of its tables), alive together until its rows are in the WAL. With
CPython's default thresholds (700 net new containers), several young collections run inside every
request, and each promotes the request's live containers to an older generation, where they die a
moment later: the oldest generation then fills with what was already dead, and full collections
follow, each walking every table's WAL state and every cached series. Measured in one process,
requests of 1,000 tables over 10,000 (issue 17's Prometheus shard shape): 31 full collections in
2,200 requests, 50 ms to 880 ms each (the longer ones on a loaded machine), about a quarter of the
process's CPU in the collector. With a first threshold of 50,000, a young collection runs every
few requests, when most of a request's containers are gone: no full collection in the same run,
and the collector's CPU a tenth of what it was. Cyclic garbage is still collected, young, within
50,000 new containers; a full collection still runs once enough has lived long (CPython's own
rule: a quarter more than what survived the last one).

`freeze()` moves what start-up made (the WAL index of every table, the sinks, the servers) out of
the collector's reach: it lives as long as the process, and no full collection walks it again.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import time
from typing import Any

from node import libc

MALLOC_TRIM_THRESHOLD = 256 << 20
MALLOC_MMAP_THRESHOLD = 64 << 20

GC_THRESHOLDS = (50_000, 20, 10)
"""gc.set_threshold: net new containers before a young collection (CPython: 700), then young
collections before a middle one (10), middle ones before a full one (10, and CPython's quarter
rule above)."""

MAX_PAUSES = 10_000
"""Collector pauses kept between two drains (a second apart) at most: the oldest are dropped."""


def tune() -> None:
    """This process's allocator and collector, before it starts."""
    tune_malloc()
    gc.set_threshold(*GC_THRESHOLDS)


def freeze() -> None:
    """Once the process serves: collect what start-up left, then keep what remains out of every
    later collection (gc.freeze)."""
    gc.collect()
    gc.freeze()


def tune_malloc() -> None:
    """Keep glibc from returning freed memory to the OS and faulting it back on every request.

    With large protobuf objects alive this halved parse speed here; it is what the environment
    variable MALLOC_TRIM_THRESHOLD_ does, set from inside the process.
    """
    mallopt = libc.function("mallopt")
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)


class GcPauses:
    """The collector's pauses in this process, as (generation, seconds), kept until `drain()`.

    The callback runs inside the collector, in whichever thread allocated: it only appends to a
    bounded deque (no lock, no metric call that could allocate its way back into the collector).
    `start()` and `stop()` add and remove it; the node's tick drains it into a histogram.
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._began = 0.0
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=MAX_PAUSES)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def drain(self) -> list[tuple[int, float]]:
        """The pauses since the last drain, oldest first."""
        out = []
        pauses = self._pauses
        while pauses:
            out.append(pauses.popleft())
        return out

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = self._clock()
        else:
            self._pauses.append((info["generation"], self._clock() - self._began))
