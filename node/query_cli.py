"""`ingestor query --storage-dir DIR "SQL"`: run SQL against the local sink's store, also while the
node is running (it waits for an upload in progress; see node/sinks/local.py).

Output: `table` (default) is aligned columns for a person; `csv` is CSV with a header line; `json`
is JSON Lines, one object per row (64-bit integers quoted, as ClickHouse does, so no JSON reader
rounds them). The store is opened read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from node.errors import SinkError
from node.sinks.local import open_store
from node.storage import StorageLayout

FORMATS = {"csv": "CSVWithNames", "json": "JSONEachRow"}
SETTINGS = {"output_format_json_escape_forward_slashes": "0"}
_NUMERIC = ("Int", "UInt", "Float", "Decimal")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("query", help="run SQL against the local store (the default sink)",
                       description="Run SQL against the local sink's embedded ClickHouse store. Tables are "
                                   "<Database>.<Table>, e.g. SELECT count() FROM Metrics.Up")
    p.add_argument("--storage-dir", type=Path, required=True, help="the node's storage directory")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table: aligned columns (default); csv: with a header line; json: one object per line")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for the node's upload in progress to release the store (default %(default)s)")
    p.add_argument("sql", help="the query, in ClickHouse SQL")
    p.set_defaults(func=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    directory = StorageLayout(args.storage_dir).local
    if not (directory / "metadata").is_dir():
        print(f"ingestor query: no local store in {directory} (nothing was uploaded to it yet)", file=sys.stderr)
        return 1
    fmt = FORMATS.get(args.format, "JSONCompactStrings")
    try:
        with open_store(directory, args.wait, read_only=True, settings=SETTINGS) as conn:
            result = conn.query(args.sql, fmt).bytes()
    except SinkError as e:
        print(f"ingestor query: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # chdb's error for a bad query
        print(f"ingestor query: {str(e).strip()}", file=sys.stderr)
        return 1
    if args.format == "table":
        if result:
            render_table(json.loads(result), sys.stdout)
    else:
        sys.stdout.buffer.write(result)
        sys.stdout.flush()
    return 0


def _cell(v: Any) -> str:
    """A value on one line: control characters shown as escapes (for a person, not for parsing)."""
    text = v if isinstance(v, str) else json.dumps(v)
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def render_table(doc: dict[str, Any], out: TextIO) -> None:
    """Aligned columns of a `JSONCompactStrings` result: numbers right-aligned, then a row count."""
    names = [m["name"] for m in doc["meta"]]
    right = [m["type"].removeprefix("Nullable(").startswith(_NUMERIC) for m in doc["meta"]]
    rows = [[_cell(v) for v in row] for row in doc["data"]]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out.write(line(names) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in rows:
        out.write(line(r) + "\n")
    n = len(rows)
    out.write(f"({n} row{'s' if n != 1 else ''})\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m node.query_cli ...`, for before the command is wired into `ingestor`."""
    parser = argparse.ArgumentParser(prog="ingestor")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["query", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
