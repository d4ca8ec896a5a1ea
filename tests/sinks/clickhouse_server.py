"""A real ClickHouse server for tests: Debian's `clickhouse-server` (18.16 on bookworm) on loopback.

The server gets free ports, a data directory and a minimal configuration of its own (one user
with a password, no interserver port), and optionally TLS (`https_port`, `tcp_port_secure`) with a
CA and certificates made by `openssl`. `start()` returns once the server logged that it is ready
for connections; `stop()` ends it; `start()` again brings it back on the same ports and data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server")
INSTALL_HINT = "clickhouse-server is not installed (apt-get install -y clickhouse-server)"
USER, PASSWORD = "ingest", "s3cret"


def find_binary() -> str | None:
    found = shutil.which("clickhouse-server")
    if found:
        return found
    return next((c for c in CANDIDATES if os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all PEM."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the files with the `openssl` command."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who, cn in (("server", "localhost"), ("client", "ingestor")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{who}.key", "-out", f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", f"{who}.pem")
    d = directory
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


class ClickHouseServer:
    """One clickhouse-server process with its own ports, data and configuration under `workdir`."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None, binary: str | None = None,
                 default_password: str = "") -> None:
        """`default_password`: the password of the user `default` (adx-mon's examples: `devpass`)."""
        self.binary = binary or find_binary()
        self.default_password = default_password
        if self.binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.workdir = workdir
        self.tls = tls
        self.http_port, self.tcp_port = free_port(), free_port()
        self.https_port, self.tcp_secure_port = (free_port(), free_port()) if tls else (0, 0)
        self.log: deque[str] = deque(maxlen=200)
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.config_file = workdir / "config.xml"
        self.hosts = ["127.0.0.1"]
        self.networks = ["127.0.0.1"]
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())

    def also_listen(self, host: str, network: str) -> None:
        """Listen on `host` as well and let clients of `network` (a CIDR) in (before `start`)."""
        self.hosts.append(host)
        self.networks.append(network)
        self.config_file.write_text(self._config())

    def _config(self) -> str:
        data = self.workdir / "data"
        tls = ""
        if self.tls:
            t = self.tls
            tls = f"""
  <https_port>{self.https_port}</https_port>
  <tcp_port_secure>{self.tcp_secure_port}</tcp_port_secure>
  <openSSL><server>
    <certificateFile>{t.server_cert}</certificateFile>
    <privateKeyFile>{t.server_key}</privateKeyFile>
    <caConfig>{t.ca}</caConfig>
    <verificationMode>strict</verificationMode>
    <loadDefaultCAFile>false</loadDefaultCAFile>
    <cacheSessions>false</cacheSessions>
    <disableProtocols>sslv2,sslv3</disableProtocols>
  </server></openSSL>"""
        return f"""<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><console>1</console></logger>
  {"".join(f"<listen_host>{h}</listen_host>" for h in self.hosts)}
  <http_port>{self.http_port}</http_port>
  <tcp_port>{self.tcp_port}</tcp_port>{tls}
  <path>{data}/</path>
  <tmp_path>{data}/tmp/</tmp_path>
  <user_files_path>{data}/user_files/</user_files_path>
  <format_schema_path>{data}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <users>
    <default>
      <password>{self.default_password}</password>
      <networks>{"".join(f"<ip>{n}</ip>" for n in self.networks)}</networks>
      <profile>default</profile><quota>default</quota>
    </default>
    <{USER}>
      <password>{PASSWORD}</password>
      <networks>{"".join(f"<ip>{n}</ip>" for n in self.networks)}</networks>
      <profile>default</profile><quota>default</quota>
    </{USER}>
  </users>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
</yandex>
"""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server; return once it accepts connections (or raise with its log)."""
        assert self.binary is not None and not self.running
        ready = threading.Event()
        self._proc = proc = subprocess.Popen([self.binary, f"--config-file={self.config_file}"], cwd=self.workdir,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, errors="replace")

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line.rstrip("\n"))
                if "Ready for connections" in line:
                    ready.set()
            ready.set()  # exited: wake the waiter

        self._reader = threading.Thread(target=read, name="clickhouse-server-log", daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or proc.poll() is not None:
            self.stop()
            raise RuntimeError("clickhouse-server did not start:\n" + "\n".join(self.log))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()

    def dsn(self, database: str, *, scheme: str = "clickhouse", target: str = "", secure: bool = False,
            credentials: bool = True, host: str = "127.0.0.1") -> str:
        """`DB=DSN` for this server."""
        port = {("clickhouse", False): self.tcp_port, ("clickhouse", True): self.tcp_secure_port,
                ("http", False): self.http_port, ("https", True): self.https_port}[(scheme, secure)]
        auth = f"{USER}:{PASSWORD}@" if credentials else ""
        query = "?secure=true" if scheme == "clickhouse" and secure else ""
        return f"{database}={scheme}://{auth}{host}:{port}/{target or database}{query}"
