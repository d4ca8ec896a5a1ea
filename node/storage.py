"""The storage directory (`--storage-dir`): every path under it is named here, and nowhere else.

    <storage-dir>/
        wal/                    closed segments (node/wal/repository.py)
        wal/active/             segments being written, one per table and receiver process
        wal/blocked-databases   databases over --max-disk-usage-per-database (supervisor -> receivers)
        quarantine/             segments a sink refused for good, kept for a person to look at
        deliveries/             one record per delivery in progress (node/upload/intents.py)
        transfers.ledger        transfers received from peers, so a resend is not stored twice
        local/                  the local sink's embedded ClickHouse, its lock and its deliveries record
                                (node/sinks/local.py)
        metrics/                Prometheus multi-process files, when /dev/shm cannot hold them
        leaving                 the node is leaving the cluster (supervisor -> receivers)
        tmp/                    temporary files, only when the system has no usable temporary
                                directory (a read-only root with no /tmp, as adx-mon's pods run)
        cluster.json            the ring as the supervisor sees it (supervisor -> receivers)

adx-mon's ingestor keeps its segments directly in its `--storage-dir`: on a volume it used, they
are adopted into `wal/` at start (node/wal/adopt.py); the other entries here are the node's own
(`StorageLayout.own_entries`).

Also here: `atomic_write`, the one way a small file is replaced so that a crash leaves either the
old bytes or the new ones, never a mix or nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from node import libc

T = TypeVar("T")

ACTIVE_DIR = "active"


@dataclass(frozen=True)
class StorageLayout:
    """The paths of one node's storage directory."""

    root: Path

    @classmethod
    def of_wal(cls, wal: Path) -> StorageLayout | None:
        """The layout whose WAL directory is `wal`; None when `wal` is not one (not named `wal`)."""
        layout = cls(Path(wal).parent)
        return layout if layout.wal == Path(wal) else None

    @property
    def own_entries(self) -> frozenset[str]:
        """The names the node itself makes directly in `root`, with the `.tmp` of `atomic_write`
        and the ledger's `.lock` beside each."""
        paths = (self.wal, self.quarantine, self.deliveries, self.ledger, self.local, self.metrics, self.leaving,
                 self.cluster, self.tmp)
        return frozenset(p.name + suffix for p in paths if p.parent == self.root for suffix in ("", ".tmp", ".lock"))

    @property
    def wal(self) -> Path:
        return self.root / "wal"

    @property
    def tmp(self) -> Path:
        """Temporary files, when the system has no usable temporary directory (serve_cli)."""
        return self.root / "tmp"

    @property
    def wal_active(self) -> Path:
        return self.wal / ACTIVE_DIR

    @property
    def blocked_databases(self) -> Path:
        return self.wal / "blocked-databases"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def deliveries(self) -> Path:
        return self.root / "deliveries"

    @property
    def ledger(self) -> Path:
        return self.root / "transfers.ledger"

    @property
    def local(self) -> Path:
        return self.root / "local"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def leaving(self) -> Path:
        return self.root / "leaving"

    @property
    def cluster(self) -> Path:
        return self.root / "cluster.json"


def fsync_dir(directory: Path) -> None:
    """Make a rename or an unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_remade_dir(directory: Path, make: Callable[[], T], durable: bool) -> T:
    """`make()`, which creates a file in `directory`; when that fails because the directory was
    deleted outside the node (a person freeing space: `rm -rf` of the WAL), the directory and its
    missing parents are made again (each fsynced into its parent, unless not `durable`) and
    `make()` is called once more."""
    try:
        return make()
    except FileNotFoundError:
        missing = [directory]
        while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
            missing.append(missing[-1].parent)
        directory.mkdir(parents=True, exist_ok=True)
        if durable:
            for d in missing:
                fsync_dir(d.parent)
        return make()


_SYNCFS: Callable[[int], int] | None = libc.function("syncfs")


def sync_filesystem(directory: Path) -> None:
    """Make every write, rename and unlink on the file system of `directory` durable at once
    (Linux's syncfs; sync() where it is missing): one call instead of an fsync per file and per
    directory, for closing thousands of segments together. OSError when write-back failed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(directory))
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Replace `path` with `data`: written under a temporary name, fsynced, renamed over `path`,
    and the directory fsynced (`durable=False` skips both fsyncs, for files a crash may lose as
    long as it does not tear them). Raises OSError (a full disk: ENOSPC) with `path` unchanged."""
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
