"""adx-mon collectors as a chaos load: segments POSTed to the nodes' transfer front doors
(`POST /transfer?filename=...` over HTTPS, node/transfer/http.py), and what the oracle needs to
judge them.

Each collector (a thread) builds segments as adx-mon's collectors write them
(tests/adxmon/segments.py, written apart from the node) and sends them byte for byte as adx-mon's
collector does (tests/adxmon/collector.py: TLS, chunked, gzip on collector 0, 2, ... and plain on
the others):

- metrics segments of table `Chaos<t>` (the metric `chaos_<t>`, the table the chaos load's OTLP
  and remote-write rows reach, same schema hash: the node batches both together), one to three
  blocks, S2 (with repeat elements) or Snappy; the value of a row is its unique `seq`;
- logs segments of table `ChaosLog<t>`: adx-mon's OTLP logs path (no schema part, no header
  line, block type log) or its native logs path (header line, the logs schema's hash); the `seq`
  is an attribute;
- now and then (a quarter) two or three segments of one prefix merged, sent under the first
  one's name, as `wal.NewSegmentMerger` and adx-mon's replicator do.

A collector opens a connection to a random node (as through a Service) and keeps it for one to
five requests. Every attempt is recorded with its outcome: `202` (acknowledged: the rows must be
in the sink), `423`, `429`, `408`, `5xx` (not acknowledged: retried), `400`/`413` (the node refused
a valid segment: an error of the run), `refused` (a connection error before the whole body was
sent: the node cannot have stored it), `in doubt` (the whole body sent, no answer: it may have).
A segment not acknowledged is retried 0.5 to 2 s later with the same file name and the same bytes,
to a node drawn again, until a 202, as adx-mon's collector keeps a segment until a 2xx (its own
replicator may merge a retried batch with newer segments; here the bytes stay the same, so that a
resend to the same node is deduplicated by the node's transfer ledger). When the load stops, the
collectors keep retrying what they hold for up to `FLUSH_SECONDS`.

The faults reach the door on purpose (`hold` / `Held.finish`): before a whole-node fault a POST
to the victim is started and left half-way (half of its body sent) or complete but unanswered
(its whole body sent, the answer not read), then finished after the fault (kill -9, kill of the
owner, SIGTERM during the node's grace, a link cut); while a disk is full, a POST to that node
(`probe`). Their outcomes are reported by fault kind.

The oracle (`judge`), once the nodes stopped: each node's transfer ledger says which segments it
published (`published_keys`: the key is the name, size and CRC-32 of the body). Every row of a
segment must be in the sink as many times as nodes published it, and at least once if it was
acknowledged: a row of an acknowledged segment missing is lost; a copy missing of a segment a
node published is a publication not delivered (a node dropped what it had made durable); a copy
beyond the publications is a duplicate the ledgers do not explain (a node stored a resend twice,
or the sink did: ClickHouse 18.16 cannot deduplicate a retried insert). A segment published by two
nodes (in doubt at one, the answer lost, then resent to another: each node's ledger is its own)
is reported apart, as Prometheus's resends are, and its second copies are left out of the run's
duplicates. Also checked: the node that answered 202 has the segment in its ledger, and no node
that answered a refusal (or whose connection failed before the whole body was sent) published it.
"""

from __future__ import annotations

import random
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.adxmon import segments as seg
from tests.adxmon.collector import Collector, insecure_context
from tests.harness import NodeProcess

CHANNELS = ("adxmon-metrics", "adxmon-logs")
TIMEOUT = 6.0
"""Seconds a collector waits to connect, or for the node to read or answer (adx-mon: 30 s)."""
FLUSH_SECONDS = 90.0
"""After the load stopped, how long the collectors keep retrying the segments they hold."""
REFUSED, IN_DOUBT = "refused", "in doubt"
SERIES = 500
"""Label values per metric table, as the chaos load's (run.SERIES)."""


