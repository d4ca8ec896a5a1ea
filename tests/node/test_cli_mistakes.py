"""The first hour: the mistakes a new user makes with `ingestor` end in one line on stderr that
names the problem and the fix (exit 2 for usage, 1 for the environment), never a traceback.

Each test runs the real command in a subprocess, as a user would; the JSON log format also has
unit tests of its formatter."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest

import node
from node import logformat
from tests.harness import ROOT, NodeProcess, free_port
from tests.wal.helpers import make_segment, rows_for

IN_USE = "address already in use"
RACE = ("import sys; from node import serve_cli; serve_cli.check_ports = lambda config: None; "
        "from node.cli import main; sys.exit(main(sys.argv[1:]))")
"""`ingestor` with serve's check of the ports before the start left out: the servers' own bind
fails, as when the port is taken between the check and the bind."""


def ingestor(*args: str, env: dict[str, str] | None = None, code: str | None = None, cwd: Path = ROOT,
             timeout: float = 90, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m node.cli ARGS` (or `python -c CODE ARGS`, or the console `script`) in a session
    of its own, and check that it left no process behind (receiver processes, a resource tracker)."""
    if script is not None:
        cmd = [str(script), *args]
    else:
        cmd = [sys.executable, *(["-c", code] if code else ["-m", "node.cli"]), *args]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**inherited, "PYTHONPATH": str(ROOT), **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (left := session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}\n{err}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def session(sid: int) -> list[int]:
    """The live processes of session `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def one_line(r: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    """`r` exited with `code`, saying exactly `line` on stderr, and nothing more."""
    assert "Traceback" not in r.stderr, r.stderr
    assert (r.returncode, r.stderr) == (code, line + "\n")


@pytest.fixture
def taken() -> Iterator[int]:
    """A port of 127.0.0.1 that something else listens on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# --- ports in use ---------------------------------------------------------------------------------

def test_grpc_port_in_use_is_one_line_before_anything_starts(tmp_path: Path, taken: int) -> None:
    r = ingestor("serve", "--storage-dir", str(tmp_path / "d"), "--grpc-addr", f"127.0.0.1:{taken}",
                 "--http-addr", f"127.0.0.1:{free_port()}")
    one_line(r, 1, f"ingestor serve: cannot listen on 127.0.0.1:{taken} (gRPC): {IN_USE}; free the port or pass "
                   "--grpc-addr")
    assert not (tmp_path / "d" / "wal").exists()  # said before the WAL is recovered


def test_http_port_in_use_is_one_line(tmp_path: Path, taken: int) -> None:
    r = ingestor("serve", "--storage-dir", str(tmp_path / "d"), "--grpc-addr", f"127.0.0.1:{free_port()}",
                 "--http-addr", f"127.0.0.1:{taken}", "--receivers", "2")
    one_line(r, 1, f"ingestor serve: cannot listen on 127.0.0.1:{taken} (HTTP): {IN_USE}; free the port or pass "
                   "--http-addr")


def test_with_log_level_debug_the_traceback_is_shown_too(tmp_path: Path, taken: int) -> None:
    r = ingestor("serve", "--storage-dir", str(tmp_path), "--grpc-addr", f"127.0.0.1:{taken}", "--log-level", "debug")
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1] == (f"ingestor serve: cannot listen on 127.0.0.1:{taken} (gRPC): {IN_USE}; "
                                         "free the port or pass --grpc-addr")


@pytest.mark.parametrize("receivers", ["1", "2"])
@pytest.mark.parametrize("which", ["gRPC", "HTTP"])
def test_a_port_taken_after_the_check_stops_what_started_and_ends_in_one_line(
        tmp_path: Path, taken: int, which: str, receivers: str) -> None:
    """The servers' own bind fails after the WAL, the uploads and the receiver processes started:
    all of it is stopped, nothing is left running, no warning of a coroutine never awaited."""
    grpc_port, http_port = (taken, free_port()) if which == "gRPC" else (free_port(), taken)
    r = ingestor("serve", "--storage-dir", str(tmp_path), "--grpc-addr", f"127.0.0.1:{grpc_port}",
                 "--http-addr", f"127.0.0.1:{http_port}", "--receivers", receivers, code=RACE)
    flag = "--grpc-addr" if which == "gRPC" else "--http-addr"
    assert r.returncode == 1, r.stderr
    for bad in ("Traceback", "never awaited", "Event loop is closed", "Exception ignored"):
        assert bad not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == (f"ingestor serve: cannot listen on 127.0.0.1:{taken} ({which}): {IN_USE}; "
                                         f"free the port or pass {flag}")
    assert "stopped" in r.stderr  # the node that had started was stopped


def test_the_same_port_for_grpc_and_http_is_a_usage_error(tmp_path: Path) -> None:
    port = free_port()
    r = ingestor("serve", "--storage-dir", str(tmp_path), "--grpc-addr", f"localhost:{port}",
                 "--http-addr", f"127.0.0.1:{port}", "--receivers", "2")
    one_line(r, 2, f"ingestor serve: error: --grpc-addr localhost:{port} and --http-addr 127.0.0.1:{port} are the "
                   "same port; give each its own (see ingestor serve --help)")


