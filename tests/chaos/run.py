"""Chaos with a delivery oracle: a 3-node cluster under load, faults at random moments, then a check
that every acknowledged row reached the sink.

`python -m tests.chaos.run --faults 20 [--seed N] [--shape user|narrow]` (`make chaos`). The seed
is printed first: the same seed replays the same faults at the same moments and the same segment
ages (the load itself is timing-dependent).

- Shape (`SHAPES`): `user`, the default, is what `make run` gives a user: two receiver processes
  per node (`--receivers 2`), each node's `--max-segment-age` drawn in 1 to 3 s, the load spread
  over 300 metric tables and 10 log tables, and a real Prometheus as a second load (prom.py);
  `narrow` is the earlier shape: one receiver, 1 s segments, 10 + 3 tables, no Prometheus.
- Load: requests of 20 rows to a random live node over OTLP/gRPC metrics, OTLP/gRPC logs or
  remote write, every row carrying a unique `seq` (a metric row's value, a log row's
  attribute); the sender records which requests were acknowledged. With Prometheus: it scrapes
  itself and the nodes each second and remote-writes to node 0 (prom.py). With adx-mon collectors
  (the user shape: 2; `--adxmon N`): segments POSTed to the nodes' transfer doors, retried with the
  same name and bytes until a 202, a POST held in flight at each whole-node fault and one made
  during each full disk (adxmon.py).
- Faults, by kind: `kill9` (SIGKILL of the node's every process, restart after a pause),
  `sigterm` (SIGTERM with the node's short grace, restart), `kill_owner` (SIGKILL of the node that
  owns most tables while the others stream segments to it: a peer stopped mid-transfer),
  `kill_receiver` (two receivers or more: SIGKILL of one receiver process, which its supervisor
  restarts), `peer_unreachable` (its network link cut for 1 to 4 s, netns.py; SIGSTOP where
  namespaces cannot be made), `disk_full` (the last node's storage is a small tmpfs, filled to
  its last 64 KB for 1 to 4 s; skipped with a message where mounting is impossible) and with the
  ClickHouse sink `sink_down` (the server stopped for 1 to 4 s).
- Oracle, after the faults stop and the cluster drained: every acknowledged `seq` is in the
  sink; no `seq` that was never sent; duplicates counted; no segment left in any WAL; the cluster
  is live (a new row sent after the faults is delivered); Prometheus's every sample is in the
  sink (prom.py); no process of a stopped node left running; every adx-mon segment's rows in the
  sink as many times as the nodes' transfer ledgers published it, at least once if acknowledged
  (adxmon.py; copies of a segment two nodes published are left out of the duplicates).
"""

from __future__ import annotations

import argparse
import csv
import io
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
from tests.chaos import procs
from tests.chaos.adxmon import AdxmonLoad, AdxmonReport, Segment, published_keys
from tests.chaos.netns import NetnsError, Network
from tests.chaos.prom import Key, PrometheusLoad, PromReport, compare, expected
from tests.harness import ROOT, NodeProcess, fill
from tests.sinks.clickhouse_server import ClickHouseServer, find_binary


@dataclass(frozen=True)
class Shape:
    """How the nodes run and how wide the load is."""

    name: str
    receivers: int
    tables: int
    """Metric tables of the chaos load (`Chaos0`..); log tables apart."""
    log_tables: int
    ages: tuple[float, float]
    """Each node's --max-segment-age is drawn (by seed) in this range of seconds."""
    prometheus: bool
    adxmon: int = 0
    """adx-mon collectors POSTing segments to the nodes' transfer front doors (adxmon.py); 0: none."""
    wide: float = 0.0
    """Share of the metrics requests that carry a row for every metric table (a Prometheus shard's
    shape: the node writes them through its WAL journal, `--wal-journal-tables`), not 20 rows."""


