"""Chaos with a delivery oracle: a 3-node cluster under load, faults at random moments, then a check
that every acknowledged row reached the sink.

`python -m tests.chaos.run --faults 20 [--seed N]` (`make chaos`). The seed is printed first: the
same seed replays the same faults at the same moments (the load itself is timing-dependent).

- Load: OTLP metrics over gRPC to a random live node, 10 tables, every point carrying a unique
  `seq` (a metric row's value, a log row's attribute); the sender records which requests were
  acknowledged.
- Faults, by kind: `kill9` (SIGKILL, restart after a pause), `sigterm` (SIGTERM with the node's
  short grace, restart), `kill_owner` (SIGKILL of the node that owns most tables while the others
  stream segments to it: a peer stopped mid-transfer), `peer_unreachable` (SIGSTOP for 1 to 4 s:
  connections to it hang, as to a host cut off the network; network namespaces need more than
  these machines give), and with the ClickHouse sink `sink_down` (the server stopped for 1 to
  4 s) and `disk_full` (the last node's storage is a 96 MB tmpfs, filled to the last 64 KB for 1
  to 4 s; skipped with a message where mounting is impossible).
- Oracle, after the faults stop and the cluster drained: every acknowledged `seq` is in the
  sink; no `seq` that was never sent; duplicates counted; no segment left in any WAL; the cluster
  is live (a new row sent after the faults is delivered).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cramjam
import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from cluster.ring import Ring
from node.gen.prometheus import remote_pb2
from node.rows.series import BASE_SCHEMA
from node.wal.names import make_prefix, schema_hash
from tests.chaos.netns import NetnsError, Network
from tests.harness import ROOT, NodeProcess
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary

TABLES = 10
LOG_TABLES = 3
SERIES = 500
"""Label values per metric table: the seq of a metric row is its value (exact in a double), so the
series stay as few as a real workload's (a label per row would make every row a new series)."""
CHANNELS = ("otlp-metrics", "otlp-logs", "remote-write")
"""How the load reaches the nodes: OTLP/gRPC metrics and logs, Prometheus remote write over HTTP."""
TOKEN = "chaos-token"
KINDS = ("kill9", "sigterm", "kill_owner", "peer_unreachable")
SINK_KINDS = ("sink_down", "disk_full")
SMALL_DISK = 96 << 20
DISK_LEFT = 64 << 10
"""At most this many bytes left in WALs and delivery records once the cluster drained."""


@dataclass
class Report:
    seed: int
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    unknown: int = 0
    duplicates: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    """Acknowledged rows by how they were sent."""
    drain_seconds: float = 0.0
    segments_left: int = 0
    disk_left: int = 0
    """Bytes left in the nodes' WAL and delivery records (the sink's own store aside)."""
    live_after: bool = False

    def ok(self) -> bool:
        return (self.lost == 0 and self.unknown == 0 and self.segments_left == 0 and self.disk_left <= DISK_LEFT
                and self.live_after)

    def __str__(self) -> str:
        return (f"seed {self.seed}: sent {self.sent} rows, acknowledged {self.acked} "
                f"({dict(sorted(self.channels.items()))}), delivered {self.delivered} distinct, lost {self.lost}, "
                f"never sent {self.unknown}, duplicates {self.duplicates}; faults {dict(sorted(self.faults.items()))}; "
                f"drained in {self.drain_seconds:.1f}s; segments left {self.segments_left} ({self.disk_left} bytes); "
                f"live after: {self.live_after}")