@dataclass(frozen=True)
class Attempt:
    node: str
    outcome: str
    """`202`, `423`, `429`, ... (the status), `refused` or `in doubt`."""
    at: float
    """Wall-clock time."""

    @property
    def maybe_stored(self) -> bool:
        """The node may hold the segment after this attempt."""
        return self.outcome in ("202", IN_DOUBT) or self.outcome.startswith("5")


@dataclass
class Segment:
    """One POST body (a segment file, or merged ones) and its rows' seqs `first .. first + rows - 1`."""

    name: str
    body: bytes
    first: int
    rows: int
    channel: str
    table: str
    parts: int
    attempts: list[Attempt] = field(default_factory=list)
    due: float = 0.0

    @property
    def acked_by(self) -> str | None:
        return next((a.node for a in self.attempts if a.outcome == "202"), None)

    def holders(self) -> set[str]:
        """The nodes that may have stored it: the one that acknowledged it, each it was in doubt at."""
        return {a.node for a in self.attempts if a.maybe_stored}

    def seqs(self) -> range:
        return range(self.first, self.first + self.rows)

    @property
    def key(self) -> str:
        """The node's transfer ledger key: name, size and CRC-32 of the body (decoded)."""
        return f"{self.name}:{len(self.body)}:{zlib.crc32(self.body):08x}"

    def describe(self) -> str:
        tries = ", ".join(f"{a.node.removeprefix('ingestor-')}:{a.outcome}@{_stamp(a.at)}" for a in self.attempts)
        return (f"{self.name} ({self.channel}, {self.parts} part(s), {self.rows} rows, seq {self.first}.."
                f"{self.first + self.rows - 1}): attempts {tries}")