SHAPES = {
    "user": Shape("user", receivers=2, tables=300, log_tables=10, ages=(1.0, 3.0), prometheus=True, adxmon=2,
                  wide=0.25),
    "narrow": Shape("narrow", receivers=1, tables=10, log_tables=3, ages=(1.0, 1.0), prometheus=False),
}
SERIES = 500
"""Label values per metric table: the seq of a metric row is its value (exact in a double), so the
series stay as few as a real workload's (a label per row would make every row a new series)."""
CHANNELS = ("otlp-metrics", "otlp-logs", "remote-write")
"""How the load reaches the nodes: OTLP/gRPC metrics and logs, Prometheus remote write over HTTP."""
TOKEN = "chaos-token"
KINDS = ("kill9", "sigterm", "kill_owner", "peer_unreachable")
SINK_KINDS = ("sink_down", "disk_full")
SMALL_DISK = 384 << 20
"""The node refuses writes under 256 MiB free (`--min-free-disk`): the small disk is made larger."""
SMALL_DISK_LOCAL = 640 << 20
"""With the local sink the node's embedded store shares the small disk with its WAL."""
DISK_FREE = 64 << 10
"""What the disk_full fault leaves free."""
DISK_LEFT = 64 << 10
"""At most this many bytes left in WALs and delivery records once the cluster drained."""
def allowed_duplicates(acked: int) -> int:
    """Duplicates of acknowledged rows a ClickHouse run may show: ClickHouse 18.16 (what CI installs)
    has no insert_deduplication_token, so an insert that landed while its answer was lost (the
    server stopped, a node killed), or one whose ledger row was not written after its attach, is
    stored again when retried (docs/reliability.md, known windows). Seen: 0 in most runs, 9 of
    19,321 (seed 4294788432), 3 of 57,522 (seed 5353)."""
    return acked // 100


STUCK_AFTER = 60.0
"""A drain still running after this many seconds gets its nodes' stacks dumped (dump_stuck)."""


@dataclass
class Report:
    seed: int
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    unknown: int = 0
    duplicates: int = 0
    duplicates_by: Counter[str] = field(default_factory=Counter)
    """The duplicates by how their request was sent: its channel, and "wide" for a metrics request
    over every table (through the nodes' WAL journal)."""
    faults: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    """Acknowledged rows by how they were sent."""
    drain_seconds: float = 0.0
    segments_left: int = 0
    disk_left: int = 0
    """Bytes left in the nodes' WAL and delivery records (the sink's own store aside)."""
    live_after: bool = False
    shape: str = ""
    ages: dict[str, float] = field(default_factory=dict)
    """Each node's --max-segment-age."""
    prom: PromReport | None = None
    adxmon: AdxmonReport | None = None
    """The adx-mon collectors' segments (shapes with them); their rows are in the counts above too."""
    leftovers: list[str] = field(default_factory=list)
    """Processes of a stopped node still running after it (pid and command line)."""
    errors: list[str] = field(default_factory=list)
    """Failures besides the counts: a local store the oracle cannot open, a receiver not restarted."""
    lost_requests: list[str] = field(default_factory=list)
    """The acknowledged requests whose rows were lost (UTC time, channel, node, tables)."""

    def ok(self, clickhouse: bool = False) -> bool:
        """The oracle (docs/reliability.md); `clickhouse`: duplicates are bounded (`allowed_duplicates`;
        Prometheus's: at most what it resent), where the local sink only reports them."""
        return (self.lost == 0 and self.unknown == 0 and self.segments_left == 0 and self.disk_left <= DISK_LEFT
                and self.live_after and not self.leftovers and not self.errors
                and (not clickhouse or self.duplicates <= allowed_duplicates(self.acked))
                and (self.prom is None or self.prom.ok(duplicates_allowed=not clickhouse))
                and (self.adxmon is None or self.adxmon.ok()))

    def __str__(self) -> str:
        ages = ", ".join(f"{a:.1f}" for _, a in sorted(self.ages.items()))
        prom = f"; {self.prom}" if self.prom is not None else ""
        prom += f"; {self.adxmon}" if self.adxmon is not None else ""
        left = f"; processes left after a stop: {self.leftovers}" if self.leftovers else ""
        left += f"; errors: {self.errors}" if self.errors else ""
        if self.lost_requests:
            shown = self.lost_requests[:20]
            more = len(self.lost_requests) - len(shown)
            left += "\n  lost, by request:\n    " + "\n    ".join(shown) + (f"\n    ... {more} more" if more else "")
        return (f"seed {self.seed} ({self.shape} shape, segment ages {ages} s): sent {self.sent} rows, "
                f"acknowledged {self.acked} "
                f"({dict(sorted(self.channels.items()))}), delivered {self.delivered} distinct, lost {self.lost}, "
                f"never sent {self.unknown}, duplicates {self.duplicates}"
                f"{f' {dict(sorted(self.duplicates_by.items()))}' if self.duplicates else ''}; "
                f"faults {dict(sorted(self.faults.items()))}; "
                f"drained in {self.drain_seconds:.1f}s; segments left {self.segments_left} ({self.disk_left} bytes); "
                f"live after: {self.live_after}{prom}{left}")