class Chaos:
    def __init__(self, root: Path, seed: int, clickhouse: ClickHouseServer | None = None,
                 netns: bool = True) -> None:
        """`clickhouse`: the sink (started here), which the `sink_down` fault stops for a while;
        without it, each node's local sink. `netns`: each node on a host of its own (netns.py),
        so that `peer_unreachable` cuts its link; where that cannot be made, or with False, the
        nodes share loopback and `peer_unreachable` freezes the process."""
        self.rng = random.Random(seed)
        self.load_rng = random.Random(seed + 1)  # the load's choices apart: faults replay by seed alone
        self.report = Report(seed)
        self.clickhouse = clickhouse
        self.net: Network | None = None
        if netns:
            net = Network(3)
            try:
                net.setup()
                self.net = net
            except NetnsError as e:
                print(f"  (no network namespaces here, a peer is made unreachable by SIGSTOP instead: {e})", flush=True)
        net = self.net
        self.nodes = [NodeProcess(root / f"node-{i}", name=f"ingestor-{i}",
                                  host=net.address(i) if net else "127.0.0.1", wrap=net.wrap(i) if net else None)
                      for i in range(3)]
        sink_host = net.host_ip if net else "127.0.0.1"
        if clickhouse is not None and net is not None:
            clickhouse.also_listen(net.host_ip, net.cidr)
        self.small_disk: Path | None = None
        if clickhouse is not None:  # the last node's WAL on a small file system of its own, to fill
            self.small_disk = self.nodes[-1].storage_dir
            self.small_disk.mkdir(parents=True)
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs",
                                      str(self.small_disk)], capture_output=True, text=True)
            if mounted.returncode != 0:
                print(f"  (no disk_full fault: cannot mount a tmpfs here: {mounted.stderr.strip()})", flush=True)
                self.small_disk = None
        peers = ",".join(f"{n.name}={n.grpc_addr}" for n in self.nodes)
        for n in self.nodes:
            n.args += ["--peers", peers, "--peer-token", TOKEN, "--max-segment-age", "1s", "--upload-interval", "0.5s",
                       "--peer-unhealthy-timeout", "3s", "--shutdown-grace", "2s"]
            if clickhouse is not None:
                n.args += ["--storage-backend", "clickhouse",
                           "--metrics-kusto-endpoints", clickhouse.dsn("Metrics", host=sink_host),
                           "--logs-kusto-endpoints", clickhouse.dsn("Logs", host=sink_host)]
        self.ring = Ring(n.name for n in self.nodes)
        self.acked: set[int] = set()
        self.by_channel: Counter[str] = Counter()
        self.seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.down: set[str] = set()

    # -- load -------------------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        with self._lock:
            first = self.seq + 1
            self.seq += n
        self.report.sent += n
        return list(range(first, first + n))

    def send_one(self, node: NodeProcess, points: int = 20, channel: str = "otlp-metrics") -> bool:
        """One request of `points` rows, each with a unique seq, over `channel` (see CHANNELS)."""
        seqs = self._take(points)
        now = time.time_ns()
        try:
            if channel == "remote-write":
                rw = remote_pb2.WriteRequest()
                for s in seqs:
                    ts = rw.timeseries.add()
                    for name, value in sorted({"__name__": f"chaos_{s % TABLES}", "series": str(s % SERIES)}.items()):
                        ts.labels.add(name=name, value=value)
                    ts.samples.add(value=float(s), timestamp=now // 1_000_000)
                body = bytes(cramjam.snappy.compress_raw(rw.SerializeToString()))
                req = urllib.request.Request(f"{node.http_url}/api/v1/write", data=body, method="POST", headers={
                    "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status // 100 != 2:
                        return False
            elif channel == "otlp-logs":
                logs = logs_service_pb2.ExportLogsServiceRequest()
                rl = logs.resource_logs.add()
                rl.resource.attributes.add(key="kusto.database", value={"string_value": "Logs"})
                sl = rl.scope_logs.add()
                for s in seqs:
                    rec = sl.log_records.add(time_unix_nano=now, severity_text="INFO",
                                             body={"string_value": f"row {s}"})
                    rec.attributes.add(key="kusto.table", value={"string_value": f"ChaosLog{s % LOG_TABLES}"})
                    rec.attributes.add(key="seq", value={"string_value": str(s)})
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    logs_service_pb2_grpc.LogsServiceStub(ch).Export(logs, timeout=5)
            else:
                req_m = metrics_service_pb2.ExportMetricsServiceRequest()
                sm = req_m.resource_metrics.add().scope_metrics.add()
                for s in seqs:
                    m = sm.metrics.add(name=f"chaos_{s % TABLES}")
                    dp = m.gauge.data_points.add(time_unix_nano=now, as_double=float(s))
                    dp.attributes.add(key="series", value={"string_value": str(s % SERIES)})
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(req_m, timeout=5)
        except (grpc.RpcError, OSError):  # urllib's HTTPError and URLError are OSErrors
            return False
        with self._lock:
            self.acked.update(seqs)
            self.by_channel[channel] += len(seqs)
        return True

    def _load(self) -> None:
        while not self._stop.is_set():
            up = [n for n in self.nodes if n.name not in self.down]
            if up:
                self.send_one(self.load_rng.choice(up), channel=self.load_rng.choice(CHANNELS))
            time.sleep(0.02)

    # -- faults -----------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        if kind == "disk_full":
            assert self.small_disk is not None
            filler = self.small_disk / "filler"
            free = shutil.disk_usage(self.small_disk).free
            with open(filler, "wb") as f, contextlib.suppress(OSError):  # every byte but a few blocks
                for _ in range(max(0, free - (64 << 10)) // (1 << 20)):
                    f.write(b"\0" * (1 << 20))
                f.flush()
            time.sleep(self.rng.uniform(1.0, 4.0))
            filler.unlink()
            self.report.faults[kind] += 1
            return
        if kind == "peer_unreachable":  # its link cut (or, without namespaces, the process frozen)
            i = self.rng.randrange(len(self.nodes))
            victim = self.nodes[i]
            assert victim.proc is not None
            self.down.add(victim.name)
            if self.net is not None:
                self.net.cut(i)
            else:
                victim.proc.send_signal(signal.SIGSTOP)
            time.sleep(self.rng.uniform(1.0, 4.0))
            if self.net is not None:
                self.net.heal(i)
            else:
                victim.proc.send_signal(signal.SIGCONT)
            self.down.discard(victim.name)
            self.report.faults[kind] += 1
            return
        if kind == "sink_down":
            assert self.clickhouse is not None
            self.clickhouse.stop()
            time.sleep(self.rng.uniform(1.0, 4.0))
            self.clickhouse.start()
            self.report.faults[kind] += 1
            return
        if kind == "kill_owner":
            owners = Counter(self.ring.owner(make_prefix("Metrics", f"Chaos{t}", schema_hash(BASE_SCHEMA)))
                             for t in range(TABLES))
            name = owners.most_common(1)[0][0]
            victim = next(n for n in self.nodes if n.name == name)
        else:
            victim = self.rng.choice(self.nodes)
        self.down.add(victim.name)
        victim.stop(signal.SIGKILL if kind in ("kill9", "kill_owner") else signal.SIGTERM, timeout=60)
        time.sleep(self.rng.uniform(0.5, 3.0))
        victim.start(timeout=60)
        self.down.discard(victim.name)
        self.report.faults[kind] += 1

    # -- the oracle -------------------------------------------------------------------------

    QUERIES = (("Value", "SELECT Value FROM merge('Metrics', '^Chaos')"),
               ("Attributes", "SELECT Attributes FROM merge('Logs', '^ChaosLog')"))

    @staticmethod
    def _seq(column: str, value: object) -> int:
        if column == "Value":  # a metric row's value is its seq
            return int(float(value))  # type: ignore[arg-type]
        attrs = json.loads(value) if isinstance(value, str) else value
        return int(attrs["seq"])  # type: ignore[index]

    def stored(self) -> Counter[int]:
        """How many times each seq is in the sink: metric values and log attributes."""
        seen: Counter[int] = Counter()
        if self.clickhouse is not None:
            from tests.sinks.test_clickhouse import admin

            for column, sql in self.QUERIES:
                try:
                    rows = admin(self.clickhouse).query(sql)
                except Exception:
                    continue  # no table yet
                for (value,) in rows:
                    seen[self._seq(column, value)] += 1
            return seen
        for node in self.nodes:
            if not (node.storage_dir / "local" / "metadata").is_dir():
                continue
            for column, sql in self.QUERIES:
                r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(node.storage_dir),
                                    "--format", "json", sql], capture_output=True, text=True, timeout=120, cwd=ROOT)
                if r.returncode != 0:
                    if "UNKNOWN_DATABASE" in r.stderr or "no table" in r.stderr.lower():
                        continue
                    raise RuntimeError(r.stderr)
                for line in r.stdout.splitlines():
                    seen[self._seq(column, json.loads(line)[column])] += 1
        return seen

    def segments_left(self) -> int:
        return sum(len(list((n.storage_dir / "wal").rglob("*.wal"))) for n in self.nodes)

    def disk_left(self) -> int:
        return sum(p.stat().st_size for n in self.nodes for d in ("wal", "deliveries")
                   for p in (n.storage_dir / d).rglob("*") if p.is_file())

    def run(self, faults: int, kinds: tuple[str, ...] | None = None, steady: float | None = None) -> Report:
        """`faults` random faults of `kinds`, then the oracle; `steady`: seconds of load before them."""
        if kinds is None:
            kinds = KINDS + (("sink_down",) if self.clickhouse is not None else ())
            kinds += ("disk_full",) if self.small_disk is not None else ()
        sink = "ClickHouse" if self.clickhouse is not None else "local"
        hosts = "a network namespace each" if self.net is not None else "loopback"
        print(f"chaos: seed {self.report.seed}, {faults} faults of {', '.join(kinds)}, {sink} sink, nodes on {hosts}",
              flush=True)
        try:
            return self._run(faults, kinds, steady)
        finally:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is None:
                    n.kill()
            self.close()

    def close(self) -> None:
        """Undo what __init__ made: the small disk's mount, the namespaces (idempotent)."""
        if self.small_disk is not None:
            subprocess.run(["umount", "-l", str(self.small_disk)], check=False)
            self.small_disk = None
        if self.net is not None:
            self.net.teardown()

    def _run(self, faults: int, kinds: tuple[str, ...], steady: float | None) -> Report:
        if self.clickhouse is not None:
            self.clickhouse.start()
        for n in self.nodes:
            n.start()
        loader = threading.Thread(target=self._load, daemon=True)
        loader.start()
        try:
            if steady is not None:  # a soak: load, no faults
                time.sleep(steady)
            # every kind at least once when there are enough faults, the rest drawn at random
            schedule = list(kinds)[:faults] + [self.rng.choice(kinds) for _ in range(faults - len(kinds))]
            self.rng.shuffle(schedule)
            for kind in schedule:
                time.sleep(self.rng.uniform(0.5, 2.5))
                print(f"  fault: {kind}", flush=True)
                self.fault(kind)
        finally:
            self._stop.set()
            loader.join(30)
        t0 = time.monotonic()
        self.report.live_after = self.send_one(self.nodes[0], points=1)
        deadline = t0 + 180
        while time.monotonic() < deadline:
            if self.segments_left() == 0:
                seen = self.stored()
                if self.acked <= set(seen):
                    break
            time.sleep(1.0)
        self.report.drain_seconds = time.monotonic() - t0
        for n in self.nodes:
            n.stop()
        seen = self.stored()
        if self.clickhouse is not None:
            self.clickhouse.stop()
        r = self.report
        r.acked = len(self.acked)
        r.channels = self.by_channel
        r.delivered = len(seen)
        r.lost = len(self.acked - set(seen))
        r.unknown = sum(1 for s in seen if not 0 < s <= self.seq)
        r.duplicates = sum(n - 1 for n in seen.values() if n > 1)
        r.segments_left = self.segments_left()
        r.disk_left = self.disk_left()
        return r


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run")
    p.add_argument("--faults", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--kinds", default=None, help="comma separated fault kinds (default: all the sink allows)")
    p.add_argument("--sink", choices=["clickhouse", "local"], default=None,
                   help="default: ClickHouse (with the sink_down fault) when clickhouse-server is installed")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    sink = args.sink or ("clickhouse" if find_binary() else "local")
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        server = ClickHouseServer(Path(tmp) / "clickhouse") if sink == "clickhouse" else None
        try:
            kinds = tuple(args.kinds.split(",")) if args.kinds else None
            report = Chaos(Path(tmp), seed, server).run(args.faults, kinds)
        finally:
            if server is not None:
                server.stop()
    print(report)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
