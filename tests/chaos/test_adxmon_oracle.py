"""The adx-mon load of the chaos runs (tests/chaos/adxmon.py), without nodes: the segments it makes
hold the rows it says, in the files a node reads; the ledger is read as the node writes it; the
oracle counts lost rows, publications not delivered, duplicates the ledgers explain and those
they do not, and ledgers that contradict the answers."""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from pathlib import Path

from node.wal.names import parse_filename
from node.wal.segment import iter_rows
from tests.adxmon import segments as seg
from tests.chaos.adxmon import IN_DOUBT, REFUSED, AdxmonLoad, Attempt, Segment, published_keys


class Seqs:
    def __init__(self) -> None:
        self.last = 0

    def take(self, n: int) -> list[int]:
        first = self.last + 1
        self.last += n
        return list(range(first, first + n))


def load(acked: list[tuple[Segment, str]] | None = None) -> AdxmonLoad:
    return AdxmonLoad([], Seqs().take, seed=7, collectors=0, tables=300, log_tables=10,
                      on_ack=lambda s, n: (acked if acked is not None else []).append((s, n)))


def seqs_in(path: Path) -> list[int]:
    """The seq of every row of a segment file: a metric row's value, a log row's `seq` attribute."""
    out = []
    logs = parse_filename(path.name).database == "Logs"
    for value in iter_rows(path):
        for line in value.decode().splitlines():
            if logs:
                attrs = line[line.rindex(',"{') + 2:-1].replace('""', '"') if line.endswith('}"') else "{}"
                out.append(int(json.loads(attrs)["seq"]))
            else:
                out.append(int(float(line.rsplit(",", 1)[1])))
    return out


def test_segments_hold_the_rows_they_say_in_files_a_node_reads(tmp_path: Path) -> None:
    lo = load()
    rng = random.Random(3)
    made = [lo.make(rng, seg.FlakeIds(host=100)) for _ in range(60)]
    assert {s.channel for s in made} == {"adxmon-metrics", "adxmon-logs"}
    assert any(s.parts > 1 for s in made) and any(s.parts == 1 for s in made)
    kinds = set()
    for s in made:
        name = parse_filename(s.name)
        assert (name.database, name.table) == (("Logs" if s.channel == "adxmon-logs" else "Metrics"), s.table)
        kinds.add((s.channel, name.schema is not None))
        path = tmp_path / s.name
        path.write_bytes(s.body)
        assert seqs_in(path) == list(s.seqs()), s.describe()
        assert s.key == f"{s.name}:{len(s.body)}:{zlib.crc32(s.body):08x}"
    # metrics (schema hash), OTLP logs (no schema part) and native logs (the logs schema's hash)
    assert kinds == {("adxmon-metrics", True), ("adxmon-logs", False), ("adxmon-logs", True)}
    assert lo.report.segments == 60 and lo.report.merged == sum(s.parts > 1 for s in made)


def test_the_ledger_is_read_by_its_last_line_per_key(tmp_path: Path) -> None:
    part = tmp_path / "wal" / "x.part"
    part.parent.mkdir()
    part.write_bytes(b"")
    gone = tmp_path / "wal" / "y.part"
    (tmp_path / "transfers.ledger").write_text("\n".join([
        "100 done:1:00000001",
        "100 renamed:1:00000002 claim 1.2 " + str(gone),
        "101 renamed:1:00000002 publish 1.2 " + str(gone),  # the owner died after the rename: published
        "100 torn:1:00000003 claim 1.2 " + str(part),
        "101 torn:1:00000003 publish 1.2 " + str(part),  # died before the rename: never published
        "100 freed:1:00000004 claim 1.2 " + str(gone),
        "101 freed:1:00000004 free",
        "100 claimed:1:00000005 claim 1.2 " + str(part),
        "100 redone:1:00000006 free",
        "102 redone:1:00000006",
    ]) + "\n")
    assert published_keys(tmp_path) == {"done:1:00000001", "renamed:1:00000002", "redone:1:00000006"}
    assert published_keys(tmp_path / "nowhere") == set()


def test_the_oracle_counts_by_the_ledgers() -> None:
    acked: list[tuple[Segment, str]] = []
    lo = load(acked)
    rng = random.Random(5)
    ok, twice, lost, undelivered, doubled, liar = (lo.make(rng, seg.FlakeIds(host=100)) for _ in range(6))
    a, b = "ingestor-0", "ingestor-1"

    def tried(s: Segment, *outcomes: tuple[str, str]) -> None:
        for node, outcome in outcomes:
            s.attempts.append(Attempt(node, outcome, 0.0))

    tried(ok, (a, REFUSED), (b, "429"), (a, "202"))
    tried(twice, (a, IN_DOUBT), (b, "202"))  # a published it, the answer lost; b too: two copies are right
    tried(lost, (b, "202"))
    tried(undelivered, (a, IN_DOUBT), (b, "202"))  # both published, one copy arrived
    tried(doubled, (a, "202"))  # published once, stored twice
    tried(liar, (a, "429"), (b, "202"))  # a answered 429 yet published it
    published = {a: {ok.key, twice.key, undelivered.key, doubled.key, liar.key},
                 b: {twice.key, lost.key, undelivered.key, liar.key}}
    seen: Counter[int] = Counter()
    for s, copies in ((ok, 1), (twice, 2), (lost, 0), (undelivered, 1), (doubled, 2), (liar, 2)):
        for q in s.seqs():
            seen[q] = copies
    explained = lo.judge(seen, published)
    r = lo.report
    assert r.lost == lost.rows
    assert r.undelivered == undelivered.rows
    assert r.duplicates == twice.rows + doubled.rows + liar.rows
    assert r.explained == twice.rows + liar.rows and r.unexplained == doubled.rows
    assert explained == set(twice.seqs()) | set(liar.seqs())
    assert r.published_twice == 3  # twice, undelivered, liar
    assert r.contradictions == 1 and "which answered that it did not take it" in r.problems[-1]
    assert len(r.problems) == 4 and not r.ok()  # lost, undelivered, doubled, liar
    assert acked == []  # the acknowledgements are the collectors', not the oracle's


def test_an_acknowledgement_is_passed_on_once_and_a_refusal_queues_a_resend() -> None:
    acked: list[tuple[Segment, str]] = []
    lo = load(acked)
    s = lo.make(random.Random(1), seg.FlakeIds(host=100))

    class Node:
        name = "ingestor-2"

    assert not lo._record(s, Node(), "429", gzip=True)  # type: ignore[arg-type]
    assert not lo._record(s, Node(), IN_DOUBT, gzip=True)  # type: ignore[arg-type]
    assert lo._record(s, Node(), "202", gzip=False)  # type: ignore[arg-type]
    assert acked == [(s, "ingestor-2")] and s.acked_by == "ingestor-2"
    assert lo.report.acked_segments == 1 and lo.report.acked_rows == s.rows and lo.report.plain_acked == 1
    assert lo.report.resent == 2 and lo.report.resent_after_doubt == 1
    assert lo.report.answers == Counter({"429": 1, IN_DOUBT: 1, "202": 1})
    assert lo._record(s, Node(), "400", gzip=False)  # type: ignore[arg-type]
    assert lo.report.errors and not lo.report.ok()
