"""Hosts for the chaos run: one network namespace per node, joined by a bridge on this machine.

    this machine (load, ClickHouse)  10.213.N.1 on bridge chb<tag>
      ├── veth chv<tag><i>h ── namespace chaos-<tag>-<i>: node i at 10.213.N.(10+i)

A node in its namespace reaches the others and the sink only through its veth link, so taking the
host side of that link down cuts it off the network, as a failed switch port or a partition would:
its peers' connections hang and time out (nothing answers, not even a reset), and it cannot reach
anyone either. Bringing the link up heals it. Everything is made by `setup()` with `ip` from
iproute2 (root, or CAP_NET_ADMIN, needed) and removed by `teardown()`; where it cannot be made,
`setup()` says why and the chaos run freezes the process instead (SIGSTOP).
"""

from __future__ import annotations

import os
import subprocess


class NetnsError(RuntimeError):
    pass


class Network:
    def __init__(self, nodes: int) -> None:
        tag = f"{os.getpid() & 0xFFFF:04x}"
        self.nodes = nodes
        self.bridge = f"chb{tag}"
        self.subnet = 16 + (os.getpid() % 200)  # 10.213.<subnet>.0/24, apart from a parallel run's
        self.host_ip = f"10.213.{self.subnet}.1"
        self.cidr = f"10.213.{self.subnet}.0/24"
        self._names = [f"chaos-{tag}-{i}" for i in range(nodes)]
        self._links = [f"chv{tag}{i}" for i in range(nodes)]
        self._made: list[list[str]] = []
        """How to undo what was made, newest last."""

    def address(self, i: int) -> str:
        return f"10.213.{self.subnet}.{10 + i}"

    def wrap(self, i: int) -> list[str]:
        """The command prefix that runs a program in node i's namespace (`ip netns exec` execs it:
        the node keeps the pid, so signals reach it)."""
        return ["ip", "netns", "exec", self._names[i]]

    def setup(self) -> None:
        """Make the bridge and the namespaces; raise NetnsError (after undoing) where impossible."""
        try:
            self._ip("link", "add", self.bridge, "type", "bridge", undo=["link", "del", self.bridge])
            self._ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
            for i, (ns, link) in enumerate(zip(self._names, self._links, strict=True)):
                self._ip("netns", "add", ns, undo=["netns", "del", ns])
                self._ip("link", "add", f"{link}h", "type", "veth", "peer", "name", f"{link}n",
                         undo=["link", "del", f"{link}h"])
                self._ip("link", "set", f"{link}h", "master", self.bridge)
                self._ip("link", "set", f"{link}h", "up")
                self._ip("link", "set", f"{link}n", "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", f"{link}n")
                self._ip("-n", ns, "link", "set", f"{link}n", "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except NetnsError:
            self.teardown()
            raise

    def cut(self, i: int) -> None:
        self._ip("link", "set", f"{self._links[i]}h", "down")

    def heal(self, i: int) -> None:
        self._ip("link", "set", f"{self._links[i]}h", "up")

    def teardown(self) -> None:
        while self._made:
            subprocess.run(["ip", *self._made.pop()], capture_output=True, check=False)

    def _ip(self, *args: str, undo: list[str] | None = None) -> None:
        try:
            r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetnsError(f"ip {' '.join(args)}: {e}") from None
        if r.returncode != 0:
            raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip()}")
        if undo is not None:
            self._made.append(undo)
