"""Chaos with a delivery oracle: a 3-node cluster under load, faults at random moments, then a check
that every acknowledged row reached the sink.

`python -m tests.chaos.run --faults 20 [--seed N]` (`make chaos`). The seed is printed first: the
same seed replays the same faults at the same moments (the load itself is timing-dependent).

- Load: OTLP metrics over gRPC to a random live node, 10 tables, every point carrying a unique
  `seq` label; the sender records which requests were acknowledged.
- Faults, by kind: `kill9` (SIGKILL, restart after a pause), `sigterm` (SIGTERM with the node's
  short grace, restart), `kill_owner` (SIGKILL of the node that owns most tables while the others
  stream segments to it: a peer stopped mid-transfer), `peer_unreachable` (SIGSTOP for 1 to 4 s:
  connections to it hang, as to a host cut off the network; network namespaces need more than
  these machines give), and with the ClickHouse sink `sink_down` (the server stopped for 1 to
  4 s) and `disk_full` (the last node's storage is a 96 MB tmpfs, filled to the last 64 KB for 1
  to 4 s; skipped with a message where mounting is impossible).
- Oracle, after the faults stop and the cluster drained: every acknowledged `seq` is in a local
  store; no `seq` that was never sent; duplicates counted; no segment left in any WAL; the cluster
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from cluster.ring import Ring
from node.rows.series import BASE_SCHEMA
from node.wal.names import make_prefix, schema_hash
from tests.harness import ROOT, NodeProcess
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary

TABLES = 10
TOKEN = "chaos-token"
KINDS = ("kill9", "sigterm", "kill_owner", "peer_unreachable")
SINK_KINDS = ("sink_down", "disk_full")
SMALL_DISK = 96 << 20


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
    drain_seconds: float = 0.0
    segments_left: int = 0
    live_after: bool = False

    def ok(self) -> bool:
        return self.lost == 0 and self.unknown == 0 and self.segments_left == 0 and self.live_after

    def __str__(self) -> str:
        return (f"seed {self.seed}: sent {self.sent} rows, acknowledged {self.acked}, delivered {self.delivered} "
                f"distinct, lost {self.lost}, never sent {self.unknown}, duplicates {self.duplicates}; faults "
                f"{dict(sorted(self.faults.items()))}; drained in {self.drain_seconds:.1f}s; segments left "
                f"{self.segments_left}; live after: {self.live_after}")


class Chaos:
    def __init__(self, root: Path, seed: int, clickhouse: ClickHouseServer | None = None) -> None:
        """`clickhouse`: the sink (started here), which the `sink_down` fault stops for a while;
        without it, each node's local sink."""
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.clickhouse = clickhouse
        self.nodes = [NodeProcess(root / f"node-{i}", name=f"ingestor-{i}") for i in range(3)]
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
                n.args += ["--storage-backend", "clickhouse", "--metrics-kusto-endpoints", clickhouse.dsn("Metrics")]
        self.ring = Ring(n.name for n in self.nodes)
        self.acked: set[int] = set()
        self.seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.down: set[str] = set()

    # -- load -------------------------------------------------------------------------------

    def send_one(self, node: NodeProcess, points: int = 20) -> bool:
        req = metrics_service_pb2.ExportMetricsServiceRequest()
        sm = req.resource_metrics.add().scope_metrics.add()
        now = time.time_ns()
        seqs = []
        with self._lock:
            for _ in range(points):
                self.seq += 1
                seqs.append(self.seq)
        for s in seqs:
            m = sm.metrics.add(name=f"chaos_{s % TABLES}")
            dp = m.gauge.data_points.add(time_unix_nano=now, as_double=float(s))
            dp.attributes.add(key="seq", value={"string_value": str(s)})
        self.report.sent += points
        try:
            with grpc.insecure_channel(node.grpc_addr) as ch:
                metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(req, timeout=5)
        except grpc.RpcError:
            return False
        with self._lock:
            self.acked.update(seqs)
        return True

    def _load(self) -> None:
        while not self._stop.is_set():
            up = [n for n in self.nodes if n.name not in self.down]
            if up:
                self.send_one(self.rng.choice(up))
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
        if kind == "peer_unreachable":  # frozen: connections hang, as to a host cut off the network
            victim = self.rng.choice(self.nodes)
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGSTOP)
            time.sleep(self.rng.uniform(1.0, 4.0))
            victim.proc.send_signal(signal.SIGCONT)
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

    def stored(self) -> Counter[int]:
        seen: Counter[int] = Counter()
        if self.clickhouse is not None:
            from tests.sinks.test_clickhouse import admin

            try:
                rows = admin(self.clickhouse).query("SELECT Labels FROM merge('Metrics', '^Chaos')")
            except Exception:
                return seen  # no table yet
            for (labels,) in rows:
                seen[int(json.loads(labels)["seq"])] += 1
            return seen
        for node in self.nodes:
            if not (node.storage_dir / "local" / "metadata").is_dir():
                continue
            r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(node.storage_dir),
                                "--format", "json", "SELECT Labels FROM merge('Metrics', '^Chaos')"],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            for line in r.stdout.splitlines():
                labels = json.loads(line)["Labels"]
                labels = json.loads(labels) if isinstance(labels, str) else labels
                seen[int(labels["seq"])] += 1
        return seen

    def segments_left(self) -> int:
        return sum(len(list((n.storage_dir / "wal").rglob("*.wal"))) for n in self.nodes)

    def run(self, faults: int, kinds: tuple[str, ...] | None = None, steady: float | None = None) -> Report:
        """`faults` random faults of `kinds`, then the oracle; `steady`: seconds of load before them."""
        if kinds is None:
            kinds = KINDS + (("sink_down",) if self.clickhouse is not None else ())
            kinds += ("disk_full",) if self.small_disk is not None else ()
        sink = "ClickHouse" if self.clickhouse is not None else "local"
        print(f"chaos: seed {self.report.seed}, {faults} faults of {', '.join(kinds)}, {sink} sink", flush=True)
        if self.clickhouse is not None:
            self.clickhouse.start()
        for n in self.nodes:
            n.start()
        loader = threading.Thread(target=self._load, daemon=True)
        loader.start()
        try:
            if steady is not None:  # a soak: load, no faults
                time.sleep(steady)
            for _ in range(faults):
                time.sleep(self.rng.uniform(0.5, 2.5))
                kind = self.rng.choice(kinds)
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
        if self.small_disk is not None:
            subprocess.run(["umount", "-l", str(self.small_disk)], check=False)
        r = self.report
        r.acked = len(self.acked)
        r.delivered = len(seen)
        r.lost = len(self.acked - set(seen))
        r.unknown = sum(1 for s in seen if not 0 < s <= self.seq)
        r.duplicates = sum(n - 1 for n in seen.values() if n > 1)
        r.segments_left = self.segments_left()
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
