"""The receiver takes a segment exactly once: the windows where an adversarial run found duplicates.

1. the ledger's disk is full once the segment is published (ENOSPC): OK answered, the resend is
   ALREADY_EXISTS;
2. the receiver is killed (SIGKILL) between the rename and its ledger line: the resend is
   ALREADY_EXISTS, after a restart of the node or on another receiver process of it, even when the
   supervisor uploaded (deleted) the segment meanwhile; killed before the rename, the resend is
   taken (nothing lost);
3. two receiver processes of one node (one WAL directory, one ledger) get the same segment four
   times at once: one call takes it.

The receivers of 2 and 3 are real processes, each with its own gRPC server on its own port (the
node's receivers share one port with SO_REUSEPORT; separate ports let the test choose who gets
which call); a real `ingestor serve --receivers 2` then takes the adversarial run's load. Last,
the ledger's verdict for each state it can find on disk, table-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import types
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from cluster.membership import Peer
from node.errors import AlreadyExistsError, UnavailableError
from node.gen.ingestor.v1 import admin_pb2, transfer_pb2_grpc
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.grpc import GrpcServer
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.transfer import ledger as ledger_module
from node.transfer.client import TransferClient, TransferResult
from node.transfer.intake import Intake
from node.transfer.ledger import TransferLedger, transfer_key
from node.transfer.protocol import READY_HEADER, Outcome
from node.transfer.service import TRANSFER_SERVICE, PeerAuth, TransferService
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from node.wal.table import SegmentInfo
from tests.cluster.test_transfer import TOKEN, Receiver, all_rows, chunks, metadata, segments, start_receiver

REPO = Path(__file__).resolve().parents[2]


def wal_rows(root: Path) -> list[bytes]:
    """Every row of the closed segments in `root`'s WAL directory, whichever process wrote them."""
    return sorted(line for p in sorted((root / "wal").glob("*.wal")) for v in iter_rows(p) for line in v.splitlines())


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "wal").iterdir() if p.is_file() and not p.name.endswith(".wal"))


async def send(addr: str, segs: list[SegmentInfo], timeout: float = 10) -> TransferResult:
    client = TransferClient("sender", token=TOKEN, timeout=timeout)
    try:
        return await client.send(Peer("receiver", addr), [s.path for s in segs])
    finally:
        await client.close()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Repository]:
    wal = Repository(WalConfig(tmp_path / "sender" / "wal"))
    wal.start()
    yield wal


# -- 1. the ledger's disk fills up ---------------------------------------------------------------


class LedgerDisk(types.ModuleType):
    """The `os` of the ledger module: its writes and fsyncs fail with ENOSPC while `full()`."""

    def __init__(self, full: Callable[[bytes], bool], call: str = "write") -> None:
        super().__init__("os")
        self.full = full
        self.call = call
        self.failed = 0
        self._last = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _fail(self) -> None:
        self.failed += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def write(self, fd: int, data: bytes) -> int:
        self._last = bytes(data)
        if self.call == "write" and self.full(self._last):
            self._fail()
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.call == "fsync" and self.full(self._last):
            self._fail()
        os.fsync(fd)


@pytest_asyncio.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    r = await start_receiver(tmp_path / "receiver")
    try:
        yield r
    finally:
        await r.server.stop(0)
        r.ledger.close()


def published(receiver: Receiver) -> Callable[[bytes], bool]:
    """The disk is full from the moment a segment is published in the receiver's WAL."""
    return lambda _line: any(receiver.wal.directory.glob("*.wal"))