# --- the storage directory ------------------------------------------------------------------------

def _serve(storage: Path | str) -> subprocess.CompletedProcess[str]:
    return ingestor("serve", "--storage-dir", str(storage), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")


def test_storage_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_line(_serve(tmp_path / "f"), 1, f"ingestor serve: --storage-dir {tmp_path / 'f'} is not a directory; pass a "
                                        "directory (it is created when missing)")


def test_storage_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_line(_serve(tmp_path / "f" / "d"), 1, f"ingestor serve: cannot create --storage-dir {tmp_path / 'f' / 'd'}: "
                                              "not a directory; pass a directory this user can create or write to")


def test_storage_dir_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a directory of mode 0o500 all the same: "
                    "test_storage_dir_not_writable_even_by_root covers the case")
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    one_line(_serve(d), 1, f"ingestor serve: --storage-dir {d} is not writable: permission denied; fix its "
                           "permissions or pass another directory")


def test_storage_dir_not_writable_even_by_root() -> None:
    """/proc/self is a directory in which nobody, root included, can create a file."""
    one_line(_serve("/proc/self"), 1, "ingestor serve: --storage-dir /proc/self is not writable: no such file or "
                                      "directory; fix its permissions or pass another directory")


# --- usage errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "line"), [
    (["serve", "--bogus"], "ingestor serve: error: unrecognized arguments: --bogus (see ingestor serve --help)"),
    (["serve", "--max-segment-size", "abc"], "ingestor serve: error: argument --max-segment-size: not a size: "
     "'abc' (examples: 1048576, 100MB, 1GiB) (see ingestor serve --help)"),
    (["serve"], "ingestor serve: error: --storage-dir (or INGESTOR_STORAGE_DIR) is required "
     "(see ingestor serve --help)"),
    (["serve", "--log-format", "xml"], "ingestor serve: error: argument --log-format: invalid choice: 'xml' "
     "(choose from 'text', 'json') (see ingestor serve --help)"),
    (["wal", "ls", "/tmp", "--x"], "ingestor wal ls: error: unrecognized arguments: --x (see ingestor wal ls --help)"),
    (["wal"], "ingestor wal: error: the following arguments are required: COMMAND (see ingestor wal --help)"),
    (["bogus"], "ingestor: error: argument COMMAND: invalid choice: 'bogus' (choose from 'serve', 'status', "
     "'query', 'wal', 'operator') (see ingestor --help)"),
    (["status", "--timeout", "x"], "ingestor status: error: argument --timeout: invalid float value: 'x' "
     "(see ingestor status --help)"),
    (["operator", "--bogus"], "ingestor operator: error: unrecognized arguments: --bogus "
     "(see ingestor operator --help)"),
])
def test_a_usage_error_is_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    # INGESTOR_STORAGE_DIR empty (a variable set from an unset one) is no storage directory, not "."
    r = ingestor(*args, env={"INGESTOR_STORAGE_DIR": ""}, cwd=tmp_path, timeout=30)
    one_line(r, 2, line)
    assert r.stdout == ""


def test_a_bad_environment_variable_stops_serve_alone(tmp_path: Path) -> None:
    env = {"INGESTOR_MAX_SEGMENT_SIZE": "abc"}
    one_line(ingestor("serve", "--storage-dir", str(tmp_path), env=env), 2,
             "ingestor serve: error: INGESTOR_MAX_SEGMENT_SIZE='abc': not a size: 'abc' (examples: 1048576, 100MB, "
             "1GiB) (see ingestor serve --help)")
    r = ingestor("wal", "ls", str(tmp_path), env=env)
    assert (r.returncode, r.stderr) == (0, "")
    assert ingestor("--version", env=env).returncode == 0


# --- --version ----------------------------------------------------------------------------------------

