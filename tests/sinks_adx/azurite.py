"""Azurite, the Azure Storage emulator, run as a child process on loopback ports for the ADX sink tests.

The binary is `$AZURITE_BIN` if set, else `azurite` on PATH (CI: `npm install -g azurite@3.37.0`), else
`node_modules/.bin/azurite` of the repository. Tests that need it are skipped when there is none, unless
`AZURITE_REQUIRED=1` (for CI: a missing install then fails instead of passing quietly).

The first start takes free ports (port 0, read back from Azurite's "listening at" lines); a restart reuses
them, so clients holding URLs find it again, and keeps the data in `location` (containers, queues and blobs
survive a stop).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCOUNT = "devstoreaccount1"
# Azurite's documented development key: public, valid only against the emulator.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "3.37.0"
INSTALL_HINT = f"npm install -g azurite@{VERSION} (or set AZURITE_BIN to its binary)"
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)")


def find_azurite() -> str | None:
    """The Azurite binary to run, or None when it is not installed. A wrong `$AZURITE_BIN` is an error."""
    explicit = os.environ.get("AZURITE_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"AZURITE_BIN={explicit} is not an executable file")
        return explicit
    found = shutil.which("azurite")
    if found:
        return found
    local = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "azurite"
    return str(local) if os.access(local, os.X_OK) else None


class Azurite:
    """One Azurite process (blob, queue and table services) with its data under `location`."""

    def __init__(self, binary: str, location: Path) -> None:
        self.binary = binary
        self.location = location
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.output: list[str] = []

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['Blob']}/{ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['Queue']}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start Azurite and return once the blob and queue services listen."""
        assert not self.running, "already running"
        self.location.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--location", str(self.location), "--disableTelemetry", "--silent",
                "--skipApiVersionCheck"]
        for service in ("Blob", "Queue", "Table"):
            key = service.lower()
            args += [f"--{key}Host", "127.0.0.1", f"--{key}Port", str(self.ports.get(service, 0))]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self._proc = proc
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line.rstrip())
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=read, name="azurite-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        found: dict[str, int] = {}
        while not {"Blob", "Queue"} <= found.keys():
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"Azurite did not start within {timeout}s:\n" + "\n".join(self.output)) from None
            if line is None:
                self.stop()
                raise RuntimeError("Azurite exited:\n" + "\n".join(self.output))
            m = _LISTENING.search(line)
            if m:
                found[m[1]] = int(m[2])
        self.ports.update(found)

    def stop(self) -> None:
        """Stop Azurite (SIGTERM: it saves its metadata and closes its ports) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def running_azurite(directory: Path) -> Iterator[Azurite]:
    """An Azurite serving from `directory` for the block; the test is skipped without one (failed
    when AZURITE_REQUIRED is set, as CI sets it)."""
    binary = find_azurite()
    if binary is None:
        if os.environ.get("AZURITE_REQUIRED", "") not in ("", "0"):
            pytest.fail(f"Azurite not found and AZURITE_REQUIRED is set: {INSTALL_HINT}")
        pytest.skip(f"Azurite not found: {INSTALL_HINT}")
    storage = Azurite(binary, directory)
    storage.start()
    try:
        yield storage
    finally:
        storage.stop()
