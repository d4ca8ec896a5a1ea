"""Real `ingestor serve` processes for the tests: free ports, readiness, stop, rows read back."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from node.wal.names import parse_filename
from node.wal.segment import iter_rows

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str, inodes: int = 0) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 16m) on `mnt`, and of `inodes` files at most when given,
    unmounted at the end; the test is skipped where mounting is impossible (root and
    CAP_SYS_ADMIN needed)."""
    import pytest

    mnt.mkdir(parents=True, exist_ok=True)
    try:
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill `directory`'s volume but `leave` bytes with one file (returned: unlink it to free, with
    `missing_ok`: a volume full already may refuse even its name). Writers beside it may take the
    space it counted before it writes, so it stops at ENOSPC, at the open too, and writes
    unbuffered: no refused byte is left in a buffer for the close to raise again (what ended a
    chaos run of the suite: seed 1029091968)."""
    filler = directory / "filler"
    left = max(0, shutil.disk_usage(directory).free - leave)
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return filler
    try:
        chunk = memoryview(bytes(1 << 20))
        while left > 0:
            left -= os.write(fd, chunk[:min(left, len(chunk))])
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A loopback port free now, and never one this process was given before: two ports asked for
    in a row are not bound until the node starts, and the kernel may hand out the same one twice
    (a bench's node once got it for both --http-addr and --transfer-addr)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


class NodeProcess:
    """One node as a child process, on loopback ports of its own: gRPC, HTTP and adx-mon's transfer
    front door (`transfer_url`), each a free port, so that nodes started at once, and a Prometheus
    on this host, never meet on --transfer-addr's default 9090. A test that passes --transfer-addr
    itself (`--transfer-addr=`: off) gets what it asked for."""

    def __init__(self, storage_dir: Path, *args: str, name: str = "node-0", env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", wrap: list[str] | None = None, default_transfer_addr: bool = False) -> None:
        """`host`: the address it listens on; `wrap`: a command prefix (e.g. `ip netns exec NS`);
        `default_transfer_addr`: no --transfer-addr, the node takes its default (0.0.0.0:9090)."""
        self.storage_dir = storage_dir
        self.name = name
        self.host = host
        self.wrap = list(wrap or [])
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.args = list(args)
        given = any(a == "--transfer-addr" or a.startswith("--transfer-addr=") for a in self.args)
        self.transfer_port: int | None = None if given or default_transfer_addr else free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = storage_dir.parent / f"{name}.log"
        self.not_ready = ""
        """Why the last readiness probe failed."""

    @property
    def grpc_addr(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def transfer_url(self) -> str:
        """adx-mon's transfer front door (HTTPS); only when the harness chose its port."""
        assert self.transfer_port is not None, "--transfer-addr was given by the test"
        return f"https://{self.host}:{self.transfer_port}"

    def start(self, timeout: float = 30.0) -> NodeProcess:
        cmd = [*self.wrap, sys.executable, "-m", "node.cli", "serve", "--storage-dir", str(self.storage_dir),
               "--node-name", self.name, "--grpc-addr", self.grpc_addr,
               "--http-addr", f"{self.host}:{self.http_port}",
               *(["--transfer-addr", f"{self.host}:{self.transfer_port}"] if self.transfer_port else []), *self.args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.proc.kill()  # not left running (and draining for its grace) after the test gave up on it
        self.proc.wait(30)
        raise TimeoutError(f"node not ready within {timeout}s ({self.not_ready}):\n{self.log()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as e:
            self.not_ready = f"/readyz answered {e.code}: {e.read().decode(errors='replace').strip()}"
            return False
        except (urllib.error.URLError, OSError) as e:
            self.not_ready = f"/readyz: {e}"
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)  # reaped: an unreaped Popen warns when collected (an error under -W error)
            raise

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rows(self, database: str | None = None, table: str | None = None) -> list[bytes]:
        """Every row in the node's WAL (closed and active segments), in file order."""
        out: list[bytes] = []
        wal = self.storage_dir / "wal"
        for path in sorted([*wal.glob("*.wal"), *wal.glob("active/*.wal")], key=lambda p: p.name.rsplit("_", 1)[1]):
            name = parse_filename(path.name)
            db, tbl = name.database, name.table
            if (database is None or db == database) and (table is None or tbl == table):
                for value in iter_rows(path):
                    out.extend(value.splitlines())
        return out

    def tables(self) -> set[tuple[str, str]]:
        wal = self.storage_dir / "wal"
        return {(n.database, n.table) for n in (parse_filename(p.name) for p in [*wal.glob("*.wal"),
                                                                                   *wal.glob("active/*.wal")])}


class Prometheus:
    """A real Prometheus server (Debian package) scraping itself and remote-writing to `url`."""

    def __init__(self, workdir: Path, remote_write_url: str, labels: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        extra = ", ".join(f'{k}: "{v}"' for k, v in (labels or {}).items())
        (workdir / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prom
    static_configs: [{{targets: ["127.0.0.1:{self.port}"], labels: {{{extra}}}}}]
remote_write:
  - url: {remote_write_url}
    queue_config: {{batch_send_deadline: 1s, max_shards: 1}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={self.workdir / 'tsdb'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text exposition as {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