def test_version_is_the_packages() -> None:
    r = ingestor("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"ingestor {metadata.version('telemetry-ingestor')}\n", "")


def test_version_without_the_package_installed_is_pyprojects(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert node.version() == tomllib.load(f)["project"]["version"]
    assert node.version(ROOT / "no-such-pyproject.toml") == "unknown"


# --- wal ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "file"])
def test_wal_ls_of_no_directory_is_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "wal"
    if kind == "file":
        path.write_text("x")
    why = "no such directory" if kind == "missing" else "not a directory"
    one_line(ingestor("wal", "ls", str(path)), 1, f"ingestor wal ls: {path}: {why}; pass a WAL directory "
                                                  "(<storage-dir>/wal)")


def test_wal_repair_and_dump_of_a_missing_file_are_one_line(tmp_path: Path) -> None:
    for command in ("repair", "dump"):
        one_line(ingestor("wal", command, str(tmp_path / "x.wal")), 1,
                 f"ingestor wal {command}: {tmp_path / 'x.wal'}: no such file or directory")


def test_wal_ls_of_a_storage_directory_points_at_its_wal(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()
    r = ingestor("wal", "ls", str(tmp_path))
    assert r.returncode == 0 and r.stdout.split() == ["DATABASE", "TABLE", "SCHEMA", "SEGMENT", "BYTES", "AGE",
                                                       "BLOCKS", "ROWS", "STATE"]
    assert r.stderr == f"ingestor wal ls: no segments in {tmp_path}, a storage directory: its WAL is {tmp_path}/wal\n"


def _into_head(*args: str) -> tuple[int, str, bytes]:
    """`ingestor ARGS | head -1`: the command's exit code and stderr, and what head printed."""
    cmd = [sys.executable, "-m", "node.cli", *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as first:
        assert first.stdout is not None and first.stderr is not None
        head = subprocess.run(["head", "-1"], stdin=first.stdout, capture_output=True, timeout=60)
        first.stdout.close()
        err = first.stderr.read().decode()
        code = first.wait(60)
    return code, err, head.stdout


def test_wal_ls_and_dump_into_a_closed_pipe_end_quietly(tmp_path: Path) -> None:
    for i in range(1500):  # 1500 lines: more than a pipe holds
        make_segment(tmp_path / f"Db_T{i}_{i + 1:016x}.wal", [rows_for(i)])
    code, err, out = _into_head("wal", "ls", str(tmp_path))
    assert out.split() == [b"DATABASE", b"TABLE", b"SCHEMA", b"SEGMENT", b"BYTES", b"AGE", b"BLOCKS", b"ROWS",
                           b"STATE"]
    assert (code, err) == (141, "")
    big = tmp_path / "Db_Big_0000000000000001.wal"
    make_segment(big, [rows_for(i, 50) for i in range(100)])
    code, err, out = _into_head("wal", "dump", str(big))
    assert (code, err, out) == (141, "", rows_for(0, 1))


# --- status at the wrong port ----------------------------------------------------------------------------

def test_status_at_the_http_port_names_the_mistake_and_the_node_says_one_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data").start()
    try:
        before = len(node.log())
        addr = f"127.0.0.1:{node.http_port}"
        for _ in range(3):
            one_line(ingestor("status", "--addr", addr), 1,
                     f"ingestor status: {addr} answers HTTP/1, not gRPC: is it the node's HTTP port (--http-addr)? "
                     "pass its gRPC port (--grpc-addr, 4317 by default) to --addr")
        time.sleep(0.5)
        said = node.log()[before:]
        assert len(said.splitlines()) <= 1, said
        assert "Traceback" not in said and "ERROR" not in said, said
        r = ingestor("status", "--addr", node.grpc_addr)
        assert r.returncode == 0 and "node       node-0" in r.stdout
    finally:
        assert node.stop() == 0


def test_status_where_nothing_listens(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    one_line(ingestor("status", "--addr", addr), 1,
             f"ingestor status: nothing listens on {addr} (connection refused): is the node running, with this "
             "--grpc-addr?")


# --- --log-format ---------------------------------------------------------------------------------------

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_node_with_log_format_json_writes_one_object_a_line(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", "--receivers", "2", env={"INGESTOR_LOG_FORMAT": "json"}).start()
    assert node.stop() == 0
    lines = node.log().splitlines()
    docs = [json.loads(line) for line in lines]  # every line
    assert len(docs) >= 5
    for doc in docs:
        assert {"time", "level", "logger", "message"} <= doc.keys()
        assert RFC3339_UTC.fullmatch(doc["time"]), doc
    assert any(d.get("receiver") == 1 and "serving" in d["message"] for d in docs)  # the receiver process too
    assert any(d["logger"] == "node.server" and d["message"] == "node node-0 stopped" for d in docs)


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("node.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.created = datetime(2026, 12, 1, 2, 3, 4, 567000, tzinfo=UTC).timestamp()
    return record


def test_json_formatter_fields() -> None:
    line = logformat.JsonFormatter().format(_record("rows %d of %s\nsecond line", 3, "T"))
    assert "\n" not in line
    assert json.loads(line) == {"time": "2026-12-01T02:03:04.567Z", "level": "WARNING", "logger": "node.test",
                                "message": "rows 3 of T\nsecond line"}


def test_json_formatter_exc_info_is_a_string_and_fields_are_added() -> None:
    doc = json.loads(logformat.JsonFormatter({"receiver": 2}).format(_record("failed", exc=True)))
    assert isinstance(doc["exc_info"], str)
    assert doc["exc_info"].startswith("Traceback (most recent call last):")
    assert doc["exc_info"].endswith("ValueError: boom")
    assert doc["receiver"] == 2 and doc["message"] == "failed"


def test_rfc3339_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert logformat.rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
        assert logformat.rfc3339(1.5) == "1970-01-01T00:00:01.500Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_setup_replaces_the_handlers(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logformat.setup("json", "warning")
    logging.getLogger("node.x").info("not shown")
    logging.getLogger("node.x").warning("shown %s", 1)
    logformat.setup("text", "info", receiver=3)
    logging.getLogger("node.x").info("as text")
    first, second = out.getvalue().splitlines()
    assert json.loads(first)["message"] == "shown 1"
    assert second.endswith(" INFO receiver-3 node.x: as text")
    assert len(root_logger.handlers) == 1
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logformat.formatter("xml")