class Chaos:
    def __init__(self, root: Path, seed: int, clickhouse: ClickHouseServer | None = None, netns: bool = True,
                 shape: Shape = SHAPES["user"], small_disk: bool = True, victims: tuple[int, ...] | None = None,
                 prom_target: int = 0, adxmon: int | None = None) -> None:
        """`clickhouse`: the sink (started here), which the `sink_down` fault stops for a while;
        without it, each node's local sink. `netns`: each node on a host of its own (netns.py),
        so that `peer_unreachable` cuts its link; where that cannot be made, or with False, the
        nodes share loopback and `peer_unreachable` freezes the process. `small_disk`: the last
        node's storage on a small tmpfs (the `disk_full` fault). `victims`: the nodes (indexes)
        that whole-node faults other than `kill_owner` pick from (default: all). `prom_target`: the node
        Prometheus remote-writes to (shapes with Prometheus). `adxmon`: adx-mon collectors (default:
        the shape's)."""
        self.rng = random.Random(seed)
        self.load_rng = random.Random(seed + 1)  # the load's choices apart: faults replay by seed alone
        self.shape = shape
        self.report = Report(seed, shape=shape.name)
        self.clickhouse = clickhouse
        self.net: Network | None = None
        if netns:
            made = Network(3)
            try:
                made.setup()
                self.net = made
            except NetnsError as e:
                print(f"  (no network namespaces here, a peer is made unreachable by SIGSTOP instead: {e})", flush=True)
        net = self.net
        self.root = root
        self.nodes = [NodeProcess(root / f"node-{i}", name=f"ingestor-{i}",
                                  host=net.address(i) if net else "127.0.0.1", wrap=net.wrap(i) if net else None)
                      for i in range(3)]
        self.victims = [self.nodes[i] for i in (victims if victims is not None else range(3))]
        sink_host = net.host_ip if net else "127.0.0.1"
        if clickhouse is not None and net is not None:
            clickhouse.also_listen(net.host_ip, net.cidr)
        self.small_disk: Path | None = None
        if small_disk:  # the last node's storage on a small file system of its own, to fill
            self.small_disk = self.nodes[-1].storage_dir
            self.small_disk.mkdir(parents=True)
            size = SMALL_DISK if clickhouse is not None else SMALL_DISK_LOCAL
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                      str(self.small_disk)], capture_output=True, text=True)
            if mounted.returncode != 0:
                print(f"  (no disk_full fault: cannot mount a tmpfs here: {mounted.stderr.strip()})", flush=True)
                self.small_disk = None
        peers = ",".join(f"{n.name}={n.grpc_addr}" for n in self.nodes)
        for n in self.nodes:
            age = round(self.rng.uniform(*shape.ages), 1)
            self.report.ages[n.name] = age
            n.args += ["--peers", peers, "--peer-token", TOKEN, "--receivers", str(shape.receivers),
                       "--max-segment-age", f"{age}s", "--upload-interval", "0.5s",
                       "--peer-unhealthy-timeout", "3s", "--shutdown-grace", "2s"]
            if clickhouse is not None:
                n.args += ["--storage-backend", "clickhouse",
                           "--metrics-kusto-endpoints", clickhouse.dsn("Metrics", host=sink_host),
                           "--logs-kusto-endpoints", clickhouse.dsn("Logs", host=sink_host)]
        self.prom: PrometheusLoad | None = None
        if shape.prometheus:
            self.prom = PrometheusLoad(root / "prometheus", [f"{n.host}:{n.http_port}" for n in self.nodes],
                                       self.nodes[prom_target].http_url + "/api/v1/write")
        self.ring = Ring(n.name for n in self.nodes)
        self.acked: set[int] = set()
        self.requests: list[tuple[int, int, str, str, float]] = []
        """Acknowledged requests: (first seq, rows, channel, node, wall-clock time)."""
        self.request_tables: dict[int, str] = {}
        """The table of an acknowledged request by its first seq, where it is not the seq's
        (adx-mon's segments: one table each)."""
        self.by_channel: Counter[str] = Counter()
        self.seq = 0
        self._lock = threading.Lock()
        collectors = shape.adxmon if adxmon is None else adxmon
        self.adxmon: AdxmonLoad | None = None
        if collectors:
            self.adxmon = AdxmonLoad(self.nodes, self._take, seed, collectors, shape.tables, shape.log_tables,
                                     self._adxmon_acked)
        self._stop = threading.Event()
        self.down: set[str] = set()
        self.final = False
        """The nodes stopped: the sink is read for the oracle (a failure to read it is one)."""
        self.drain_timeout = 300.0
        """Seconds the cluster gets to deliver everything once the faults and the load stopped."""

    # -- load -------------------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        with self._lock:
            first = self.seq + 1
            self.seq += n
            self.report.sent += n  # the adx-mon collectors take seqs from threads of their own
        return list(range(first, first + n))

    def send_one(self, node: NodeProcess, points: int = 20, channel: str = "otlp-metrics") -> bool:
        """One request of `points` rows, each with a unique seq, over `channel` (see CHANNELS).
        Row `s` goes to metric table `Chaos<s % tables>` or log table `ChaosLog<s % log_tables>`."""
        seqs = self._take(points)
        tables, log_tables = self.shape.tables, self.shape.log_tables
        now = time.time_ns()
        try:
            if channel == "remote-write":
                rw = remote_pb2.WriteRequest()
                for s in seqs:
                    ts = rw.timeseries.add()
                    for name, value in sorted({"__name__": f"chaos_{s % tables}", "series": str(s % SERIES)}.items()):
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
                    rec.attributes.add(key="kusto.table", value={"string_value": f"ChaosLog{s % log_tables}"})
                    rec.attributes.add(key="seq", value={"string_value": str(s)})
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    logs_service_pb2_grpc.LogsServiceStub(ch).Export(logs, timeout=5)
            else:
                req_m = metrics_service_pb2.ExportMetricsServiceRequest()
                sm = req_m.resource_metrics.add().scope_metrics.add()
                for s in seqs:
                    m = sm.metrics.add(name=f"chaos_{s % tables}")
                    dp = m.gauge.data_points.add(time_unix_nano=now, as_double=float(s))
                    dp.attributes.add(key="series", value={"string_value": str(s % SERIES)})
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(req_m, timeout=5)
        except (grpc.RpcError, OSError):  # urllib's HTTPError and URLError are OSErrors
            return False
        with self._lock:
            self.acked.update(seqs)
            self.by_channel[channel] += len(seqs)
            self.requests.append((seqs[0], len(seqs), channel, node.name, time.time()))
        return True

    def _adxmon_acked(self, segment: Segment, node: str) -> None:
        with self._lock:
            self.acked.update(segment.seqs())
            self.by_channel[segment.channel] += segment.rows
            self.requests.append((segment.first, segment.rows, segment.channel, node, time.time()))
            self.request_tables[segment.first] = segment.table

    def describe_lost(self, lost: set[int]) -> list[str]:
        """Lost rows by the request that carried them: channel, node, when, tables."""
        out = []
        for first, n, channel, node, at in self.requests:
            missing = [s for s in range(first, first + n) if s in lost]
            if missing:
                log = channel.endswith("logs")
                tables = [self.request_tables[first]] if first in self.request_tables else sorted(
                    {f"ChaosLog{s % self.shape.log_tables}" if log else f"Chaos{s % self.shape.tables}"
                     for s in missing})
                stamp = time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"
                out.append(f"{stamp} {channel} to {node}: {len(missing)} of {n} rows (seq {first}..{first + n - 1}) "
                           f"lost, tables {', '.join(tables[:6])}{' ...' if len(tables) > 6 else ''}")
        return out

    @property
    def loading(self) -> bool:
        """The load runs (from the start until the faults and the tail are over)."""
        return not self._stop.is_set()

    def _load(self) -> None:
        while not self._stop.is_set():
            up = [n for n in self.nodes if n.name not in self.down]
            if up:
                channel = self.load_rng.choice(CHANNELS)
                wide = channel != "otlp-logs" and self.load_rng.random() < self.shape.wide
                self.send_one(self.load_rng.choice(up), points=self.shape.tables if wide else 20, channel=channel)
            time.sleep(0.02)

    # -- processes --------------------------------------------------------------------------

    def _leftovers(self, node: NodeProcess, pids: list[int]) -> None:
        """Processes of a node that stopped, still running 10 s later: noted and killed."""
        for p in procs.wait_gone(pids, 10.0):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            self.report.leftovers.append(f"{node.name}: pid {p} {cmd.strip()[:120]}")
            print(f"  ! {node.name}: process {p} still running after the node stopped: {cmd[:120]}", flush=True)
        procs.signal_all(pids, signal.SIGKILL)
        procs.wait_gone(pids, 10.0)

    @staticmethod
    def _receivers(node: NodeProcess, want: int, timeout: float) -> list[int]:
        """The node's receiver processes once there are `want` of them (or what there is after `timeout`)."""
        assert node.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(procs.receivers(node.proc.pid))
            if len(found) >= want or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def kill_node(self, node: NodeProcess) -> None:
        """SIGKILL of the node's every process (as a container's); reaped."""
        assert node.proc is not None
        procs.kill_tree(node.proc.pid)
        node.proc.wait(30)

    def stop_node(self, node: NodeProcess, timeout: float = 60.0) -> None:
        """SIGTERM and wait; its receivers must be gone with it."""
        assert node.proc is not None
        pids = procs.tree(node.proc.pid)
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  ! {node.name} did not stop within {timeout:.0f}s of SIGTERM: its stacks, then killed",
                  flush=True)
            self.report.leftovers.append(f"{node.name}: no exit within {timeout:.0f}s of SIGTERM")
            self.dump_stacks(node)
            procs.kill_tree(node.proc.pid)
            node.proc.wait(30)
        self._leftovers(node, pids[1:])

    # -- faults -----------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        if kind == "disk_full":
            assert self.small_disk is not None
            filler = fill(self.small_disk, leave=DISK_FREE)  # every byte but the last 64 KB
            pause = self.rng.uniform(1.0, 4.0)
            t0 = time.monotonic()
            if self.adxmon is not None:  # adx-mon's collector meets the full disk: 429, retried later
                self.adxmon.probe(kind, self.nodes[-1])
            time.sleep(max(0.0, pause - (time.monotonic() - t0)))
            filler.unlink(missing_ok=True)  # not made when the nodes had filled the disk already
            self.report.faults[kind] += 1
            return
        if kind == "peer_unreachable":  # its link cut (or, without namespaces, the processes frozen)
            victim = self.rng.choice(self.victims)
            i = self.nodes.index(victim)
            assert victim.proc is not None
            self.down.add(victim.name)
            held = self.adxmon.hold(kind, victim) if self.adxmon is not None else None
            frozen = []
            if self.net is not None:
                self.net.cut(i)
            else:
                frozen = procs.tree(victim.proc.pid)
                procs.signal_all(frozen, signal.SIGSTOP)
            time.sleep(self.rng.uniform(1.0, 4.0))
            if self.net is not None:
                self.net.heal(i)
            else:
                procs.signal_all(frozen, signal.SIGCONT)
            if held is not None:  # the rest of the body, or the answer, once the link is back
                held.finish()
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
        if kind == "kill_receiver":  # one receiver process (not the supervisor) of any node, which stays up
            victim = self.rng.choice(self.nodes)
            assert victim.proc is not None
            pick = self.rng.random()
            want = self.shape.receivers - 1
            children = self._receivers(victim, want, 15.0)  # one killed just before is being restarted
            if children:
                pid = children[int(pick * len(children))]
                procs.signal_all([pid], signal.SIGKILL)
                procs.wait_gone([pid], 10.0)
                back = [p for p in self._receivers(victim, want, 15.0) if p != pid]
                if len(back) < want:
                    error = f"{victim.name}: receiver {pid} killed, not restarted within 15 s"
                    self.report.errors.append(error)
                    print(f"  ! {error}", flush=True)
            else:
                print(f"  ({victim.name} has no receiver process to kill)", flush=True)
            self.report.faults[kind] += 1
            return
        if kind == "kill_owner":
            owners = Counter(self.ring.owner(make_prefix("Metrics", f"Chaos{t}", schema_hash(BASE_SCHEMA)))
                             for t in range(self.shape.tables))
            name = owners.most_common(1)[0][0]
            victim = next(n for n in self.nodes if n.name == name)
        else:
            victim = self.rng.choice(self.victims)
        self.down.add(victim.name)
        # a POST of adx-mon's collector in flight at the node as it is killed or stopped
        held = self.adxmon.hold(kind, victim) if self.adxmon is not None else None
        if kind in ("kill9", "kill_owner"):
            self.kill_node(victim)
            if held is not None:
                held.finish()
        else:
            if held is not None:  # the rest of the body while the node drains (its grace is 2 s)
                held.finish_later(0.3)
            self.stop_node(victim)
            if held is not None:
                held.join()
        time.sleep(self.rng.uniform(0.5, 3.0))
        victim.start(timeout=120)
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

    def _local_query(self, node: NodeProcess, sql: str, fmt: str) -> str | None:
        """The output of `ingestor query` on a node's local store; None when there is no such table."""
        if not (node.storage_dir / "local" / "metadata").is_dir():
            return None
        r = subprocess.run([sys.executable, "-m", "node.cli", "query", "--storage-dir", str(node.storage_dir),
                            "--format", fmt, sql], capture_output=True, text=True, timeout=600, cwd=ROOT)
        if r.returncode != 0:
            if "UNKNOWN_DATABASE" in r.stderr or "no table" in r.stderr.lower():
                return None
            error = f"{node.name}: ingestor query failed: {r.stderr.strip()[-600:]}"
            if self.final and error not in self.report.errors:  # during the drain, the next try tells
                self.report.errors.append(error)
                print(f"  ! {error}", flush=True)
            return None
        return r.stdout

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
            for column, sql in self.QUERIES:
                out = self._local_query(node, sql, "json")
                for line in (out or "").splitlines():
                    seen[self._seq(column, json.loads(line)[column])] += 1
        return seen

    PROM_SQL = ("SELECT _table, SeriesId, {ts}, toString(Value) FROM merge('Metrics', '^[A-Z]') "
                "WHERE _table NOT LIKE 'Chaos%'")

    def prom_stored(self, lo: int, hi: int) -> Counter[Key]:
        """The sink's rows of the tables other than the chaos load's (Prometheus's), with a timestamp
        in [lo, hi] in the sink's resolution (seconds with ClickHouse, milliseconds locally), non-NaN."""
        have: Counter[Key] = Counter()

        def add(table: str, sid: str, ts: str, value: str) -> None:
            v = float(value)
            if v == v and lo <= int(ts) <= hi:
                have[(table, int(sid), int(ts), v)] += 1

        if self.clickhouse is not None:
            from tests.sinks.test_clickhouse import admin

            for row in admin(self.clickhouse).query(self.PROM_SQL.format(ts="toUInt64(toUnixTimestamp(Timestamp))")):
                add(*row)
            return have
        for node in self.nodes:
            out = self._local_query(node, self.PROM_SQL.format(ts="toUnixTimestamp64Milli(Timestamp)"), "csv")
            for row in list(csv.reader(io.StringIO(out or "")))[1:]:
                add(*row)
        return have

    def check_prometheus(self, cutoff: float, caught_up: bool, seconds: float, figures: dict[str, float]) -> None:
        assert self.prom is not None
        res = 1000 if self.clickhouse is not None else 1
        r = PromReport(caught_up=caught_up, catch_up_seconds=seconds, resolution_ms=res)
        r.retried = int(figures.get("prometheus_remote_storage_samples_retried_total", 0))
        r.failed = int(figures.get("prometheus_remote_storage_samples_failed_total", 0))
        r.sent = int(figures.get("prometheus_remote_storage_samples_total", 0)) - r.retried - r.failed
        lo = int((self.prom.started_at + 3.0) * 1000) // res + 1
        hi = int(cutoff * 1000) // res - 1
        r.window_seconds = (hi - lo) * res / 1000
        want = expected(self.prom, lo, hi, res, r)
        compare(want, self.prom_stored(lo, hi), r)
        self.report.prom = r

    def dump_stuck(self) -> None:
        """A drain that takes long: every process of a node still holding segments writes its
        threads' and its asyncio tasks' stacks to its log (node/debug.py), and the log's tail is printed."""
        for n in self.nodes:
            left = len(list((n.storage_dir / "wal").rglob("*.wal")))
            if not left or n.proc is None or n.proc.poll() is not None:
                continue
            print(f"  ! {n.name}: {left} segments left after {STUCK_AFTER:.0f}s of drain; stacks in {n.log_path}",
                  flush=True)
            self.dump_stacks(n)

    @staticmethod
    def dump_stacks(n: NodeProcess) -> None:
        """Every process of node `n` writes its threads' and its asyncio tasks' stacks to its log
        (node/debug.py); the log's tail is printed."""
        assert n.proc is not None
        for pid in procs.tree(n.proc.pid):
            if not procs.is_node(pid):  # e.g. multiprocessing's resource tracker: SIGUSR1 would end it
                continue
            procs.signal_all([pid], signal.SIGUSR1)
            time.sleep(0.5)
            procs.signal_all([pid], signal.SIGUSR2)
            time.sleep(0.5)
        tail = n.log().splitlines()[-400:]
        print("\n".join(f"    | {line}" for line in tail), flush=True)

    def segments_left(self) -> int:
        return sum(len(list((n.storage_dir / "wal").rglob("*.wal"))) for n in self.nodes)

    def disk_left(self) -> int:
        return sum(p.stat().st_size for n in self.nodes for d in ("wal", "deliveries")
                   for p in (n.storage_dir / d).rglob("*") if p.is_file())

    def kinds(self) -> tuple[str, ...]:
        """Every fault kind this run can make."""
        kinds = KINDS + (("kill_receiver",) if self.shape.receivers > 1 else ())
        kinds += ("sink_down",) if self.clickhouse is not None else ()
        return kinds + (("disk_full",) if self.small_disk is not None else ())

    def run(self, faults: int, kinds: tuple[str, ...] | None = None, steady: float | None = None,
            gap: tuple[float, float] = (0.5, 2.5), tail: float = 0.0, in_turn: bool = False) -> Report:
        """`faults` random faults of `kinds`, `gap` seconds apart, then `tail` seconds of load, then
        the oracle; `steady`: seconds of load before the faults. `in_turn`: the kinds in their
        order, cycled, one every `gap[0]` seconds of the clock (the run lasts faults x gap + tail
        however long the restarts take)."""
        kinds = kinds or self.kinds()
        sink = "ClickHouse" if self.clickhouse is not None else "local"
        hosts = "a network namespace each" if self.net is not None else "loopback"
        ages = ", ".join(f"{a:.1f}" for a in self.report.ages.values())
        print(f"chaos: seed {self.report.seed}, {faults} faults of {', '.join(kinds)}, {sink} sink, nodes on {hosts}; "
              f"{self.shape.name} shape: {self.shape.receivers} receivers, {self.shape.tables} + "
              f"{self.shape.log_tables} tables, segment ages {ages} s"
              f"{', Prometheus' if self.prom is not None else ''}", flush=True)
        try:
            return self._run(faults, kinds, steady, gap, tail, in_turn)
        finally:
            if self.prom is not None:
                self.prom.stop()
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is None:
                    self.kill_node(n)
            self.close()

    def close(self) -> None:
        """Undo what __init__ made: the small disk's mount, the namespaces (idempotent)."""
        if self.small_disk is not None:
            subprocess.run(["umount", "-l", str(self.small_disk)], check=False)
            self.small_disk = None
        if self.net is not None:
            self.net.teardown()

    def _run(self, faults: int, kinds: tuple[str, ...], steady: float | None, gap: tuple[float, float],
             tail: float, in_turn: bool) -> Report:
        if self.clickhouse is not None:
            self.clickhouse.start()
        for n in self.nodes:
            n.start(timeout=120)
        if self.prom is not None:
            self.prom.start()
        loader = threading.Thread(target=self._load, daemon=True)
        loader.start()
        if self.adxmon is not None:
            self.adxmon.start()
        try:
            if steady is not None:  # load before the faults
                time.sleep(steady)
            # every kind at least once when there are enough faults, the rest drawn at random
            schedule = list(kinds)[:faults] + [self.rng.choice(kinds) for _ in range(faults - len(kinds))]
            self.rng.shuffle(schedule)
            if in_turn:
                schedule = [kinds[i % len(kinds)] for i in range(faults)]
            start = time.monotonic()
            for k, kind in enumerate(schedule):
                if in_turn:  # on a fixed clock: a fault's restart does not push the next ones back
                    time.sleep(max(0.0, start + (k + 1) * gap[0] - time.monotonic()))
                else:
                    time.sleep(self.rng.uniform(*gap))
                print(f"  fault: {kind}", flush=True)
                self.fault(kind)
            time.sleep(max(0.0, start + len(schedule) * gap[0] + tail - time.monotonic()) if in_turn else tail)
        finally:
            self._stop.set()
            loader.join(30)
            if self.adxmon is not None:  # what the collectors still hold, retried until taken (or given up)
                self.adxmon.stop()
        cutoff = time.time()
        if self.prom is not None:  # Prometheus sent everything up to now, then stops
            caught_up, seconds = self.prom.wait_caught_up(cutoff)
            figures = self.prom.stop()
            print(f"  Prometheus caught up: {caught_up} ({seconds:.1f}s)", flush=True)
        t0 = time.monotonic()
        self.report.live_after = self.send_one(self.nodes[0], points=1)
        deadline = t0 + self.drain_timeout
        dumped = False
        while time.monotonic() < deadline:
            if self.segments_left() == 0:
                seen = self.stored()
                if self.acked <= set(seen):
                    break
            if not dumped and time.monotonic() - t0 > STUCK_AFTER:
                dumped = True
                self.dump_stuck()
            time.sleep(1.0)
        self.report.drain_seconds = time.monotonic() - t0
        for n in self.nodes:
            self.stop_node(n)
        self.final = True
        seen = self.stored()
        if self.prom is not None:
            self.check_prometheus(cutoff, caught_up, seconds, figures)
        if self.clickhouse is not None:
            self.clickhouse.stop()
        r = self.report
        r.acked = len(self.acked)
        r.channels = self.by_channel
        r.delivered = len(seen)
        lost = self.acked - set(seen)
        r.lost = len(lost)
        r.lost_requests = self.describe_lost(lost)
        r.unknown = sum(1 for s in seen if not 0 < s <= self.seq)
        explained: set[int] = set()
        if self.adxmon is not None:  # copies of a segment in doubt at another node are reported apart
            explained = self.adxmon.judge(seen, {n.name: published_keys(n.storage_dir) for n in self.nodes})
            r.adxmon = self.adxmon.report
        doubled = {s: n - 1 for s, n in seen.items() if n > 1 and s not in explained}
        r.duplicates = sum(doubled.values())
        for first, n, channel, _, _ in self.requests:
            if extra := sum(doubled.get(s, 0) for s in range(first, first + n)):
                wide = n == self.shape.tables and channel in ("otlp-metrics", "remote-write")
                r.duplicates_by[f"{channel}{' wide' if wide else ''}"] += extra
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
    p.add_argument("--shape", choices=sorted(SHAPES), default="user",
                   help="user (default): 2 receivers, 300 tables, 1-3 s segments, Prometheus; narrow: 1, 10, 1 s")
    p.add_argument("--adxmon", type=int, default=None,
                   help="adx-mon collectors POSTing segments to the transfer doors (default: the shape's; 0: none)")
    p.add_argument("--clean", action="store_true", help="remove the logs of a failed run too")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    sink = args.sink or ("clickhouse" if find_binary() else "local")
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    ok = False
    try:
        server = ClickHouseServer(tmp / "clickhouse") if sink == "clickhouse" else None
        try:
            kinds = tuple(args.kinds.split(",")) if args.kinds else None
            report = Chaos(tmp, seed, server, shape=SHAPES[args.shape], adxmon=args.adxmon).run(args.faults, kinds)
        finally:
            if server is not None:
                server.stop()
        print(report)
        ok = report.ok(clickhouse=sink == "clickhouse")
    finally:
        if ok or args.clean:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            keep(tmp)
    return 0 if ok else 1


def keep(tmp: Path) -> None:
    """Keep the nodes' logs and Prometheus's of a failed run (not their data), and say where."""
    for p in sorted(tmp.iterdir()):
        if p.is_dir() and p.name != "prometheus":
            subprocess.run(["umount", "-l", str(p)], capture_output=True, check=False)
            shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(tmp / "prometheus" / "tsdb", ignore_errors=True)
    print(f"logs kept in {tmp}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
