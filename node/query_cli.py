"""`ingestor query --storage-dir DIR "SQL"`: run SQL against the local sink's store, also while the
node is running (it waits for an upload in progress; see node/sinks/local.py).

`--wait SECONDS` waits for rows: for the store to appear (the node's first upload), then for the
query to return a row (a table that does not exist yet counts as no row). It looks at the store's
files every half second and runs the query again only when an upload changed them (and every 10
s), because every opening of the store costs the node's sink a reopening (and chdb leaks a few
threads and descriptors with each one). Rows reach the store about --max-segment-age, plus as much
again (at most 30 s: small batches wait to grow), plus --upload-interval after they arrived; the
messages say when, from the flags of the node serving the directory when one runs on this machine
(read in /proc), from the defaults otherwise.

Output: `table` (default) is aligned columns for a person; `csv` is CSV with a header line; `json`
is JSON Lines, one object per row (64-bit integers quoted, as ClickHouse does, so no JSON reader
rounds them). The store is opened read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from node.config import BATCH_GRACE_SECONDS as BATCH_GRACE
from node.config import NodeConfig, add_serve_flags, env_defaults, from_args
from node.errors import SinkError
from node.sinks.local import DELIVERIES_FILE, open_store
from node.storage import StorageLayout

FORMATS = {"csv": "CSVWithNames", "json": "JSONEachRow"}
SETTINGS = {"output_format_json_escape_forward_slashes": "0"}
_NUMERIC = ("Int", "UInt", "Float", "Decimal")
LOCK_WAIT = 30.0
"""Seconds to wait for the node's upload in progress to release the store, without --wait."""
POLL = 0.5
"""Seconds between two looks at the store's files while waiting for rows."""
RERUN = 10.0
"""Seconds after which the query runs again while waiting, even with no sign of an upload."""
MIN_RERUN = 2.0
"""Seconds at least between two runs of the query while waiting (a busy node uploads all the time)."""
NOT_YET = ("(UNKNOWN_TABLE)", "(UNKNOWN_DATABASE)")
"""chdb's errors that --wait waits out: the table is created by its first upload."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("query", help="run SQL against the local store (the default sink)",
                       description="Run SQL against the local sink's embedded ClickHouse store. Tables are "
                                   "<Database>.<Table>, e.g. SELECT count() FROM Metrics.Up")
    p.add_argument("--storage-dir", type=Path, required=True, help="the node's storage directory")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table: aligned columns (default); csv: with a header line; json: one object per line")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="wait up to SECONDS for rows: for the store to appear and the query to return a row (a "
                        "table not created yet counts as none), then print. A node uploads rows about "
                        "--max-segment-age, plus as much again (30s at most), plus --upload-interval after they "
                        "arrive: about 25s under `make run` (10s segments), 5m35s with the defaults. Also how long "
                        f"to wait for an upload in progress to release the store (without --wait: {LOCK_WAIT:g}s)")
    p.add_argument("sql", help="the query, in ClickHouse SQL")
    p.set_defaults(func=cmd_query)


@dataclass(frozen=True)
class Timing:
    """When a node uploads rows: its flags, or the defaults."""
    segment_age: float
    upload_interval: float
    node: str
    """Which node's flags, for the messages ("the node serving ./data (pid 123)" or the defaults)."""
    cluster: bool = False

    @property
    def eta(self) -> float:
        """Seconds from a row's arrival to its upload, about (the worst case, give or take a tick)."""
        return self.segment_age + min(BATCH_GRACE, self.segment_age) + self.upload_interval

    def explain(self) -> str:
        text = (f"{self.node} uploads rows about {_duration(self.eta)} after they arrive (--max-segment-age "
                f"{_duration(self.segment_age)}, as much again for a small batch to grow ({_duration(BATCH_GRACE)} "
                f"at most), then the next round of --upload-interval {_duration(self.upload_interval)})")
        if self.cluster:
            text += (f"; in a cluster a table's rows land in the store of the node that owns it, about "
                     f"{_duration(self.eta + self.segment_age + self.upload_interval)} after they arrive when another "
                     "node received them (sent on when their segment closes, then batched anew; `ingestor status "
                     "--addr HOST:PORT` shows the owner of each table waiting there)")
        return text


