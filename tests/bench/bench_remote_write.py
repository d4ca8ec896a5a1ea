"""Prometheus remote write: the node against Prometheus's own receiver, the same samples to each.

Load: `WORKERS` HTTP/1.1 connections, each a remote-write shard with its own 1,000 series (20
pods with 50 metric names each, a pod's series one after the other as they were scraped, 10
labels with `__name__`), sending one request at a time of one sample per series, each request 1 s
newer than the shard's previous one (Prometheus refuses a sample older than the newest of its
series, and drops a repeated one unseen): `WriteRequest`s serialized as Prometheus sends them,
snappy-compressed, with its headers. Every body is built once, before the runs, into a file; the
same bytes go to each target, and the driver (aiohttp, a process per target) only sends them, so
its CPU is small and the same for each.

Targets, all running at once, each in a directory of its own: Prometheus 2.42 (Debian's
`prometheus --web.enable-remote-write-receiver`, no scrape targets, POST /api/v1/write) and a node
(local sink) with 1 and with 2 receiver processes (POST /api/v1/write). They take the load in
turns: `ROUNDS` rounds, each giving every target a window of BENCH_SECONDS / ROUNDS, in an order
that rotates, so that another process busy on this shared machine for a while weighs on every
target alike. Per target, over its windows: samples/s acknowledged (2xx), failed requests, CPU
seconds per million samples acknowledged (utime + stime of the target's process tree), and, after
the last round, disk bytes per sample acknowledged (Prometheus: its TSDB directory, which then
holds the WAL and the head chunks written so far, none while a series has fewer than 120 samples;
the node: its WAL segments, active and closed, as written, and as they would be once compacted as
they close by age); each with its ratio to Prometheus's. Also printed: the cores each target
used, the driver's CPU per million samples, and the cores the rest of the machine (other
processes, the targets not under load) used during each target's windows. CPU per sample is the
figure that carries over; samples/s depends on the cores left free: Prometheus and a node with 2
receivers can use both, a node with 1 receiver one.

`python -m tests.bench.bench_remote_write` (BENCH_SECONDS: each target's load, 12 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import mmap
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cramjam

from node.gen.prometheus import remote_pb2
from node.rows.wire import uvarint
from node.wal.names import parse_filename
from node.wal.segment import compact, scan
from tests.harness import ROOT, NodeProcess, free_port

METRICS, PER_METRIC = 50, 20
SERIES = METRICS * PER_METRIC
"""Series of a shard, one sample each in every request it sends."""
WORKERS = 16
"""Connections (shards), each sending one request at a time."""
WARMUP = 2
"""Requests each shard sends before the timed windows (the first creates its series)."""
SECONDS = float(os.environ.get("BENCH_SECONDS", "12"))
ROUNDS = 6
MAX_RATE = 600_000
"""Samples/s the bodies are built for; a target faster than this runs out of them (said)."""
STEP_MS = 1000
T0_MS = 1_795_000_000_000
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "Prometheus/2.42.0"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- bodies ---------------------------------------------------------------------------------------


def series_labels(shard: int, metric: int, i: int) -> list[tuple[str, str]]:
    """Labels of a series as a Kubernetes pod scrape gives them (10 with `__name__`), sorted."""
    name = f"http_server_requests_{metric}_total" if metric % 2 == 0 else f"process_memory_{metric}_bytes"
    return [("__name__", name), ("app", "web"), ("code", str(200 + i % 4)), ("container", "web"),
            ("instance", f"10.{shard}.{i // 10}.{i % 10 + 10}:8080"), ("job", "kubernetes-pods"),
            ("method", ("GET", "POST")[i % 2]), ("namespace", f"team-{i % 5}"),
            ("node", f"aks-nodepool1-{i % 7}-vmss00000{i % 3}"), ("pod", f"web-{shard}-{i:03d}-7d9f8b6c5-x{i}q")]


class Shard:
    """A shard's requests: its series' labels serialized once (by `WriteRequest`), then one sample
    per series and request, packed with one `struct` call (`check`: the same bytes)."""

    def __init__(self, shard: int) -> None:
        template = remote_pb2.WriteRequest()
        prefixes: list[bytes] = []
        for i in range(PER_METRIC):  # a pod's series one after the other, as they were scraped
            for m in range(METRICS):
                ts = template.timeseries.add()
                for name, value in series_labels(shard, m, i):
                    ts.labels.add(name=name, value=value)
                labels = ts.SerializeToString()
                # WriteRequest.timeseries, then its Sample (field 2, 16 bytes): value (field 1, a
                # double), timestamp (field 2, a varint: 6 bytes for milliseconds of this century)
                prefixes.append(b"\x0a" + uvarint(len(labels) + 18) + labels + b"\x12\x10\x09")
        self.template = template
        self.fmt = struct.Struct("<" + "".join(f"{len(p)}sd7s" for p in prefixes))
        self.args: list[object] = [b""] * (3 * SERIES)
        self.args[0::3] = prefixes
        self.base = [float((shard * 7919 + s * 104729) % 100_000) for s in range(SERIES)]
        self.rate = [float(1 + s % 13) if s % METRICS % 2 == 0 else 0.0 for s in range(SERIES)]

    def values(self, k: int) -> list[float]:
        """Counters (even metrics) grow by 1-13 a request; gauges (odd) move by multiples of 64."""
        return [b + k * r if r else b * 4096 + ((k * 37 + s * 11) % 97) * 64.0
                for s, (b, r) in enumerate(zip(self.base, self.rate, strict=True))]

    def raw(self, k: int) -> bytes:
        self.args[1::3] = self.values(k)
        self.args[2::3] = [b"\x10" + uvarint(T0_MS + k * STEP_MS)] * SERIES
        return self.fmt.pack(*self.args)

    def body(self, k: int) -> bytes:
        return bytes(cramjam.snappy.compress_raw(self.raw(k)))

    def check(self) -> None:
        req = remote_pb2.WriteRequest()
        req.CopyFrom(self.template)
        for ts, v in zip(req.timeseries, self.values(3), strict=True):
            ts.samples.add(value=v, timestamp=T0_MS + 3 * STEP_MS)
        assert req.SerializeToString() == self.raw(3), "packed body differs from the protobuf serialization"


def write_bodies(path: Path, per_shard: int) -> tuple[int, int]:
    """Every shard's bodies, in order, to `path` (per body: shard, length, bytes); returns the
    size of a body before and after snappy."""
    raw = compressed = 0
    with open(path, "wb") as f:
        for w in range(WORKERS):
            shard = Shard(w)
            if w == 0:
                shard.check()
                raw, compressed = len(shard.raw(0)), len(shard.body(0))
            for k in range(per_shard):
                body = shard.body(k)
                f.write(struct.pack("<II", w, len(body)) + body)
    return raw, compressed


# -- the driver, a process per target -------------------------------------------------------------


def drive(url: str, bodies_path: str) -> None:
    """Send each shard's warm-up bodies and print {"ready"}; then, for each line on stdin (a number
    of seconds), send the shards' next bodies for that long, each shard one request at a time and
    in order, and print the outcome as JSON; stop at end of input."""
    import aiohttp

    with open(bodies_path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    spans: list[list[tuple[int, int]]] = [[] for _ in range(WORKERS)]
    i = 0
    while i < len(data):
        w, n = struct.unpack_from("<II", data, i)
        spans[w].append((i + 8, i + 8 + n))
        i += 8 + n
    nxt = [0] * WORKERS

    async def run() -> None:
        out: dict[str, Any] = {"ok": 0, "failed": 0, "errors": []}

        async def post(session: aiohttp.ClientSession, w: int) -> None:
            start, end = spans[w][nxt[w]]
            nxt[w] += 1
            try:
                async with session.post(url, data=data[start:end], headers=HEADERS) as r:
                    text = await r.read()
                    if 200 <= r.status < 300:
                        out["ok"] += 1
                        return
                    err = f"{r.status} {text[:200]!r}"
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                err = repr(e)
            out["failed"] += 1
            if len(out["errors"]) < 3:
                out["errors"].append(err)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS),
                                         timeout=aiohttp.ClientTimeout(total=60),
                                         skip_auto_headers=("Accept-Encoding",)) as session:
            async def warm(w: int) -> None:
                for _ in range(WARMUP):
                    await post(session, w)

            await asyncio.gather(*(warm(w) for w in range(WORKERS)))
            print(json.dumps({"ready": True, **out}), flush=True)
            loop = asyncio.get_running_loop()

            async def shard(w: int, end: float) -> None:
                while time.monotonic() < end:
                    if nxt[w] == len(spans[w]):
                        out["ran_out"] += 1
                        return
                    await post(session, w)

            while line := await loop.run_in_executor(None, sys.stdin.readline):
                out.update(ok=0, failed=0, errors=[], ran_out=0)
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                start = time.monotonic()
                await asyncio.gather(*(shard(w, start + float(line)) for w in range(WORKERS)))
                out["seconds"] = time.monotonic() - start
                cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                out["cpu"] = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
                print(json.dumps(out), flush=True)

    asyncio.run(run())


# -- measuring ------------------------------------------------------------------------------------


def tree_cpu(root: int) -> float:
    """utime + stime, in seconds, of `root` and every live descendant."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = Path(f"/proc/{entry}/stat").read_text()
                fields = text[text.rindex(")") + 2:].split()  # state, ppid, ..., utime (14th), stime
                parents[int(entry)] = int(fields[1])
                ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree = {root}
    for pid in parents:
        chain = []
        p = pid
        while p in parents and p not in tree and p > 1:
            chain.append(p)
            p = parents[p]
        if p in tree:
            tree.update(chain)
    return sum(ticks.get(pid, 0) for pid in tree) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds used on the machine since boot, all cores (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


@dataclass
class Target:
    """One receiver under test, its driver, and what its windows added up to."""

    name: str
    url: str
    pid: int
    disk: Callable[[], tuple[int, str]]
    """Its bytes on disk now, and what they are."""
    driver: subprocess.Popen[str] | None = None
    ok: int = 0
    warm_ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    driver_cpu: float = 0.0
    others: float = 0.0
    ran_out: int = 0
    errors: list[str] = field(default_factory=list)
    disk_bytes: int = 0
    disk_detail: str = ""

    def start_driver(self, bodies: Path) -> None:
        self.driver = subprocess.Popen(
            [sys.executable, "-c", f"from tests.bench.bench_remote_write import drive; drive({self.url!r}, "
             f"{str(bodies)!r})"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        out = self._read()
        self.warm_ok, self.failed, self.errors = out["ok"], out["failed"], out["errors"]

    def _read(self) -> dict[str, Any]:
        assert self.driver is not None and self.driver.stdout is not None
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"the driver of {self.name} died")
        out: dict[str, Any] = json.loads(line)
        return out

    def window(self, seconds: float) -> None:
        assert self.driver is not None and self.driver.stdin is not None
        cpu0, busy0 = tree_cpu(self.pid), machine_busy()
        self.driver.stdin.write(f"{seconds}\n")
        self.driver.stdin.flush()
        out = self._read()
        cpu = tree_cpu(self.pid) - cpu0
        self.others += machine_busy() - busy0 - cpu - out["cpu"]
        self.cpu += cpu
        self.ok += out["ok"]
        self.failed += out["failed"]
        self.seconds += out["seconds"]
        self.driver_cpu += out["cpu"]
        self.ran_out += out["ran_out"]
        self.errors += out["errors"][:3 - len(self.errors)]

    def stop_driver(self) -> None:
        if self.driver is not None:
            if self.driver.stdin is not None:
                self.driver.stdin.close()
            try:
                self.driver.wait(30)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()

    @property
    def samples_per_s(self) -> float:
        return self.ok * SERIES / self.seconds if self.seconds else math.nan

    @property
    def cpu_per_m(self) -> float:
        return self.cpu / (self.ok * SERIES) * 1e6 if self.ok else math.nan

    @property
    def driver_cpu_per_m(self) -> float:
        return self.driver_cpu / (self.ok * SERIES) * 1e6 if self.ok else math.nan

    def per_sample(self, disk_bytes: int) -> float:
        """`disk_bytes` over every sample acknowledged, warm-up included."""
        return disk_bytes / ((self.ok + self.warm_ok) * SERIES) if self.ok + self.warm_ok else math.nan


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(url)


@contextlib.contextmanager
def prometheus(tmp: Path) -> Iterator[Target]:
    work = tmp / "prometheus"
    work.mkdir()
    (work / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")  # no scrape targets
    tsdb = work / "tsdb"
    port = free_port()
    with open(work / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(["prometheus", "--web.enable-remote-write-receiver",
                                 f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc)

        def disk() -> tuple[int, str]:
            wal, head = dir_bytes(tsdb / "wal"), dir_bytes(tsdb / "chunks_head")
            return dir_bytes(tsdb), f"TSDB dir: WAL {wal / 1e6:.1f} MB, chunks_head {head / 1e6:.1f} MB"

        yield Target("prometheus 2.42", f"http://127.0.0.1:{port}/api/v1/write", proc.pid, disk)
    finally:
        proc.terminate()
        proc.wait(60)


@contextlib.contextmanager
def node(tmp: Path, receivers: int, compacted: dict[str, int]) -> Iterator[Target]:
    """A node, 1 or 2 receivers; once stopped, `compacted[name]` is its WAL once every segment is
    compacted as a segment closing by age is (node.wal.segment.compact)."""
    proc = NodeProcess(tmp / f"node{receivers}", "--receivers", str(receivers), "--storage-backend", "local",
                       "--min-batch-size", "1TB", "--max-segment-age", "1h", name=f"node-{receivers}")
    proc.start()
    assert proc.proc is not None
    wal = proc.storage_dir / "wal"
    name = f"node, {receivers} receiver{'s' if receivers > 1 else ''}"

    def disk() -> tuple[int, str]:
        return dir_bytes(wal, "*.wal"), "WAL segments as written"

    try:
        yield Target(name, proc.http_url + "/api/v1/write", proc.proc.pid, disk)
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            proc.stop(signal.SIGTERM, timeout=60)  # the second signal: exit at once
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; its log ends with:\n" + proc.log()[-4000:])
            raise
    for path in wal.rglob("*.wal"):
        compact(path, scan(path, decompress=False).blocks, parse_filename(path.name).schema is not None)
    compacted[name] = dir_bytes(wal, "*.wal")


def ratio(x: float, y: float) -> float:
    return x / y if y else math.nan


def main() -> None:
    if shutil.which("prometheus") is None:
        print("remote-write bench skipped: prometheus (Debian package prometheus) is not installed")
        return
    per_shard = WARMUP + -(-int(MAX_RATE * SECONDS) // (WORKERS * SERIES))
    compacted: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rw-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        bodies = tmp / "bodies"
        raw, snappy = write_bodies(bodies, per_shard)
        print(f"remote write, the same bodies to each: {WORKERS} connections, each a shard of {SERIES:,} series "
              f"({METRICS} metrics, 10 labels), {SERIES:,} samples a request ({raw / 1024:.0f} KiB, "
              f"{snappy / 1024:.0f} KiB snappy); {SECONDS:g} s per target in {ROUNDS} turns; ratios to Prometheus",
              flush=True)
        targets = [stack.enter_context(prometheus(tmp)), stack.enter_context(node(tmp, 1, compacted)),
                   stack.enter_context(node(tmp, 2, compacted))]
        try:
            for t in targets:
                t.start_driver(bodies)
            for r in range(ROUNDS):
                for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                    t.window(SECONDS / ROUNDS)
            for t in targets:
                t.disk_bytes, t.disk_detail = t.disk()
        finally:
            for t in targets:
                t.stop_driver()
    prom = targets[0]
    prom_disk = prom.per_sample(prom.disk_bytes)
    for t in targets:
        disk = t.per_sample(t.disk_bytes)
        line = (f"{t.name:<21} {t.samples_per_s:9,.0f} samples/s ({ratio(t.samples_per_s, prom.samples_per_s):.2f}), "
                f"{t.failed} requests failed; "
                f"{t.cpu_per_m:5.2f} CPU-s per M samples ({ratio(t.cpu_per_m, prom.cpu_per_m):.2f}); "
                f"{disk:5.1f} B/sample on disk ({ratio(disk, prom_disk):.2f}): {t.disk_detail}")
        if t.name in compacted:
            once = t.per_sample(compacted[t.name])
            line += f"; {once:.1f} B/sample ({ratio(once, prom_disk):.2f}) once compacted"
        print(line)
        print(f"{'':<21} it used {t.cpu / t.seconds if t.seconds else math.nan:.2f} cores, the driver "
              f"{t.driver_cpu_per_m:.2f} CPU-s per M samples, the rest of the machine "
              f"{t.others / t.seconds if t.seconds else math.nan:.2f} cores")
        if t.ran_out:
            print(f"{'':<21} shards ran out of bodies {t.ran_out} times: faster than MAX_RATE, raise it")
        for e in t.errors:
            print(f"{'':<21} failure: {e}")


if __name__ == "__main__":
    main()
