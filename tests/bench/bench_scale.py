"""Cost per point as the shapes grow: distinct tables, distinct series; disk per row.

Run: .venv/bin/python -m tests.bench.bench_scale [--seconds S]

One process, one core, CPU time (`time.process_time`), warm caches: OTLP metrics requests of 1,000
gauge points with 8 attributes, parsed, converted and appended to a WAL (`Repository.write_many`,
`--max-open-segments` 1,024, the collector's thresholds of node/runtime.py, as a node writes them).
Each figure is printed with its ratio to the first row of its table, measured in the same run:

* tables: 10 / 1,000 / 10,000 distinct metric names, 20 points per metric in a request (50 tables
  a request), then 1 point per metric (1,000 tables a request: a Prometheus shard at 10,000 names);
* series: 1,000 / 100,000 / 1,000,000 distinct label sets over 50 tables (convert only: the WAL's
  cost does not depend on them), with the memory the series caches hold (tracemalloc);
* disk: bytes per row of the closed segments against the same rows compressed by Snappy in one
  piece per segment (`segment.compact` regroups small blocks as a segment closes).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cramjam
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from node import runtime
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.wal.repository import Block, Repository, WalConfig
from node.wal.segment import iter_rows

T0 = 1_795_492_800_000_000_000  # 2026-11-24T04:00:00Z in nanoseconds
POINTS = 1000


def request(names: int, first: int, per_metric: int, series: int = 0) -> bytes:
    """1,000 gauge points: metrics `m<(first + i) % names>`, `per_metric` points each, 8 attributes;
    with `series`, attribute 0 cycles through `series // metrics` values per metric. Attribute 0
    names the metric's place in the request too: each point of a request is a series of its own
    (with 10 names, a name's 5 metrics are 100 series, not 5 copies of 20 identical rows)."""
    metrics = POINTS // per_metric
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="api"))
    sm = rm.scope_metrics.add()
    for m in range(metrics):
        metric = sm.metrics.add(name=f"m{(first * metrics + m) % names}")
        for p in range(per_metric):
            s = (first * per_metric + p) % max(1, series // names) if series else p
            dp = metric.gauge.data_points.add(time_unix_nano=T0 + p)
            dp.as_double = p * 1.5
            for a in range(8):
                dp.attributes.add(key=f"attribute.{a}", value=AnyValue(string_value=f"value-{a}-{s}-{m}" if a == 0 else
                                                                             f"value-{a}-{a}"))
    return req.SerializeToString()


def rate(step: Callable[[int], None], seconds: float, start: int = 0,
         finish: Callable[[], object] | None = None) -> float:
    """Points per CPU second of `step(i)` (one request each), run for about `seconds`; `finish`
    (the WAL journal's round of what the steps wrote) counts in the time too."""
    i, t = start, time.process_time()
    while True:
        step(i)
        i += 1
        spent = time.process_time() - t
        if spent >= seconds:
            if finish is not None:
                finish()
                spent = time.process_time() - t
            return (i - start) * POINTS / spent


def tables_rate(names: int, per_metric: int, seconds: float) -> float:
    distinct = max(1, names * per_metric // POINTS)  # requests before the names repeat
    bodies = [request(names, i, per_metric) for i in range(min(distinct, 200))]
    conv = MetricsConverter(MetricsConfig())
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        wal = Repository(WalConfig(directory=Path(d), max_segment_age=3600))
        wal.start()

        def step(i: int) -> None:
            m = ExportMetricsServiceRequest()
            m.ParseFromString(bodies[i % len(bodies)])
            res = conv.convert_otlp_pieces([m])
            wal.write_many([Block(b.database, b.table, b.kind, b.data, b.count, b.schema)
                            for b in res.tables.values()])

        for i in range(len(bodies)):  # every table's segment exists, every series is cached
            step(i)
        wal.split_journal()  # requests of 100 tables or more: their round's cost is timed with them
        r = rate(step, seconds, finish=wal.split_journal)
        wal.stop()
    return r


def series_rates(counts: tuple[int, ...], seconds: float, rounds: int = 3) -> list[tuple[float, float, float]]:
    """For each number of distinct label sets (over 50 tables): (points/s, its ratio to the first,
    cache bytes per series). Each converter is warmed first (every series seen once), then they
    are measured in turn, `rounds` times: a ratio is the median of the rounds' ratios, so that a
    slow minute of the machine lands on every count, not on one (measured one after another, the
    1,000-series reference moved 18% between two runs)."""
    convs, bodies, held = [], [], []
    for series in counts:
        cycle = max(1, series // POINTS)  # requests in one pass over every series
        conv = MetricsConverter(MetricsConfig())
        gc.collect()
        tracemalloc.start()
        for i in range(cycle):
            _convert(conv, request(50, i, 20, series))
        held.append(tracemalloc.get_traced_memory()[0] / series)
        tracemalloc.stop()
        convs.append(conv)
        bodies.append([request(50, cycle + i, 20, series) for i in range(200)])
    measured: list[list[float]] = [[] for _ in counts]
    for _ in range(rounds):
        for k, conv in enumerate(convs):
            measured[k].append(rate(_steps(conv, bodies[k]), seconds / rounds))
    out = []
    for k in range(len(counts)):
        ratios = sorted(measured[k][r] / measured[0][r] for r in range(rounds))
        out.append((statistics.median(measured[k]), ratios[len(ratios) // 2], held[k]))
    return out


def _steps(conv: MetricsConverter, bodies: list[bytes]) -> Callable[[int], None]:
    def step(i: int) -> None:
        _convert(conv, bodies[i % len(bodies)])
    return step


def _convert(conv: MetricsConverter, body: bytes) -> None:
    m = ExportMetricsServiceRequest()
    m.ParseFromString(body)
    conv.convert_otlp_pieces([m])


def disk(names: int, per_metric: int) -> tuple[float, float]:
    """(segment bytes per row, Snappy-in-one-piece bytes per row) after 300 requests."""
    conv = MetricsConverter(MetricsConfig())
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as d:
        wal = Repository(WalConfig(directory=Path(d), max_segment_age=3600))
        wal.start()
        rows = 0
        for i in range(300):
            m = ExportMetricsServiceRequest()
            m.ParseFromString(request(names, i, per_metric))
            res = conv.convert_otlp_pieces([m])
            wal.write_many([Block(b.database, b.table, b.kind, b.data, b.count, b.schema)
                            for b in res.tables.values()])
            rows += res.accepted
        closed = wal.rotate_all()  # as segments close by age or size: compacted (a stopping node's are not)
        wal.stop()
        on_disk = sum(s.size for s in closed)
        one_piece = sum(len(cramjam.snappy.compress_raw(b"".join(iter_rows(s.path)))) for s in closed)
    return on_disk / rows, one_piece / rows


def main(seconds: float = 3.0) -> None:
    print("tables (convert + WAL append, one core, CPU time):")
    base = 0.0
    for names, per_metric in ((10, 20), (1000, 20), (10000, 20), (1000, 1), (10000, 1)):
        r = tables_rate(names, per_metric, seconds)
        base = base or r
        print(f"  {names:>6,} tables, {POINTS // per_metric:>5,} a request: {r:10,.0f} points/s  "
              f"(ratio {r / base:.2f} of 10 tables, 50 a request)")
    print("series (convert only, 50 tables, one core, CPU time; the counts in turn, 3 rounds, median ratio):")
    counts = (1_000, 100_000, 1_000_000)
    for series, (r, ratio, per_series) in zip(counts, series_rates(counts, 3 * seconds), strict=True):
        print(f"  {series:>9,} series: {r:10,.0f} points/s (ratio {ratio:.2f} of 1,000 series); "
              f"series caches {per_series:,.0f} B per series")
    print("disk per row (closed segments against Snappy in one piece per segment):")
    for names, per_metric in ((10, 20), (1000, 20), (1000, 1)):
        seg, one = disk(names, per_metric)
        print(f"  {names:>6,} tables, {POINTS // per_metric:>5,} a request: {seg:6.1f} B/row on disk, "
              f"{one:6.1f} B/row in one piece (ratio {seg / one:.2f})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    runtime.tune()  # the collector's thresholds of a node process (node/runtime.py), as `make bench` sets them
    main(ap.parse_args().seconds)
