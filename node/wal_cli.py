"""`ingestor wal ...`: look inside segment files, repair them, list a WAL directory."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from node.errors import CorruptionError, InvalidNameError
from node.storage import ACTIVE_DIR
from node.wal import journal
from node.wal.names import created_ms, parse_filename
from node.wal.segment import iter_rows, repair, scan


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wal = sub.add_parser("wal", help="inspect and repair WAL segment files")
    wsub = wal.add_subparsers(dest="wal_command", metavar="COMMAND", required=True)
    dump = wsub.add_parser("dump", help="print the rows of a segment as CSV")
    dump.add_argument("path", type=Path)
    dump.add_argument("--with-headers", action="store_true", help="keep the schema header lines")
    dump.set_defaults(func=cmd_dump)
    rep = wsub.add_parser("repair", help="truncate a torn or corrupt tail at the last good block")
    rep.add_argument("path", type=Path)
    rep.set_defaults(func=cmd_repair)
    ls = wsub.add_parser("ls", help="list the segments of a WAL directory")
    ls.add_argument("dir", type=Path)
    ls.set_defaults(func=cmd_ls)


def _cannot(command: str, path: Path, e: OSError) -> int:
    """One line for a path that cannot be read (missing, a directory, no permission); exit 1."""
    text = os.strerror(e.errno) if e.errno else str(e)
    print(f"ingestor wal {command}: {path}: {text[:1].lower() + text[1:]}", file=sys.stderr)
    return 1


def cmd_dump(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    try:
        for value in iter_rows(args.path, with_headers=args.with_headers):
            out.write(value)
    except CorruptionError as e:
        out.flush()
        print(f"ingestor: {e.path}: segment ends at offset {e.offset}: {e.reason}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # stdout's reader is gone: node/cli.py ends quietly
    except OSError as e:
        return _cannot("dump", args.path, e)
    out.flush()
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    try:
        result = scan(args.path)
    except OSError as e:
        return _cannot("repair", args.path, e)
    if result.error is None:
        print(f"{args.path}: ok, {result.blocks} blocks, {result.rows} rows")
        return 0
    if result.good_end == 0:
        print(f"{args.path}: not a segment ({result.error.reason}); left as is", file=sys.stderr)
        return 1
    try:
        cut = repair(result.error)
    except OSError as e:
        return _cannot("repair", args.path, e)
    print(f"{args.path}: truncated {cut} bytes at offset {result.error.offset} ({result.error.reason}); "
          f"kept {result.blocks} blocks, {result.rows} rows")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        why = "not a directory" if args.dir.exists() else "no such directory"
        print(f"ingestor wal ls: {args.dir}: {why}; pass a WAL directory (<storage-dir>/wal)", file=sys.stderr)
        return 1
    rows = []
    now = time.time()
    closed = sorted(args.dir.glob("*.wal"))
    active = sorted((args.dir / ACTIVE_DIR).glob("*.wal"))  # still being written: the rows not closed yet
    journals = sorted((args.dir / ACTIVE_DIR).glob("*" + journal.SUFFIX))
    if not closed and not active and not journals and (args.dir / "wal").is_dir():
        print(f"ingestor wal ls: no segments in {args.dir}, a storage directory: its WAL is {args.dir / 'wal'}",
              file=sys.stderr)
    for path in [*closed, *active]:
        try:
            name = parse_filename(path.name)
        except InvalidNameError:
            continue
        result = scan(path)
        age = now - name.created_ms / 1000
        if path.parent.name == ACTIVE_DIR:  # a block being appended may look torn for a moment
            state = "active" if result.error is None else f"active,torn@{result.error.offset}"
        else:
            state = "ok" if result.error is None else f"corrupt@{result.error.offset}"
        rows.append((name.database, name.table, name.schema or "-", name.segment_id, str(result.size),
                     f"{age:.0f}s", str(result.blocks), str(result.rows), state))
    for path in journals:  # requests over many tables, acknowledged, not yet split into segments
        try:
            found = journal.read(path)
            size = path.stat().st_size
        except FileNotFoundError:  # split and deleted since the listing
            continue
        jid = journal.journal_id(path)
        tables = {(e.database, e.table) for e in found.entries}
        state = "journal" + (",in-round" if journal.manifest_path(path).exists() else "")
        state += f",torn@{found.good_end}" if found.error is not None else ""
        age = now - created_ms(jid) / 1000
        rows.append(("*", f"({len(tables)} tables)", "-", jid, str(size), f"{age:.0f}s", str(found.blocks),
                     str(sum(e.count for e in found.entries)), state))
    header = ("DATABASE", "TABLE", "SCHEMA", "SEGMENT", "BYTES", "AGE", "BLOCKS", "ROWS", "STATE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


