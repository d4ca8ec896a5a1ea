"""A node's processes: the supervisor (the `ingestor serve` the run started), its receiver
processes (`--receivers N`, spawned by multiprocessing) and any helper they start.

A node killed with `kill -9` is its whole tree at once, as when a container or a pod is killed:
every process is stopped (SIGSTOP) first, so that none of them sees another die and reacts
(receivers get SIGTERM when the supervisor dies, the supervisor restarts a dead receiver), then
killed. `kill_receiver` kills one receiver alone, as the OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def tree(pid: int) -> list[int]:
    """`pid` and its living descendants, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] not in ("Z", "X"):
                children.setdefault(st[1], []).append(int(entry))
    out = [pid] if alive(pid) else []
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], []))
        i += 1
    return out


def receivers(pid: int) -> list[int]:
    """The receiver processes 1..N-1 of a node's supervisor (multiprocessing's spawned children)."""
    out = []
    for p in tree(pid)[1:]:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(p)
    return out


def is_node(pid: int) -> bool:
    """A node's supervisor or receiver process (which handle SIGUSR1/SIGUSR2, node/debug.py)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"node.cli" in cmd or b"spawn_main" in cmd


def signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of `pids` lives (zombies count as gone); those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def kill_tree(pid: int) -> list[int]:
    """SIGSTOP then SIGKILL `pid` and every descendant; the pids that were killed."""
    pids = tree(pid)
    signal_all(pids, signal.SIGSTOP)
    pids = tree(pid) or pids  # children born between the listing and the stop
    signal_all(pids, signal.SIGSTOP)
    signal_all(pids, signal.SIGKILL)
    wait_gone(pids, 10)
    return pids


def usage(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open descriptors, threads) summed over the tree of `pid`."""
    rss = fds = threads = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return rss, fds, threads


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors of the tree of `pid` by what they point at: `wal` (closed segments),
    `wal/active`, `wal/other`, `local` (the local sink's store), `deliveries`, `socket`, `pipe`,
    `anon` (eventfd, epoll...), `proc`, `other`."""
    out: dict[str, int] = {}
    for p in tree(pid):
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                kind = "socket"
            elif target.startswith("pipe:"):
                kind = "pipe"
            elif target.startswith("anon_inode:"):
                kind = "anon"
            elif target.startswith("/proc/"):
                kind = "proc"
            elif "/wal/active/" in target:
                kind = "wal/active"
            elif "/wal/" in target:
                kind = "wal" if target.endswith(".wal") else "wal/other"
            elif "/local/" in target:
                kind = "local"
            elif "/deliveries" in target:
                kind = "deliveries"
            else:
                kind = "other"
            out[kind] = out.get(kind, 0) + 1
    return out
