"""Child process of the crash test: appends blocks forever, printing each one's id once written."""

from __future__ import annotations

import sys
from pathlib import Path

from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from tests.wal.helpers import write_block


def main() -> None:
    directory, run = Path(sys.argv[1]), int(sys.argv[2])
    repo = Repository(WalConfig(directory, max_segment_size=16 * 1024))
    repo.start()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    i = 0
    while True:
        tables = ("A", "B", "C")
        value = f"{run},{i},{'x' * (i % 300)}\n".encode() * (1 + i % 7)
        write_block(repo, "Db", tables[i % 3], fmt.KIND_LOG, value, 1 + i % 7)
        out.write(f"{run},{i}\n")  # only after write() returned
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
