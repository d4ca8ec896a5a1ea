"""Who the peers are: one interface, three sources.

- `StaticMembership`: `--peers NAME=HOST:PORT,...` (local clusters, tests);
- `StatefulSetDns`: the StatefulSet's stable DNS names `<set>-<i>.<service>`; a name that does not
  resolve is left out (a headless Service publishes only Ready pods), so the set shrinks and grows
  with readiness;
- `cluster.k8s.KubernetesMembership`: a watch of the pods of the set in the Kubernetes API, Ready
  pods only.

Every source answers `peers()` with the current view (this node included when it is a member) and
has an explicit `start()` / `stop()`. A source never raises from `peers()`: when it cannot refresh
(DNS down, API server unreachable) it keeps its last view and logs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from cluster.addr import format_hostport, parse_hostport
from cluster.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_PEER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_ORDINAL_RE = re.compile(r"(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>[0-9]+)")


@dataclass(frozen=True, order=True)
class Peer:
    name: str
    """The peer's node name (its pod name in Kubernetes); the ring hashes it."""
    address: str
    """HOST:PORT of the peer's gRPC port."""


class Membership(Protocol):
    def peers(self) -> tuple[Peer, ...]:
        """The current peers, sorted by name."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def validate_peer_name(name: str) -> str:
    if _PEER_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid peer name {name[:64]!r}: must be 1-253 of [A-Za-z0-9._-], starting alphanumeric")
    return name


def _check_addr(addr: str, what: str) -> str:
    try:
        parse_hostport(addr)
    except ValueError as e:
        raise ValueError(f"{what}: address {e}") from None
    return addr


def parse_peers(text: str | Iterable[str]) -> tuple[Peer, ...]:
    """`NAME=HOST:PORT,...` (or several such strings) as peers; ValueError on a malformed entry
    or a name given twice."""
    items = [text] if isinstance(text, str) else list(text)
    out: dict[str, Peer] = {}
    for item in items:
        for entry in item.split(","):
            entry = entry.strip()
            if not entry:
                continue
            name, sep, addr = entry.partition("=")
            if not sep:
                raise ValueError(f"peer {entry!r} is not NAME=HOST:PORT")
            name = validate_peer_name(name.strip())
            if name in out:
                raise ValueError(f"peer {name!r} given twice")
            out[name] = Peer(name, _check_addr(addr.strip(), f"peer {name}"))
    return tuple(sorted(out.values()))


class StaticMembership:
    """A fixed peer list."""

    def __init__(self, peers: Iterable[Peer]) -> None:
        self._peers = tuple(sorted(peers))

    def peers(self) -> tuple[Peer, ...]:
        return self._peers

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def statefulset_of(hostname: str) -> tuple[str, int] | None:
    """(`<set>`, ordinal) of a StatefulSet pod's host name `<set>-<ordinal>`, else None."""
    m = _ORDINAL_RE.fullmatch(hostname)
    return (m["set"], int(m["ordinal"])) if m else None


Resolver = Callable[[str], bool]
"""Whether a host name resolves now."""


def dns_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


class StatefulSetDns:
    """The pods `<set>-0 .. <set>-(replicas-1)` at `<set>-<i>.<service>[.<namespace>.svc]:<port>`.

    With `replicas` unknown (0), ordinals are probed upward until `probe_gap` names in a row do
    not resolve. Names that do not resolve are left out. Refreshed every `interval` seconds.
    """

    def __init__(self, statefulset: str, service: str, port: int, replicas: int = 0, namespace: str | None = None,
                 interval: float = 10.0, resolve: Resolver = dns_resolves, probe_gap: int = 3,
                 max_replicas: int = 1000) -> None:
        self.statefulset = statefulset
        self.service = service
        self.port = port
        self.replicas = replicas
        self.namespace = namespace
        self.interval = interval
        self._resolve = resolve
        self._probe_gap = probe_gap
        self._max = max_replicas
        self._peers: tuple[Peer, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def host(self, ordinal: int) -> str:
        host = f"{self.statefulset}-{ordinal}.{self.service}"
        return f"{host}.{self.namespace}.svc" if self.namespace else host

    def refresh(self) -> tuple[Peer, ...]:
        """Resolve the names now (blocking) and return the new view."""
        found: list[Peer] = []
        misses = 0
        limit = self.replicas if self.replicas > 0 else self._max
        for i in range(limit):
            host = self.host(i)
            if self._resolve(host):
                found.append(Peer(f"{self.statefulset}-{i}", format_hostport(host, self.port)))
                misses = 0
            elif self.replicas <= 0:
                misses += 1
                if misses >= self._probe_gap:
                    break
        view = tuple(sorted(found))
        if view != self._peers:
            log.info("peers from DNS (%s.%s): %s", self.statefulset, self.service,
                     ", ".join(p.name for p in view) or "none")
        self._peers = view
        return view

    def peers(self) -> tuple[Peer, ...]:
        return self._peers

    async def start(self) -> None:
        await asyncio.to_thread(self.refresh)
        self._task = asyncio.create_task(self._loop(), name="peers-dns")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("refreshing peers from DNS failed; keeping the last view")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