async def test_a_full_disk_after_the_publish_answers_ok_and_the_resend_is_already_exists(
        receiver: Receiver, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the ledger line failed with ENOSPC after the rename, the call answered INTERNAL,
    and the resend was taken again (80 rows for 40)."""
    segs = segments(sender, count=2)
    disk = LedgerDisk(published(receiver))
    monkeypatch.setattr(ledger_module, "os", disk)
    first = await send(receiver.addr, segs)
    assert (first.outcome, first.code) == (Outcome.ACCEPTED, "OK"), first  # the rows are published: safe
    assert disk.failed > 0
    again = await send(receiver.addr, segs)  # the disk is still full
    assert (again.outcome, again.code) == (Outcome.ALREADY_HAD, "ALREADY_EXISTS"), again
    monkeypatch.setattr(ledger_module, "os", os)  # space again; the receiver restarts
    receiver.ledger.close()
    restarted = TransferLedger(receiver.ledger.path)
    assert restarted.seen(transfer_key(segs[0].path.name, first.bytes, _crc(segs)))
    restarted.close()
    assert (await send(receiver.addr, segs)).outcome is Outcome.ALREADY_HAD
    assert wal_rows(receiver.root) == sorted(all_rows(segs))  # once
    assert leftovers(receiver.root) == []


def _crc(segs: list[SegmentInfo]) -> int:
    """The CRC-32 a transfer of `segs` declares (the first whole, the others without their magic)."""
    return zlib.crc32(segs[0].path.read_bytes() + b"".join(s.path.read_bytes()[8:] for s in segs[1:]))


async def test_a_full_disk_before_the_publish_refuses_the_segment_until_there_is_space(
        receiver: Receiver, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is published unless the ledger can say so: RESOURCE_EXHAUSTED (the sender keeps its
    copy, and sends it again later)."""
    segs = segments(sender, count=1)
    monkeypatch.setattr(ledger_module, "os", LedgerDisk(lambda _line: True))
    full = await send(receiver.addr, segs)
    assert (full.outcome, full.code, full.in_doubt) == (Outcome.PEER_FAILED, "RESOURCE_EXHAUSTED", False), full
    assert "disk full" in full.detail
    assert receiver.files() == []
    monkeypatch.setattr(ledger_module, "os", os)
    assert (await send(receiver.addr, segs)).outcome is Outcome.ACCEPTED
    assert wal_rows(receiver.root) == sorted(all_rows(segs))


@pytest.mark.parametrize("call", ["write", "fsync"])
async def test_a_publish_line_that_fails_publishes_nothing_and_the_resend_is_taken_once(
        receiver: Receiver, sender: Repository, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """The line that goes before the rename fails (or is written but not fsynced, so others may
    read it): the segment is not published, its part file stays for the ledger to settle, and the
    resend is taken once."""
    segs = segments(sender, count=1)
    disk = LedgerDisk(lambda line: b" publish " in line, call)
    monkeypatch.setattr(ledger_module, "os", disk)
    failed = await send(receiver.addr, segs)
    assert (failed.outcome, failed.code) == (Outcome.PEER_FAILED, "RESOURCE_EXHAUSTED"), failed
    assert disk.failed == 1 and wal_rows(receiver.root) == []
    monkeypatch.setattr(ledger_module, "os", os)
    again = await send(receiver.addr, segs)
    assert again.outcome is Outcome.ACCEPTED, again
    assert wal_rows(receiver.root) == sorted(all_rows(segs))
    assert leftovers(receiver.root) == []
    assert receiver.wal.disk_usage() == sum(s.size for s in receiver.wal.closed_segments())


# -- 2 and 3: receiver processes -----------------------------------------------------------------


def serve_receiver(root: str, worker: str, kill_at: str) -> None:
    """A receiver process of a node at `root`: worker 0 recovers the WAL and compacts the ledger at
    start, as `Node.start_wal` does; the others only write. Prints its port; serves until stdin
    closes. `kill_at` "before-rename" / "after-rename": SIGKILL itself around the rename that
    publishes a segment."""

    async def run() -> None:
        index = int(worker)
        wal = Repository(WalConfig(Path(root) / "wal", node_name="receiver", worker=index))
        wal.start(recover=index == 0)
        ledger = TransferLedger(Path(root) / "transfers.ledger")
        ledger.open()
        if index == 0:
            ledger.compact()
        state = NodeState(over_limits=wal.over_limits)
        metrics = NodeMetrics(CollectorRegistry())
        service = TransferService(Intake(wal, state, ledger, metrics), PeerAuth(token=TOKEN))
        conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig()),
                          TracesConverter(TracesConfig()))
        server = GrpcServer("127.0.0.1:0", Ingest(wal, conv, state, metrics), state, metrics,
                            lambda: admin_pb2.NodeStatus(node_name="receiver"), max_request_bytes=64 << 20,
                            extra=[(transfer_pb2_grpc.add_TransferServicer_to_server, service, TRANSFER_SERVICE)])
        await server.start()
        state.set_phase(Phase.SERVING)
        if kill_at:
            rename = os.rename

            def dying_rename(src: Any, dst: Any) -> None:
                if str(dst).endswith(".wal") and kill_at == "before-rename":
                    os.kill(os.getpid(), signal.SIGKILL)
                rename(src, dst)
                if str(dst).endswith(".wal") and kill_at == "after-rename":
                    os.kill(os.getpid(), signal.SIGKILL)

            os.rename = dying_rename  # type: ignore[assignment]
        print(server.port, flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await server.stop(0)
        ledger.close()

    asyncio.run(run())


class Procs:
    """The receiver processes a test started; each is stopped (or killed) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    async def start(self, root: Path, worker: int = 0, kill_at: str = "") -> tuple[subprocess.Popen[str], str]:
        code = "import sys; from tests.cluster.test_transfer_dups import serve_receiver; serve_receiver(*sys.argv[1:])"
        proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(worker), kill_at], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        port = (await asyncio.to_thread(proc.stdout.readline)).strip()
        assert port.isdigit(), f"receiver process exited with {proc.wait()}"
        return proc, f"127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize("uploaded", [False, True], ids=["segment-still-here", "segment-uploaded-meanwhile"])
@pytest.mark.parametrize("resend_to", ["restarted-node", "other-receiver"])
async def test_a_receiver_killed_after_the_rename_answers_the_resend_already_exists(
        tmp_path: Path, sender: Repository, procs: Procs, resend_to: str, uploaded: bool) -> None:
    """Regression: a kill between the publish (rename) and the ledger line, then the resend was
    taken again (200 rows for 100). The resend goes to the node restarted, or to another receiver
    process of it that ran all along; the supervisor may have uploaded and deleted the segment
    before the resend came."""
    root = tmp_path / "node"
    segs = segments(sender, count=2)
    other = None
    if resend_to == "other-receiver":
        _, other = await procs.start(root, worker=0)
    dying, addr = await procs.start(root, worker=1 if other else 0, kill_at="after-rename")
    lost = await send(addr, segs)
    assert dying.wait(10) == -signal.SIGKILL
    assert (lost.outcome, lost.in_doubt) == (Outcome.PEER_FAILED, True), lost
    assert wal_rows(root) == sorted(all_rows(segs))  # published, not noted
    if uploaded:
        for p in (root / "wal").glob("*.wal"):
            p.unlink()
    if other is None:
        _, other = await procs.start(root, worker=0)
    again = await send(other, segs)
    assert (again.outcome, again.code) == (Outcome.ALREADY_HAD, "ALREADY_EXISTS"), again
    assert wal_rows(root) == ([] if uploaded else sorted(all_rows(segs)))  # once
    assert leftovers(root) == []


@pytest.mark.parametrize("resend_to", ["restarted-node", "other-receiver"])
async def test_a_receiver_killed_before_the_rename_takes_the_resend(tmp_path: Path, sender: Repository,
                                                                    procs: Procs, resend_to: str) -> None:
    """Nothing lost: the segment was not published, so the resend is taken, once, and the part
    file of the dead transfer is removed."""
    root = tmp_path / "node"
    segs = segments(sender, count=2)
    other = None
    if resend_to == "other-receiver":
        _, other = await procs.start(root, worker=0)
    dying, addr = await procs.start(root, worker=1 if other else 0, kill_at="before-rename")
    lost = await send(addr, segs)
    assert dying.wait(10) == -signal.SIGKILL
    assert (lost.outcome, lost.in_doubt) == (Outcome.PEER_FAILED, True), lost
    assert wal_rows(root) == []
    if other is None:
        _, other = await procs.start(root, worker=0)
    again = await send(other, segs)
    assert (again.outcome, again.code) == (Outcome.ACCEPTED, "OK"), again
    assert wal_rows(root) == sorted(all_rows(segs))
    assert leftovers(root) == []


async def test_a_receiver_killed_mid_stream_does_not_hold_the_segment(tmp_path: Path, sender: Repository,
                                                                      procs: Procs) -> None:
    """The claim of a dead process is not a live one: the resend to another receiver is taken at once."""
    root = tmp_path / "node"
    seg = segments(sender, count=1, blocks=6)[0]
    data = seg.path.read_bytes()
    _, other = await procs.start(root, worker=0)
    dying, addr = await procs.start(root, worker=1)
    async with grpc.aio.insecure_channel(addr) as ch:
        call: Any = transfer_pb2_grpc.TransferStub(ch).TransferSegment(
            metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
        await call.write(metadata(seg.path.name, data))
        assert any(k == READY_HEADER for k, _ in await call.initial_metadata() or ())
        await call.write(chunks(data, 500)[0])
        for _ in range(200):
            if leftovers(root):
                break
            await asyncio.sleep(0.02)
        assert [n.endswith(".part") for n in leftovers(root)] == [True]
        os.kill(dying.pid, signal.SIGKILL)
        dying.wait(10)
        call.cancel()
    again = await send(other, [seg])
    assert (again.outcome, again.code) == (Outcome.ACCEPTED, "OK"), again
    assert wal_rows(root) == sorted(all_rows([seg]))
    assert leftovers(root) == []


async def test_two_receiver_processes_take_a_segment_sent_four_times_at_once_once(
        tmp_path: Path, sender: Repository, procs: Procs) -> None:
    """Regression: `--receivers 2`, the same segment sent 4 times at once, 550 rows for 500: each
    process kept its own set of the keys it was receiving. Every call here gets past its checks
    before any streams a byte (the worst interleaving): one gets the go-ahead, the others hear
    UNAVAILABLE (retry), and their retries hear ALREADY_EXISTS."""
    root = tmp_path / "node"
    segs = segments(sender, count=2, blocks=5)
    data = segs[0].path.read_bytes() + b"".join(s.path.read_bytes()[8:] for s in segs[1:])
    _, a = await procs.start(root, worker=0)
    _, b = await procs.start(root, worker=1)
    async with contextlib.AsyncExitStack() as stack:
        calls = []
        for addr in (a, b, a, b):
            ch = await stack.enter_async_context(grpc.aio.insecure_channel(addr))
            call: Any = transfer_pb2_grpc.TransferStub(ch).TransferSegment(
                metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            await call.write(metadata(segs[0].path.name, data))
            calls.append(call)
        ready = [any(k == READY_HEADER for k, _ in await c.initial_metadata() or ()) for c in calls]

        async def finish(call: Any, go: bool) -> grpc.StatusCode:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                if go:
                    for m in chunks(data, 1000):
                        await call.write(m)
                    await call.done_writing()
            try:
                await call
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(finish(c, go) for c, go in zip(calls, ready, strict=True)))
    assert sum(ready) == 1 and codes.count(grpc.StatusCode.OK) == 1, (ready, codes)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    results = await asyncio.gather(*(send(addr, segs) for addr in (a, b, a, b)))
    assert {(r.outcome, r.code) for r in results} == {(Outcome.ALREADY_HAD, "ALREADY_EXISTS")}, results
    assert wal_rows(root) == sorted(all_rows(segs))  # once
    assert leftovers(root) == []


# -- the ledger's verdicts -----------------------------------------------------------------------

NOW = 1800000000.0
DEAD = "999999999.1"  # beyond any pid_max


def live_owner() -> str:
    """A process that lives while the test runs, and is not this one: the test runner's parent."""
    return f"{os.getppid()}.{ledger_module._start_time(os.getppid()) or 0}"


@pytest.mark.parametrize(("line", "part_there", "age", "verdict", "part_kept"), [
    ("claim {live}", True, 10, "busy", True),  # streaming in another process
    ("claim {live}", False, 10, "busy", False),  # its first chunk still to come
    ("claim {live}", True, 700, "free", False),  # stale: a reused pid, a free line that failed
    ("claim {dead}", True, 10, "free", False),  # died mid-stream: never published
    ("claim {dead}", False, 10, "free", False),  # died before its first chunk
    ("publish {dead}", True, 10, "free", False),  # died (or failed) before the rename
    ("publish {live}", True, 10, "free", False),  # failed before the rename (the rename runs under the lock)
    ("publish {dead}", False, 10, "done", False),  # died after the rename: published
    ("publish {live}", False, 10, "done", False),  # its DONE line failed (disk full): published
    ("publish {dead}", False, 4000, "free", False),  # published, and older than the retention
    ("free", False, 10, "free", False),
    ("", False, 10, "done", False),
    ("", False, 4000, "free", False),
], ids=lambda v: str(v))
def test_the_state_on_disk_says_whether_a_segment_was_published(
        tmp_path: Path, line: str, part_there: bool, age: float, verdict: str, part_kept: bool) -> None:
    part = tmp_path / "wal" / "Metrics_Cpu_0123456789abcdef.wal.part"
    part.parent.mkdir()
    if part_there:
        part.write_bytes(b"received so far")
    fields = line.format(live=live_owner(), dead=DEAD)
    if fields.startswith(("claim", "publish")):
        fields += f" {part}"
    key = transfer_key("Metrics_Cpu_1111111111111111.wal", 100, 7)
    path = tmp_path / "transfers.ledger"
    path.write_text(f"{NOW - age:.0f} {key}{' ' + fields if fields else ''}\n")
    ledger = TransferLedger(path, clock=lambda: NOW)
    mine = tmp_path / "wal" / "Metrics_Cpu_2222222222222222.wal.part"
    if verdict == "busy":
        with pytest.raises(UnavailableError, match="being received"):
            ledger.claim(key, mine)
    elif verdict == "done":
        assert ledger.seen(key)
        with pytest.raises(AlreadyExistsError):
            ledger.claim(key, mine)
        assert TransferLedger(path, clock=lambda: NOW).seen(key)  # noted DONE for the others too
    else:
        assert not ledger.seen(key)
        ledger.claim(key, mine)
    assert part.exists() is part_kept
    assert ledger.compact() == 1  # the busy claim, the DONE line, or our claim
    ledger.close()


def test_a_claim_taken_over_when_stale_fails_its_publish(tmp_path: Path) -> None:
    """A transfer that outlived `claim_timeout` loses its key: its publish renames nothing."""
    now = [NOW]
    first = TransferLedger(tmp_path / "l", claim_timeout=600, clock=lambda: now[0])
    second = TransferLedger(tmp_path / "l", claim_timeout=600, clock=lambda: now[0])
    key = transfer_key("Metrics_Cpu_1111111111111111.wal", 100, 7)
    slow = first.claim(key, tmp_path / "a.part")
    (tmp_path / "a.part").write_bytes(b"x")
    with pytest.raises(UnavailableError):
        second.claim(key, tmp_path / "b.part")
    now[0] += 601
    second.claim(key, tmp_path / "b.part")
    assert not (tmp_path / "a.part").exists()
    renamed = []
    with pytest.raises(UnavailableError, match="taken over"):
        first.publish(slow, lambda: renamed.append(1))
    assert renamed == []
    first.close()
    second.close()


def test_a_node_with_two_receivers_takes_each_segment_once_whichever_process_gets_each_copy(
        tmp_path: Path, sender: Repository) -> None:
    """The shape of the adversarial run: a real `ingestor serve --receivers 2` (one port shared with
    SO_REUSEPORT), each of five segments sent four times at once on connections of their own, the
    copies that were refused sent again until delivered: the node's WAL holds every row once."""
    from tests.harness import NodeProcess

    node = NodeProcess(tmp_path / "node", "--receivers", "2", "--peer-token", TOKEN, "--max-segment-age", "300s",
                       name="receiver")
    node.args += ["--peers", f"receiver={node.grpc_addr}"]
    node.start()
    try:
        batches = [segments(sender, count=2, blocks=60, table=f"Cpu{i}") for i in range(5)]

        async def deliver(segs: list[SegmentInfo]) -> list[TransferResult]:
            results = list(await asyncio.gather(*(send(node.grpc_addr, segs) for _ in range(4))))
            for _ in range(50):
                if all(r.outcome.delivered for r in results):
                    break
                await asyncio.sleep(0.2)
                results = [r if r.outcome.delivered else await send(node.grpc_addr, segs) for r in results]
            return results

        async def deliver_all() -> list[list[TransferResult]]:
            return list(await asyncio.gather(*(deliver(segs) for segs in batches)))

        for results in asyncio.run(deliver_all()):
            assert [r.outcome for r in results].count(Outcome.ACCEPTED) == 1, results
            assert all(r.outcome.delivered for r in results), results
        assert sorted(node.rows()) == sorted(row for segs in batches for row in all_rows(segs))
    finally:
        node.stop()


def test_a_receiver_process_that_starts_settles_what_dead_transfers_left(tmp_path: Path) -> None:
    """A receiver restarted alone (the node's supervisor lives on, so nothing compacts the ledger)
    removes the part files of dead transfers and notes DONE what they published."""
    wal = tmp_path / "wal"
    wal.mkdir()
    streaming, renamed = wal / "A_B_1111111111111111.wal.part", wal / "A_B_2222222222222222.wal.part"
    streaming.write_bytes(b"half")
    busy = wal / "A_B_3333333333333333.wal.part"
    busy.write_bytes(b"half")
    path = tmp_path / "transfers.ledger"
    path.write_text(f"{NOW:.0f} a:1:00000001 claim {DEAD} {streaming}\n"
                    f"{NOW:.0f} b:1:00000002 claim {DEAD} {renamed}\n"
                    f"{NOW:.0f} b:1:00000002 publish {DEAD} {renamed}\n"
                    f"{NOW:.0f} c:1:00000003 claim {live_owner()} {busy}\n")
    ledger = TransferLedger(path, clock=lambda: NOW + 5)
    ledger.open()
    assert not streaming.exists() and busy.exists()
    assert path.read_text().endswith(f"{NOW:.0f} b:1:00000002\n")  # noted DONE
    assert ledger.seen("b:1:00000002") and not ledger.seen("a:1:00000001")
    ledger.close()


def test_a_killed_process_not_yet_reaped_is_dead() -> None:
    """A receiver killed and not yet reaped by the supervisor (a zombie) holds nothing."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"{proc.pid}.{ledger_module._start_time(proc.pid)}"
        assert ledger_module.owner_alive(owner)
        proc.kill()
        for _ in range(500):
            if Path(f"/proc/{proc.pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z":
                break
            time.sleep(0.01)
        assert not ledger_module.owner_alive(owner)
    finally:
        proc.kill()
        proc.wait()


async def test_a_directory_fsync_that_fails_after_the_rename_leaves_the_sender_in_doubt(
        receiver: Receiver, sender: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is done, then the directory's fsync says ENOSPC: the segment is published (in
    the WAL, indexed), so the answer must not be RESOURCE_EXHAUSTED, which the sender takes for
    "not published" and sends elsewhere. It is in doubt, and the resend is ALREADY_EXISTS."""
    from node.wal import importer

    segs = segments(sender, count=1)
    failed = []

    def full_dir(path: Path) -> None:
        failed.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importer, "fsync_dir", full_dir)
    first = await send(receiver.addr, segs)
    assert failed and (first.outcome, first.in_doubt) == (Outcome.PEER_FAILED, True), first
    monkeypatch.undo()
    again = await send(receiver.addr, segs)
    assert (again.outcome, again.code) == (Outcome.ALREADY_HAD, "ALREADY_EXISTS"), again
    assert wal_rows(receiver.root) == sorted(all_rows(segs))
    assert receiver.rows() == all_rows(segs)  # indexed: it will be uploaded


