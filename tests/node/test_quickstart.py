"""The README's quick start, run as a user pastes it: its commands are read from README.md and run
in a shell from the repository's root, against nodes started as `make run` starts one (the flags of
the Makefile's `run` recipe) and as the three-node example starts three. Only the ports and the
storage directories differ (free ones, under the test's directory), and `.venv/bin/` is the bin
directory of the Python running the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import query_cli
from node.sinks.local import LocalConfig, LocalSink, store_dir
from tests.harness import ROOT, NodeProcess
from tests.sinks import logs, metrics, write_batch

BIN = Path(sys.executable).parent


def quick_start() -> list[list[str]]:
    """The `sh` blocks of the README's Quick start section, as lists of lines."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start)]
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def make_run_flags() -> list[str]:
    """The flags `make run` gives `ingestor serve`, but --storage-dir's."""
    [recipe] = [line for line in (ROOT / "Makefile").read_text().splitlines() if "ingestor serve" in line]
    flags = recipe.split("ingestor serve", 1)[1].split()
    i = flags.index("--storage-dir")
    return flags[:i] + flags[i + 2:]


def shell(line: str, swap: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run one README line in bash from the repository's root, its addresses and directories swapped."""
    line = line.replace(".venv/bin/", f"{BIN}/")
    for old, new in swap.items():
        line = re.sub(re.escape(old) + r"(?![\w-])", new, line)
    return subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def count_table(n: int) -> str:
    return f"count()\n-------\n{n:>7}\n(1 row)\n"


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop()


@pytest.mark.slow
def test_the_single_node_quick_start(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    make, send, _ = quick_start()
    assert make[0].startswith("make run ")
    flags = make_run_flags()
    assert flags[:2] == ["--node-name", "local-0"] and "--max-segment-age" in flags
    node = NodeProcess(tmp_path / "data", *flags[2:], name="local-0")
    nodes.append(node.start(timeout=60))
    swap = {"127.0.0.1:4317": node.grpc_addr, "./data": str(node.storage_dir)}
    commands = [line for line in send if not line.startswith("#")]
    assert [c.split()[0:3] for c in commands] == [
        [".venv/bin/python", "-m", "tests.demo_send"],
        [".venv/bin/ingestor", "query", "--storage-dir"],
        [".venv/bin/ingestor", "status", "--addr"],
        [".venv/bin/grpcurl", "-plaintext", "127.0.0.1:4317"],
    ]
    demo, query, status, grpcurl = commands

    sent = shell(demo, swap)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines()[:3] == ["metrics: ok", "logs: ok", "traces: ok"]

    t0 = time.monotonic()
    got = shell(query, swap)
    waited = time.monotonic() - t0
    assert "--wait 60" in query
    assert (got.returncode, got.stdout) == (0, count_table(3)), got.stderr
    assert waited < 60
    # it said what it waited for, with the node's own flags (make run's 10 s segments)
    assert "uploads rows about 25s after they arrive (--max-segment-age 10s" in got.stderr, got.stderr
    print(f"\nrows in the store {waited:.1f}s after the demo sent them")

    st = shell(status, swap)
    assert st.returncode == 0, st.stderr
    assert st.stdout.startswith("node       local-0 (version ") and "\nready      yes\n" in st.stdout, st.stdout

    listed = shell(grpcurl, swap)
    assert listed.returncode == 0, listed.stderr
    assert {"grpc.health.v1.Health", "ingestor.v1.Admin", "opentelemetry.proto.collector.metrics.v1.MetricsService",
            "opentelemetry.proto.collector.logs.v1.LogsService",
            "opentelemetry.proto.collector.trace.v1.TraceService"} <= set(listed.stdout.split())

    # the node's log: the first upload said, no line per table
    log = node.log()
    assert re.search(r"INFO node\.upload\.uploader: uploaded (Metrics\.DemoRequests|Logs\.Demo|Traces\.Traces) to "
                     r"local, the first batch: ", log), log
    assert not re.search(r"INFO .*(uploaded Metrics_|stored Metrics\.)", log), log


@pytest.mark.slow
def test_the_three_node_example(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    *_, example = quick_start()
    assert example[0] == "P=n0=127.0.0.1:5317,n1=127.0.0.1:6317,n2=127.0.0.1:7317"
    serve = " ".join(example[2:4])
    assert "--peers $P --peer-token dev-secret --max-segment-age 10s &" in serve, serve
    after = example[example.index("done") + 1:]
    assert after[-1].startswith("kill $(jobs -p)")  # the test stops its nodes itself
    demo, status, *queries = after[:-1]

    cluster = [NodeProcess(tmp_path / f"data-{i}", name=f"n{i}") for i in range(3)]
    peers = ",".join(f"{n.name}={n.grpc_addr}" for n in cluster)
    for n in cluster:
        n.args += ["--peers", peers, "--peer-token", "dev-secret", "--max-segment-age", "10s"]
    for n in cluster:
        nodes.append(n.start(timeout=60))
    swap = {f"127.0.0.1:{i + 5}317": n.grpc_addr for i, n in enumerate(cluster)}
    swap |= {f"./data-{i}": str(n.storage_dir) for i, n in enumerate(cluster)}

    sent = shell(demo, swap)
    assert sent.returncode == 0 and "127.0.0.1:6317" in demo, sent.stderr
    # n1's status lists what waits in its WAL, and where each table goes: what the README says
    st = shell(status, swap)
    assert st.returncode == 0, st.stderr
    owners = {tuple(line.split()[:2]): line.split()[-1] for line in st.stdout.splitlines()
              if line.split()[:1] in (["Metrics"], ["Logs"], ["Traces"])}
    assert owners == {("Metrics", "DemoRequests"): "n0", ("Logs", "Demo"): "n0", ("Traces", "Traces"): "n2"}, st.stdout
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Here n0 owns `Metrics.DemoRequests` and `Logs.Demo`, n2 `Traces.Traces`, n1 none of them" in readme

    t0 = time.monotonic()
    for query in queries:
        got = shell(query, swap)
        assert (got.returncode, got.stdout) == (0, count_table(1)), (query, got.stderr)
    print(f"\nrows in their owners' stores {time.monotonic() - t0:.1f}s after the demo sent them to n1")
    metrics = shell('.venv/bin/ingestor query --storage-dir ./data-0 "SELECT count() FROM Metrics.DemoRequests"', swap)
    assert (metrics.returncode, metrics.stdout) == (0, count_table(3)), metrics.stderr
    none = shell('.venv/bin/ingestor query --storage-dir ./data-1 "SELECT 1"', swap)
    assert none.returncode == 1 and "no local store" in none.stderr
    assert "in a cluster a table's rows land in the store of the node that owns it" in none.stderr


# -- ingestor query --wait, and what it says (fast: no node) -----------------------------------------

def test_query_waits_for_the_store_then_for_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "storage"
    sink = LocalSink(store_dir(storage), LocalConfig(lock_wait=5))
    first, later = write_batch(tmp_path / "wal1", metrics()), write_batch(tmp_path / "wal2", logs())

    def node() -> None:  # the store appears with one table, the queried one comes later
        time.sleep(1.0)
        sink.upload(first)
        time.sleep(1.5)
        sink.upload(later)

    sink.start()
    uploads = threading.Thread(target=node)
    t0 = time.monotonic()
    uploads.start()
    try:
        code = query_cli.main(["--storage-dir", str(storage), "--wait", "30", "--format", "csv",
                               "SELECT count() FROM Logs.App"])
    finally:
        uploads.join()
        sink.stop()
    out, err = capsys.readouterr()
    assert (code, out) == (0, '"count()"\n3\n'), err
    assert 2.5 <= time.monotonic() - t0 < 30
    assert err.startswith("ingestor query: waiting up to 30s for rows: no node serving ")


def test_without_a_store_the_query_says_when_rows_come(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "nothing-yet"
    assert query_cli.main(["--storage-dir", str(storage), "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert err == (f"ingestor query: no local store in {storage}/local: nothing was uploaded to it yet. No node "
                   f"serving {storage} runs on this machine; a node with the default flags uploads rows about 5m35s "
                   "after they arrive (--max-segment-age 5m, as much again for a small batch to grow (30s at most), "
                   "then the next round of --upload-interval 5s); `--wait SECONDS` waits for the first upload\n")
    t0 = time.monotonic()
    assert query_cli.main(["--storage-dir", str(storage), "--wait", "1", "SELECT 1"]) == 1
    assert 1 <= time.monotonic() - t0 < 10
    assert "nothing was uploaded to it yet (waited 1s)" in capsys.readouterr().err


def _fake_process(proc: Path, pid: int, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    os.symlink(cwd, d / "cwd")


def test_the_node_serving_a_directory_is_found_with_its_flags(tmp_path: Path) -> None:
    """`ingestor query` reads the flags of the node serving the directory (its command line and
    environment, in /proc) to say when rows will come."""
    proc, work = tmp_path / "proc", tmp_path / "work"
    work.mkdir()
    python = "/srv/.venv/bin/python"
    _fake_process(proc, 10, [python, "-m", "http.server", "serve"], {}, work)  # not a node
    _fake_process(proc, 11, [python, "/srv/.venv/bin/ingestor", "serve", "--storage-dir", "./other"], {}, work)
    _fake_process(proc, 12, [python, "/srv/.venv/bin/ingestor", "serve", "--storage-dir", "./data", "--receivers",
                             "0", "--max-segment-age", "10s"], {"INGESTOR_UPLOAD_INTERVAL": "2s"}, work)
    _fake_process(proc, 13, [python, "-m", "node.cli", "serve", "--storage-dir", "./data", "--bogus"], {}, tmp_path)
    found = query_cli.serving_node(work / "data", proc)
    assert found is not None
    pid, config = found
    assert (pid, config.max_segment_age, config.upload_interval) == (12, 10.0, 2.0)
    assert query_cli.serving_node(tmp_path / "data", proc) is not None  # pid 13: an unknown flag is no matter
    assert query_cli.serving_node(tmp_path / "elsewhere", proc) is None
    timing = query_cli.Timing(config.max_segment_age, config.upload_interval, "the node")
    assert timing.eta == 22.0
