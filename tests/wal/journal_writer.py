"""Child process of the journal tests (tests/wal/test_journal.py): writes requests of many tables
(written through the journal), printing each request's id only once `write_many` returned.

    journal_writer loop DIR RUN
        forever: a request of TABLES tables; `split_journal()` every few requests, and the
        background splitter running rounds every few milliseconds too; the parent kills it (-9)
    journal_writer die DIR K N
        a writer process (worker 1, `start(recover=False)`): one small request straight into a
        segment, N journaled requests, a round, N more; then it kills itself (-9) in the middle of
        the next round, before its K-th append (K < 0: before any round begins)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from node.wal import format as fmt
from node.wal import repository
from node.wal.repository import Block, Repository, WalConfig
from node.wal.table import TableWal

TABLES = 100
DATABASE = "Db"


def table_name(t: int) -> str:
    return f"T{t:02d}"


def rows(tag: str, t: int) -> tuple[bytes, int]:
    """The rows of table `t` in request `tag` (unique over every run): 1 to 4 of them."""
    n = 1 + (t + len(tag)) % 4
    return b"".join(f"{tag},{t},{i},{'x' * ((t * 7 + i) % 50)}\n".encode() for i in range(n)), n


def request(tag: str, tables: int = TABLES) -> list[Block]:
    blocks = []
    for t in range(tables):
        data, n = rows(tag, t)
        blocks.append(Block(DATABASE, table_name(t), fmt.KIND_LOG, data, n))
    return blocks


def _ack(tag: str) -> None:
    sys.stdout.write(f"{tag}\n")  # only after write_many returned
    sys.stdout.flush()


def loop(directory: Path, run: int) -> None:
    repository.JOURNAL_ROUND_SECONDS = 0.02  # the background splitter's rounds, every few ms
    repo = Repository(WalConfig(directory))
    repo.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    i = 0
    while True:
        tag = f"{run}-{i}"
        repo.write_many(request(tag))
        _ack(tag)
        i += 1
        if i % 3 == 0:
            repo.split_journal()


def die(directory: Path, k: int, n: int) -> None:
    repository.JOURNAL_ROUND_SECONDS = 1e6  # no background round: the process dies with its journal
    repo = Repository(WalConfig(directory, worker=1))
    repo.start(recover=False)
    repo.write_many([Block(DATABASE, table_name(0), fmt.KIND_LOG, b"w1-small,0,0,\n", 1)])
    _ack("w1-small")
    for i in range(n):
        repo.write_many(request(f"w1-a{i}"))
        _ack(f"w1-a{i}")
    repo.split_journal()
    for i in range(n):
        repo.write_many(request(f"w1-b{i}"))
        _ack(f"w1-b{i}")
    if k < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    real = TableWal.append_held
    calls = [0]

    def append_held(self: TableWal, *args: object, **kwargs: object) -> int:
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    TableWal.append_held = append_held  # type: ignore[method-assign]
    repo.split_journal()
    sys.stdout.write("round finished\n")  # not reached: the round dies before its K-th append
    sys.stdout.flush()


def main() -> None:
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "loop":
        loop(directory, int(sys.argv[3]))
    elif mode == "die":
        die(directory, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