@pytest.mark.parametrize("settled_by", ["lookup", "compaction"])
def test_two_processes_reach_one_verdict_on_a_publish_that_never_renamed(tmp_path: Path, settled_by: str) -> None:
    """Regression (the suite's soak, 2026-11-30): a receiver killed between its `publish` line and
    the rename. The restarted receiver settled it "never published" and removed the part file,
    but wrote nothing; the supervisor then read `publish` with no part file, took it for DONE, and
    refused the sender's resend as ALREADY_EXISTS: 2 acknowledged rows lost. The verdict is now
    written (a `free` line) before the part file goes, so every process reads the same one."""
    part = tmp_path / "wal" / "Metrics_Cpu_0123456789abcdef.wal.part"
    part.parent.mkdir()
    part.write_bytes(b"every byte, never renamed")
    key = transfer_key("Metrics_Cpu_1111111111111111.wal", 100, 7)
    path = tmp_path / "transfers.ledger"
    path.write_text(f"{NOW - 5:.0f} {key} claim {DEAD} {part}\n{NOW - 5:.0f} {key} publish {DEAD} {part}\n")
    supervisor = TransferLedger(path, clock=lambda: NOW)
    supervisor.open()  # read the file (and, this once, settled the dead transfer as well)
    # what a restarted receiver does when it meets the key: a lookup, or a compaction
    part.write_bytes(b"every byte, never renamed")  # as it was before the supervisor looked
    path.write_text(f"{NOW - 5:.0f} {key} claim {DEAD} {part}\n{NOW - 5:.0f} {key} publish {DEAD} {part}\n")
    receiver = TransferLedger(path, clock=lambda: NOW)
    if settled_by == "lookup":
        assert not receiver.seen(key)
    else:
        receiver.compact()
    assert not part.exists()
    fresh = TransferLedger(path, clock=lambda: NOW)
    assert not fresh.seen(key)
    assert not supervisor.seen(key), "another process took a transfer that never renamed for published"
    supervisor.claim(key, tmp_path / "wal" / "Metrics_Cpu_2222222222222222.wal.part")  # the resend is taken
    for ledger in (supervisor, fresh, receiver):
        ledger.close()
