"""The chaos run's adx-mon collector against real nodes, in the window its oracle has to judge: a
POST whose whole body reached node A, which published it and was killed before its answer left;
the collector resends the same bytes to node B (each node's ledger is its own: B takes it too),
then to A again once it is back (A's ledger: 202, not stored again). Both ledgers say published,
both copies reach the sink, the oracle counts two publications and no loss. And a SIGTERM while
a body is half-way: whatever the answer, a 202 only for a published segment, and the rows once
after the resend."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.adxmon.test_transfer_http import FLOW, query, running, wait_for
from tests.chaos.adxmon import IN_DOUBT, AdxmonLoad, ChaosCollector, Segment, published_keys
from tests.harness import NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def rows(node: NodeProcess, sql: str) -> list[dict[str, object]]:
    """`query`, with [] for a database nothing was uploaded to yet."""
    try:
        return query(node, sql)
    except AssertionError as e:
        if "UNKNOWN_DATABASE" in str(e):
            return []
        raise


def seqs_stored(node: NodeProcess) -> Counter[int]:
    seen: Counter[int] = Counter()
    for row in rows(node, "SELECT Value FROM merge('Metrics', '^Chaos')"):
        seen[int(float(str(row["Value"])))] += 1
    for row in rows(node, "SELECT Attributes FROM merge('Logs', '^ChaosLog')"):
        attrs = row["Attributes"]
        seen[int((json.loads(attrs) if isinstance(attrs, str) else attrs)["seq"])] += 1  # type: ignore[index]
    return seen


def drained(*nodes: NodeProcess) -> bool:
    """No closed segment left in the nodes' WALs: what they took is uploaded (read the store once
    they stopped: a query while a node uploads waits for the store, and may see a batch half-way)."""
    return not any(list((n.storage_dir / "wal").glob("*.wal")) for n in nodes)


def test_a_commit_whose_answer_died_with_its_node_is_published_twice_and_counted_so(tmp_path: Path) -> None:
    acked: list[tuple[Segment, str]] = []
    seq = [0]

    def take(n: int) -> list[int]:
        seq[0] += n
        return list(range(seq[0] - n + 1, seq[0] + 1))

    a = NodeProcess(tmp_path / "data-a", *FLOW, name="node-a")
    b = NodeProcess(tmp_path / "data-b", *FLOW, name="node-b")
    with running(a), running(b):
        load = AdxmonLoad([a, b], take, seed=1, collectors=0, tables=3, log_tables=2,
                          on_ack=lambda s, n: acked.append((s, n)))
        held = None
        while held is None or not held.ended:  # a POST whose whole body is sent
            if held is not None:
                held.conn.close()
            held = load.hold("kill9", a)
        segment = held.segment
        wait_for(lambda: segment.key in published_keys(a.storage_dir), 30, "node A published it")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(30)
        held.conn.close()  # its answer lost, unread (what a timeout or a reset does to it)
        assert not load._record(segment, a, IN_DOUBT, held.conn.gzip)
        conn = ChaosCollector(b.transfer_url, load.context, gzip=False)
        assert load.attempt(conn, b, segment) == "202"  # B's ledger never saw it: published again
        conn.close()
        assert segment.holders() == {"node-a", "node-b"} and segment.acked_by == "node-b"
        a.start(60)
        conn = ChaosCollector(a.transfer_url, load.context)
        assert load.attempt(conn, a, segment) == "202"  # A's ledger knew it: not stored again
        conn.close()
        wait_for(lambda: drained(a, b), 60, "the segments uploaded")
    seen = seqs_stored(a) + seqs_stored(b)
    assert [seen[q] for q in segment.seqs()] == [2] * segment.rows
    published = {n.name: published_keys(n.storage_dir) for n in (a, b)}
    assert {n for n, keys in published.items() if segment.key in keys} == {"node-a", "node-b"}
    explained = load.judge(seen, published)
    r = load.report
    assert r.lost == 0 and r.undelivered == 0 and r.contradictions == 0 and r.published_twice == 1, r
    assert r.duplicates == r.explained == segment.rows and explained == set(segment.seqs()), r
    assert [n for _, n in acked] == ["node-b"] and r.acked_segments == 1 and r.resent == 2, r


def test_a_body_half_way_at_sigterm_is_acknowledged_only_if_published_and_stored_once(tmp_path: Path) -> None:
    seq = [0]

    def take(n: int) -> list[int]:
        seq[0] += n
        return list(range(seq[0] - n + 1, seq[0] + 1))

    node = NodeProcess(tmp_path / "data", *FLOW[:-1], "2s")  # --shutdown-grace 2s
    with running(node):
        load = AdxmonLoad([node], take, seed=2, collectors=0, tables=3, log_tables=2, on_ack=lambda s, n: None)
        held = None
        while held is None or held.ended:  # half a body sent
            if held is not None:
                held.conn.close()
            held = load.hold("sigterm", node)
        held.finish_later(0.3)  # the rest, 0.3 s into the node's 2 s grace
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
        held.join()
        outcome = held.segment.attempts[-1].outcome
        published = held.segment.key in published_keys(node.storage_dir)
        assert outcome != "202" or published, outcome  # a 202 is a segment in the ledger
        assert outcome in ("202", IN_DOUBT, "429", "refused"), outcome
        node.start(60)
        conn = ChaosCollector(node.transfer_url, load.context)
        assert load.attempt(conn, node, held.segment) == "202"  # taken now, or known from before
        conn.close()
        wait_for(lambda: drained(node), 60, "the segment uploaded")
    seen = seqs_stored(node)
    assert [seen[q] for q in held.segment.seqs()] == [1] * held.segment.rows
    assert held.segment.key in published_keys(node.storage_dir)
