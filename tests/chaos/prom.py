"""A real Prometheus as a second, independent load of the chaos and soak runs, and its oracle.

Prometheus (Debian's 2.42) scrapes itself and every node's `/metrics` each second and remote-writes
everything to one node's `/api/v1/write`. It retries 5xx, 429 (`retry_on_http_429`) and connection
errors, and buffers what it has not sent in its WAL, so a node killed or cut off only delays it.
Prometheus is never restarted during a run: 2.42 does not remember how far remote write got, and
a restarted Prometheus would skip what it had not sent.

Remote write uses one shard, so it sends in the WAL's order (`max_shards: 1`, batches of up to
2,000 samples: one shard keeps up with a few thousand samples a second here).

The oracle (`Chaos.check_prometheus`, with `expected` and `compare` here): once the faults
stopped, wait until remote write caught up with a cut-off time T (the highest sent timestamp is
past T + `MARGIN`), stop Prometheus, dump its TSDB with `promtool tsdb dump` (2.42 reads the
blocks and replays the head from the WAL: checked, the dump holds exactly
`prometheus_remote_storage_samples_in_total` samples), and compare every non-NaN sample between
the start of remote write (+ `MARGIN`) and T with the sink's rows. Stale markers (a special NaN)
are excluded on both sides. A sample is the table (the metric name normalised as docs/rows.md
says), the series id (xxhash64 of every label's name + value, sorted by name, `__name__`
included), the timestamp (milliseconds; whole seconds with ClickHouse servers older than 20.1,
which have no DateTime64) and the value.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from tests.harness import free_port, scrape

MARGIN = 3.0
"""Seconds kept clear of both ends of the compared window."""
MAX_TABLE_LEN = 150
_DROPPED = re.compile(r"[^A-Za-z0-9]+")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, int, int, float]
"""(table, series id, timestamp in the sink's resolution, value)"""


def table_of(metric: str) -> str:
    """docs/rows.md: keep [A-Za-z0-9], upper-case the first letter and each letter after a dropped run."""
    parts = _DROPPED.split(metric)
    joined = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return (joined[:1].upper() + joined[1:])[:MAX_TABLE_LEN]


def series_id(labels: dict[str, str]) -> int:
    """docs/rows.md: xxhash64 of name + value of every label (with `__name__`), sorted by name, signed."""
    h = int(xxhash.xxh64_intdigest("".join(n + v for n, v in sorted(labels.items())).encode()))
    return h - (1 << 64) if h >= 1 << 63 else h


def _unquote(value: str) -> str:
    if "\\" not in value:
        return value
    try:
        return str(json.loads(f'"{value}"'))
    except ValueError:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")


def parse_dump_line(line: str) -> tuple[dict[str, str], float, int]:
    """`{__name__="up", instance="a:1", job="x"} 1 1700000000000` -> (labels, value, ms)."""
    labels_text, value, ts = line.rsplit(" ", 2)
    labels = {m[1]: _unquote(m[2]) for m in _LABEL.finditer(labels_text)}
    return labels, float(value), int(ts)


@dataclass
class PromReport:
    samples: int = 0
    """Non-NaN samples in Prometheus's TSDB within the compared window."""
    series: int = 0
    tables: int = 0
    window_seconds: float = 0.0
    sent: int = 0
    """Samples remote write delivered (acknowledged by the node), from Prometheus's counters:
    attempts minus retried minus failed, over its whole life (stale markers included)."""
    retried: int = 0
    failed: int = 0
    """Samples Prometheus gave up on (a 4xx other than 429): lost by the node's answer."""
    in_sink: int = 0
    """Samples of the window found in the sink (each counted once)."""
    lost: int = 0
    duplicates: int = 0
    never_sent: int = 0
    """Rows in the sink within the window that Prometheus does not hold."""
    caught_up: bool = False
    catch_up_seconds: float = 0.0
    resolution_ms: int = 1

    def ok(self, duplicates_allowed: bool = True) -> bool:
        """`duplicates_allowed` False: at most as many duplicates as Prometheus resent. A request
        the node wrote to its WAL but whose answer never reached Prometheus (the node killed or
        cut off as it answered) is sent again, and remote write has no idempotency key: those
        rows are in twice, and no node can tell."""
        return (self.caught_up and self.samples > 0 and self.lost == 0 and self.never_sent == 0
                and self.failed == 0 and (duplicates_allowed or self.duplicates <= self.retried))

    def __str__(self) -> str:
        return (f"Prometheus: {self.samples} samples ({self.series} series, {self.tables} tables, "
                f"{self.window_seconds:.0f}s window) in its TSDB, remote write sent {self.sent} (retried "
                f"{self.retried}, failed {self.failed}), in the sink {self.in_sink}, lost {self.lost}, "
                f"duplicates {self.duplicates}, never sent {self.never_sent}; caught up: {self.caught_up} "
                f"in {self.catch_up_seconds:.1f}s")


class PrometheusLoad:
    """One Prometheus process: `start()`, `wait_caught_up(t)`, `stop()`, `samples(lo, hi)`."""

    def __init__(self, workdir: Path, targets: Iterable[str], remote_write_url: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "tsdb"
        self.log_path = workdir / "prometheus.log"
        nodes = ", ".join(f'"{t}"' for t in targets)
        (workdir / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{self.port}"]}}]
  - job_name: ingestor
    static_configs: [{{targets: [{nodes}]}}]
remote_write:
  - url: {remote_write_url}
    remote_timeout: 10s
    queue_config: {{max_shards: 1, capacity: 10000, max_samples_per_send: 2000, batch_send_deadline: 1s,
                   min_backoff: 100ms, max_backoff: 2s, retry_on_http_429: true}}
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        """Wall-clock seconds when Prometheus was ready (remote write starts with it)."""

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={self.data}",
             "--storage.tsdb.retention.time=2d"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        self.started_at = time.time()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def remote(self) -> dict[str, float]:
        """Prometheus's remote-storage figures, by metric name (one remote_write queue)."""
        out: dict[str, float] = {}
        for key, value in scrape(self.url + "/metrics").items():
            if key.startswith("prometheus_remote_storage_") and "_bucket" not in key:
                out[key.split("{", 1)[0]] = value
        return out

    def wait_caught_up(self, cutoff: float, timeout: float = 180.0) -> tuple[bool, float]:
        """Wait until remote write sent a sample newer than `cutoff` + MARGIN; (done, seconds). One
        shard sends in the WAL's order, and a scrape is appended within its timeout (1 s), so every
        sample up to `cutoff` was then acknowledged. (Samples pending never reach 0 while
        Prometheus scrapes: a batch waits up to `batch_send_deadline`.)"""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                m = self.remote()
            except (urllib.error.URLError, OSError):
                m = {}
            if m.get("prometheus_remote_storage_queue_highest_sent_timestamp_seconds", 0.0) >= cutoff + MARGIN:
                return True, time.monotonic() - t0
            time.sleep(0.5)
        return False, time.monotonic() - t0

    def stop(self) -> dict[str, float]:
        """SIGTERM; the last remote-write figures (read just before)."""
        figures: dict[str, float] = {}
        if self.proc is None or self.proc.poll() is not None:
            return figures
        with contextlib.suppress(urllib.error.URLError, OSError):
            figures = self.remote()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return figures

    def samples(self) -> Iterator[tuple[dict[str, str], float, int]]:
        """Every sample of the (stopped) Prometheus's TSDB: blocks and the head from its WAL."""
        with subprocess.Popen(["promtool", "tsdb", "dump", str(self.data)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as p:
            assert p.stdout is not None
            for line in p.stdout:
                if line.startswith("{"):
                    yield parse_dump_line(line.rstrip("\n"))
            err = p.stderr.read() if p.stderr is not None else ""
        if p.returncode != 0:
            raise RuntimeError(f"promtool tsdb dump: {err}")


def expected(prom: PrometheusLoad, lo: int, hi: int, resolution_ms: int, report: PromReport) -> Counter[Key]:
    """The non-NaN samples whose timestamp in the sink's resolution is within [lo, hi], as sink keys, counted."""
    out: Counter[Key] = Counter()
    series: set[tuple[str, int]] = set()
    for labels, value, ts in prom.samples():
        if math.isnan(value) or not lo <= ts // resolution_ms <= hi:
            continue
        table = table_of(labels.get("__name__", ""))
        sid = series_id(labels)
        series.add((table, sid))
        out[(table, sid, ts // resolution_ms, value)] += 1
    report.samples = sum(out.values())
    report.series = len(series)
    report.tables = len({t for t, _ in series})
    return out


def compare(want: Counter[Key], have: Counter[Key], report: PromReport) -> None:
    """Lost, duplicated and never-sent samples: `have` holds the sink's rows of the same window."""
    report.in_sink = sum(min(n, have.get(k, 0)) for k, n in want.items())
    report.lost = sum(max(0, n - have.get(k, 0)) for k, n in want.items())
    report.duplicates = sum(max(0, n - want[k]) for k, n in have.items() if k in want)
    report.never_sent = sum(n for k, n in have.items() if k not in want)