def _duration(seconds: float) -> str:
    if seconds >= 60:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s}s" if s else f"{m}m"
    return f"{seconds:.0f}s" if seconds == round(seconds) else f"{seconds:.1f}s"


def _launcher(argv: list[str]) -> int | None:
    """Where the `ingestor` command (or `python -m node.cli`) is in a command line: the program
    itself, or its script after an interpreter and the interpreter's options; else None (an
    argument of another program that happens to be named `ingestor` is no node)."""
    for i, a in enumerate(argv):
        if i and not Path(argv[0]).name.startswith("python"):
            return None
        if Path(a).name == "ingestor" or a.endswith("node/cli.py") or (a == "node.cli" and argv[i - 1] == "-m"):
            return i
        if i and not a.startswith("-") and argv[i - 1] not in _VALUED:
            return None
    return None


_VALUED = ("-m", "-X", "-W")
"""An interpreter's options that take the next argument as their value."""


@functools.cache
def _serve_options() -> frozenset[str]:
    p = argparse.ArgumentParser(add_help=False)
    add_serve_flags(p)
    return frozenset(o for o in p._option_string_actions if o.startswith("--"))


def _serve_args(argv: list[str], env: Mapping[str, str] | None = None) -> list[str] | None:
    """The flags of a node's command line, as `ingestor` reads it, else None: `ingestor serve
    FLAGS`, adx-mon's `ingestor FLAGS` (no sub-command; Go's one-dash `-storage-dir` too), and
    `ingestor` alone when its environment `env` sets INGESTOR_STORAGE_DIR; `python -m node.cli`
    alike."""
    from node.cli import long_dashes, serve_by_default  # node.cli imports this module

    i = _launcher(argv)
    if i is None:
        return None
    args = serve_by_default(argv[i + 1:], env or {})
    if args[:1] != ["serve"]:
        return None
    return long_dashes(args[1:], set(_serve_options()))


def _read_config(argv: list[str], env: Mapping[str, str]) -> NodeConfig | None:
    """A NodeConfig from a node's flags and environment (None when they do not parse)."""
    p = argparse.ArgumentParser(add_help=False)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            add_serve_flags(p)
            env_defaults(p, env)
            ns, _ = p.parse_known_args(argv)
            ns.peer_token_file = None  # a path of its own working directory, and no business of ours
            return from_args(ns)
    except (SystemExit, Exception):
        return None


def serving_node(storage_dir: Path, proc: Path = Path("/proc")) -> tuple[int, NodeConfig] | None:
    """The pid and NodeConfig of the node serving `storage_dir` on this machine, from its command
    line and environment in /proc (None: no such node, not Linux, or not ours to read)."""
    try:
        want = storage_dir.resolve()
        pids = [int(d.name) for d in proc.iterdir() if d.name.isdigit()]
    except OSError:
        return None
    for pid in sorted(pids):
        if pid == os.getpid():
            continue
        d = proc / str(pid)
        try:
            argv = [a.decode(errors="replace") for a in (d / "cmdline").read_bytes().split(b"\0")[:-1]]
            if _launcher(argv) is None:
                continue
            env = dict(line.decode(errors="replace").partition("=")[::2]
                       for line in (d / "environ").read_bytes().split(b"\0") if b"=" in line)
            cwd = Path(os.readlink(d / "cwd"))
        except OSError:
            continue
        flags = _serve_args(argv, env)
        if flags is None:
            continue
        config = _read_config(flags, env)
        if config is not None and (cwd / config.storage_dir).resolve() == want:
            return pid, config
    return None