def _stamp(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"


@dataclass
class AdxmonReport:
    collectors: int = 0
    segments: int = 0
    """Bodies made (each merged body one)."""
    merged: int = 0
    gzip_acked: int = 0
    plain_acked: int = 0
    acked_segments: int = 0
    acked_rows: int = 0
    never_acked: int = 0
    """Segments still not acknowledged when the collectors gave up (their rows are not owed)."""
    answers: Counter[str] = field(default_factory=Counter)
    """Every attempt by outcome."""
    resent: int = 0
    """Attempts after a segment's first."""
    resent_after_doubt: int = 0
    """Of the acknowledged segments, those an earlier attempt was in doubt for."""
    at_faults: dict[str, Counter[str]] = field(default_factory=dict)
    """POSTs in flight at a fault (or made during a full disk): fault kind -> outcomes."""
    published_twice: int = 0
    """Segments published by two nodes or more (their ledgers say so): in doubt at one, then
    resent to another (each node's ledger is its own)."""
    lost: int = 0
    """Rows of acknowledged segments not in the sink."""
    undelivered: int = 0
    """Copies of rows published by a node (its ledger's DONE) but not in the sink, the lost rows
    aside: a node dropped a segment it had made durable (its rows may be in the sink from another)."""
    contradictions: int = 0
    """Segments whose ledgers contradict the answers: acknowledged by a node that did not publish
    them, or published by a node that refused them (or before it had the whole body)."""
    duplicates: int = 0
    """Copies beyond the first of the rows of these segments."""
    explained: int = 0
    """Of `duplicates`, copies as many as the nodes whose ledgers published the segment."""
    problems: list[str] = field(default_factory=list)
    """Segments lost, published and not delivered, stored more often than published, or whose
    ledgers contradict their answers, with their attempts."""
    doubted: list[str] = field(default_factory=list)
    """The segments an attempt was in doubt for: their attempts and the nodes that published them."""
    errors: list[str] = field(default_factory=list)
    """A valid segment refused for good (400, 413), a collector that failed."""

    @property
    def unexplained(self) -> int:
        return self.duplicates - self.explained

    def ok(self) -> bool:
        return self.lost == 0 and self.undelivered == 0 and self.contradictions == 0 and not self.errors

    def __str__(self) -> str:
        faults = "; ".join(f"{k}: {dict(sorted(v.items()))}" for k, v in sorted(self.at_faults.items()))
        text = (f"adx-mon: {self.collectors} collectors, {self.segments} segments ({self.merged} merged), "
                f"acknowledged {self.acked_segments} segments ({self.gzip_acked} gzip, {self.plain_acked} plain) "
                f"/ {self.acked_rows} rows, never acknowledged {self.never_acked}; answers "
                f"{dict(sorted(self.answers.items()))}; resent {self.resent} times ({self.resent_after_doubt} "
                f"acknowledged after an attempt in doubt); at faults: {faults or '-'}; published by two nodes "
                f"{self.published_twice}; lost {self.lost}, published and not delivered {self.undelivered}, ledgers "
                f"contradicting answers {self.contradictions}, "
                f"duplicates {self.duplicates} ({self.explained} published by another node too, {self.unexplained} "
                f"beyond the ledgers)")
        if self.errors:
            text += f"; errors: {self.errors[:10]}"
        if self.problems:
            text += "\n  adx-mon segments lost or doubled:\n    " + "\n    ".join(self.problems[:20])
        if self.doubted:
            text += "\n  adx-mon segments in doubt:\n    " + "\n    ".join(self.doubted[:10])
        return text


class ChaosCollector(Collector):
    """A collector whose `Connection: close` answers survive a reset after the answer."""

    def close_after_answer(self) -> None:
        try:
            super().close_after_answer()
        except (OSError, AssertionError):
            self.close()


class Held:
    """A POST left part-way at a fault (`AdxmonLoad.hold`): `sent` bytes of its body sent, and
    `ended` when that is all of it (the answer not read yet)."""

    def __init__(self, load: AdxmonLoad, kind: str, node: NodeProcess, segment: Segment, conn: ChaosCollector,
                 payload: bytes, sent: int, ended: bool) -> None:
        self.load, self.kind, self.node, self.segment = load, kind, node, segment
        self.conn, self.payload, self.sent, self.ended = conn, payload, sent, ended
        self.thread: threading.Thread | None = None

    def finish(self) -> str:
        """Send the rest, read the answer; the outcome, recorded (the segment queued again unless 202)."""
        outcome = self.load.complete(self.conn, self.node, self.segment, self.payload, self.sent, self.ended)
        self.conn.close()
        how = "whole body" if self.ended else "half the body"
        with self.load.lock:
            self.load.report.at_faults.setdefault(self.kind, Counter())[f"{outcome} ({how} sent before)"] += 1
        return outcome

    def finish_later(self, delay: float) -> None:
        """`finish` in a thread after `delay` seconds (while a node drains)."""
        def run() -> None:
            time.sleep(delay)
            self.finish()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(TIMEOUT * 3)


class AdxmonLoad:
    """`collectors` adx-mon collectors sending to `nodes`; `take(n)` gives n fresh seqs."""

    def __init__(self, nodes: Sequence[NodeProcess], take: Callable[[int], list[int]], seed: int, collectors: int,
                 tables: int, log_tables: int, on_ack: Callable[[Segment, str], None],
                 pace: tuple[float, float] = (0.15, 0.45)) -> None:
        self.nodes = list(nodes)
        self.take = take
        self.seed = seed
        self.tables, self.log_tables = tables, log_tables
        self.on_ack = on_ack
        self.pace = pace
        self.report = AdxmonReport(collectors=collectors)
        self.made: list[Segment] = []
        self.lock = threading.Lock()
        self._pending: list[Segment] = []
        """Segments to retry, shared by the collectors (adx-mon's segments left on disk)."""
        self._stop = threading.Event()
        self._flush_until = 0.0
        self._threads = [threading.Thread(target=self._collector, args=(i,), daemon=True, name=f"adxmon-{i}")
                         for i in range(collectors)]
        self._fault_rng = random.Random(seed * 7 + 3)
        self._fault_ids = seg.FlakeIds(host=90)
        self.context = insecure_context()

    # -- segments ------------------------------------------------------------------------------

    def make(self, rng: random.Random, ids: seg.FlakeIds) -> Segment:
        """A new body: metrics or logs, one segment or two or three of one prefix merged."""
        logs = rng.random() < 0.35
        parts = 1 if rng.random() < 0.75 else rng.randint(2, 3)
        sizes = [rng.randint(3, 25) for _ in range(parts)]
        seqs = self.take(sum(sizes))
        now_ns = time.time_ns()
        compression = rng.choice(("s2", "snappy"))
        otlp = rng.random() < 0.5
        t = rng.randrange(self.log_tables if logs else self.tables)
        table = f"ChaosLog{t}" if logs else f"Chaos{t}"
        names, bodies = [], []
        k = 0
        for n in sizes:
            part, k = seqs[k:k + n], k + n
            cuts = sorted(rng.sample(range(1, n), min(rng.randint(0, 2), n - 1))) if n > 1 else []
            groups = [part[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
            if not logs:
                bodies.append(seg.metrics_segment(
                    [[seg.Sample({"__name__": f"chaos_{t}", "series": str(s % SERIES)}, now_ns // 1_000_000, float(s))
                      for s in g] for g in groups], compression))
                names.append(seg.metrics_filename("Metrics", table, ids.next()))
            elif otlp:  # adx-mon's OTLP logs path: no header line, type log, count the records
                bodies.append(seg.segment(*(seg.otlp_logs_block(
                    [seg.LogRecord(now_ns, now_ns, severity_text="INFO", severity_number=9, body=f"adx-mon row {s}",
                                   attributes={"seq": str(s)}) for s in g],
                    {"service.name": "chaos-collector"}, compression=compression) for g in groups)))
                names.append(seg.logs_filename("Logs", table, ids.next()))
            else:  # the native logs path: the header line, the logs schema's hash in the name
                bodies.append(seg.segment(*(seg.block(seg.native_logs_csv(
                    [seg.NativeLog(now_ns, now_ns, body={"message": f"adx-mon row {s}"}, resource={"pod": "chaos-0"},
                                   attributes={"seq": s}) for s in g]), compression=compression) for g in groups)))
                names.append(seg.native_logs_filename("Logs", table, ids.next()))
        body = bodies[0] if parts == 1 else seg.merge(*bodies)
        s = Segment(names[0], body, seqs[0], len(seqs), CHANNELS[1] if logs else CHANNELS[0], table, parts)
        with self.lock:
            self.made.append(s)
            self.report.segments += 1
            self.report.merged += parts > 1
        return s

    # -- one attempt -----------------------------------------------------------------------------

    def _record(self, segment: Segment, node: NodeProcess, outcome: str, gzip: bool) -> bool:
        with self.lock:
            self.report.answers[outcome] += 1
            if segment.attempts:
                self.report.resent += 1
            done = segment.acked_by is not None
            segment.attempts.append(Attempt(node.name, outcome, time.time()))
            if outcome in ("400", "413"):
                self.report.errors.append(f"{node.name} answered {outcome} to a valid segment: {segment.describe()}")
                return True  # dropped, as adx-mon's collector drops a 400
            if done:  # sent again after its 202 (not by the collectors): acknowledged once
                return True
            if outcome != "202":
                return False
            self.report.acked_segments += 1
            self.report.acked_rows += segment.rows
            self.report.resent_after_doubt += any(a.outcome == IN_DOUBT for a in segment.attempts)
            if gzip:
                self.report.gzip_acked += 1
            else:
                self.report.plain_acked += 1
        self.on_ack(segment, node.name)
        return True

    def _again(self, segment: Segment) -> None:
        """Not acknowledged: retried 0.5 to 2 s from now, same name and bytes."""
        segment.due = time.monotonic() + random.uniform(0.5, 2.0)
        with self.lock:
            self._pending.append(segment)

    def complete(self, conn: ChaosCollector, node: NodeProcess, segment: Segment, payload: bytes, sent: int,
                 ended: bool = False) -> str:
        """Send `payload[sent:]`, end the body (unless `ended`), read the answer; record it and
        queue the segment again unless it is done. The outcome."""
        whole = ended
        try:
            if not ended:
                for i in range(sent, len(payload), 4096):
                    conn.send(payload[i:i + 4096])
                conn.end()
                whole = True
            outcome = str(conn.response().status)
        except (OSError, ssl.SSLError, ConnectionError, ValueError, IndexError, AssertionError):
            conn.close()  # ValueError / IndexError: a status line cut short
            outcome = IN_DOUBT if whole else REFUSED
        if not self._record(segment, node, outcome, conn.gzip):
            self._again(segment)
        return outcome

    def attempt(self, conn: ChaosCollector, node: NodeProcess, segment: Segment) -> str:
        try:
            payload = conn.begin(segment.name, body=segment.body)
        except (OSError, ssl.SSLError, ConnectionError):
            conn.close()
            if not self._record(segment, node, REFUSED, conn.gzip):
                self._again(segment)
            return REFUSED
        return self.complete(conn, node, segment, payload, 0)

    # -- collectors ----------------------------------------------------------------------------

    def _due(self) -> Segment | None:
        now = time.monotonic()
        with self.lock:
            for i, s in enumerate(self._pending):
                if s.due <= now:
                    return self._pending.pop(i)
        return None

    def _collector(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        ids = seg.FlakeIds(host=100 + i)
        gzip = i % 2 == 0
        conn: ChaosCollector | None = None
        node = self.nodes[0]
        uses = 0
        try:
            while True:
                stopping = self._stop.is_set()
                if stopping:
                    with self.lock:
                        left = len(self._pending)
                    if not left or time.monotonic() > self._flush_until:
                        break
                segment = self._due()
                if segment is None:
                    if stopping:
                        time.sleep(0.1)
                        continue
                    segment = self.make(rng, ids)
                if conn is None or conn._sock is None or uses <= 0:
                    if conn is not None:
                        conn.close()
                    node = rng.choice(self.nodes)
                    conn = ChaosCollector(node.transfer_url, self.context, gzip=gzip, timeout=TIMEOUT)
                    uses = rng.randint(1, 5)
                uses -= 1
                self.attempt(conn, node, segment)
                time.sleep(rng.uniform(*self.pace))
        except Exception as e:  # a bug of this load: the run must say so, not hang
            with self.lock:
                self.report.errors.append(f"collector {i} failed: {type(e).__name__}: {e}")
            raise
        finally:
            if conn is not None:
                conn.close()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, flush: float = FLUSH_SECONDS) -> None:
        """No new segments; what the collectors hold is retried for up to `flush` seconds."""
        self._flush_until = time.monotonic() + flush
        self._stop.set()
        for t in self._threads:
            t.join(flush + TIMEOUT * 3)
        with self.lock:
            self.report.never_acked = sum(1 for s in self.made if s.acked_by is None
                                          and not any(a.outcome in ("400", "413") for a in s.attempts))

    # -- the door at a fault ---------------------------------------------------------------------

    def hold(self, kind: str, node: NodeProcess) -> Held | None:
        """A POST to `node` left part-way: half its body sent, or all of it with the answer unread
        (half the time, after a pause long enough for the node to commit it: the fault then cuts the
        answer only, and the collector's resend may reach another node). None when it could not
        start (the outcome recorded, the segment queued)."""
        rng = self._fault_rng
        whole = rng.random() < 0.5
        segment = self.make(rng, self._fault_ids)
        conn = ChaosCollector(node.transfer_url, self.context, gzip=rng.random() < 0.5, timeout=TIMEOUT)
        try:
            payload = conn.begin(segment.name, body=segment.body)
            sent = len(payload) if whole else len(payload) // 2
            for i in range(0, sent, 4096):
                conn.send(payload[i:min(i + 4096, sent)])
            if whole:
                conn.end()
                if rng.random() < 0.5:  # time for the node to commit: the fault then takes only the answer
                    time.sleep(rng.uniform(0.05, 0.3))
        except (OSError, ssl.SSLError, ConnectionError):
            conn.close()
            if not self._record(segment, node, REFUSED, conn.gzip):
                self._again(segment)
            with self.lock:
                self.report.at_faults.setdefault(kind, Counter())["could not start"] += 1
            return None
        return Held(self, kind, node, segment, conn, payload, sent, whole)

    def probe(self, kind: str, node: NodeProcess) -> str:
        """One POST to `node` now (e.g. while its disk is full); its outcome, recorded by `kind`."""
        gzip = self._fault_rng.random() < 0.5
        segment = self.make(self._fault_rng, self._fault_ids)
        conn = ChaosCollector(node.transfer_url, self.context, gzip=gzip, timeout=TIMEOUT)
        try:
            outcome = self.attempt(conn, node, segment)
        finally:
            conn.close()
        with self.lock:
            self.report.at_faults.setdefault(kind, Counter())[outcome] += 1
        return outcome

    # -- the oracle ------------------------------------------------------------------------------

    def judge(self, seen: Counter[int], published: dict[str, set[str]]) -> set[int]:
        """Count lost and duplicated rows against `seen` (seq -> copies in the sink) and `published`
        (node -> the keys its transfer ledger says it published, `published_keys`): a segment's rows
        must be in the sink as many times as nodes published it, and at least once if it was
        acknowledged. The seqs whose extra copies the ledgers explain (to be left out of the run's
        duplicates)."""
        r = self.report
        explained: set[int] = set()
        for s in self.made:
            at = {n for n, keys in published.items() if s.key in keys}
            maybe = s.holders()
            notes = []
            if s.acked_by is not None and s.acked_by not in at:
                notes.append(f"acknowledged by {s.acked_by}, not in its ledger")
            if at - maybe:
                notes.append(f"published by {sorted(at - maybe)}, which answered that it did not take it")
            r.contradictions += bool(notes)
            expect = len(at)
            r.published_twice += expect > 1
            lost = undelivered = over = 0
            for q in s.seqs():
                c = seen[q]
                if s.acked_by is not None and c == 0:
                    lost += 1
                elif c < expect:
                    undelivered += expect - c
                if c > 1:
                    r.duplicates += c - 1
                    r.explained += min(c, max(expect, 1)) - 1
                    over += max(0, c - max(expect, 1))
                    if c <= expect:
                        explained.add(q)
            r.lost += lost
            r.undelivered += undelivered
            if lost:
                notes.append(f"{lost} rows lost")
            if undelivered:
                notes.append(f"{undelivered} published copies not delivered")
            if over:
                notes.append(f"{over} copies beyond the {expect} publications")
            if any(a.outcome == IN_DOUBT for a in s.attempts):
                r.doubted.append(f"published by {sorted(at)}: {s.describe()}")
            if notes:
                r.problems.append(f"{'; '.join(notes)}: published by {sorted(at)}: {s.describe()}")
        return explained


def published_keys(storage_dir: Path) -> set[str]:
    """The keys a node's transfer ledger (`transfers.ledger`, node/transfer/ledger.py) says were
    published: last line DONE (`<stamp> <key>`), or `publish` with its part file gone (renamed
    into the WAL; read once the node stopped)."""
    path = storage_dir / "transfers.ledger"
    last: dict[str, list[str]] = {}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return set()
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) >= 2:
            last[fields[1]] = fields[2:]
    return {k for k, rest in last.items()
            if not rest or (rest[0] == "publish" and len(rest) == 3 and not Path(rest[2]).exists())}