def timing(storage_dir: Path) -> Timing:
    """When rows reach `storage_dir`'s store: the running node's flags, or the defaults."""
    found = serving_node(storage_dir)
    if found is not None:
        pid, config = found
        return Timing(config.max_segment_age, config.upload_interval,
                      f"the node serving {storage_dir} (pid {pid})", bool(config.peers))
    d = NodeConfig(storage_dir=storage_dir)
    return Timing(d.max_segment_age, d.upload_interval,
                  f"no node serving {storage_dir} runs on this machine; a node with the default flags")


def _store_version(directory: Path) -> tuple[int, ...] | None:
    """What changes when the sink stores a batch: its deliveries file, written at each insert
    (None: no store yet)."""
    if not (directory / "metadata").is_dir():
        return None
    try:
        st = (directory / DELIVERIES_FILE).stat()
    except OSError:
        return (0,)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _has_rows(result: bytes, fmt: str) -> bool:
    if fmt == "table":
        return bool(result) and bool(json.loads(result).get("data"))
    if fmt == "csv":
        return result.count(b"\n") > 1  # the header line, then rows
    return bool(result.strip())


def _run(directory: Path, sql: str, fmt: str, lock_wait: float) -> bytes | str:
    """The query's result, or the message of its error."""
    try:
        with open_store(directory, lock_wait, read_only=True, settings=SETTINGS) as conn:
            result: bytes = conn.query(sql, FORMATS.get(fmt, "JSONCompactStrings")).bytes()
            return result
    except SinkError as e:
        return str(e)
    except RuntimeError as e:  # chdb's error for a bad query
        return str(e).strip()


def cmd_query(args: argparse.Namespace) -> int:
    directory = StorageLayout(args.storage_dir).local
    waiting = args.wait is not None
    deadline = time.monotonic() + (args.wait or 0.0)
    said_waiting = False
    version: tuple[int, ...] | None = None
    last_run = float("-inf")
    last: bytes | str | None = None
    while True:
        now = time.monotonic()
        seen = _store_version(directory)
        if seen is not None and now - last_run >= MIN_RERUN and (seen != version or now - last_run >= RERUN):
            version, last_run = seen, now
            last = _run(directory, args.sql, args.format, max(0.5, deadline - now) if waiting else LOCK_WAIT)
            done = (isinstance(last, str) and not last.endswith(NOT_YET)) or (
                isinstance(last, bytes) and _has_rows(last, args.format))
            if done or not waiting or time.monotonic() >= deadline:
                break
        elif now >= deadline:
            break
        if not said_waiting:
            said_waiting = True
            print(f"ingestor query: waiting up to {args.wait:g}s for rows: {timing(args.storage_dir).explain()}",
                  file=sys.stderr)
        time.sleep(max(0.0, min(POLL, deadline - time.monotonic())))
    if last is None:
        print(f"ingestor query: no local store in {directory}: nothing was uploaded to it yet"
              f"{f' (waited {args.wait:g}s)' if waiting else ''}. {_capital(timing(args.storage_dir).explain())}"
              f"{'' if waiting else '; `--wait SECONDS` waits for the first upload'}", file=sys.stderr)
        return 1
    if isinstance(last, str):
        print(f"ingestor query: {last}", file=sys.stderr)
        if last.endswith(NOT_YET):
            print(f"ingestor query: {_capital(timing(args.storage_dir).explain())}"
                  f"{'' if waiting else '; `--wait SECONDS` waits for the first upload of the table'}",
                  file=sys.stderr)
        return 1
    if waiting and not _has_rows(last, args.format):
        print(f"ingestor query: no row within --wait {args.wait:g}s; {timing(args.storage_dir).explain()}",
              file=sys.stderr)
    _print(last, args.format)
    return 0


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _print(result: bytes, fmt: str) -> None:
    if fmt == "table":
        if result:
            render_table(json.loads(result), sys.stdout)
    else:
        sys.stdout.buffer.write(result)
        sys.stdout.flush()


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
