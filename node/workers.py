"""Several receiver processes for one node, so that conversion (the hot path) uses every core.

Receiver 0 is the supervisor: it recovers the WAL before any other receiver starts, keeps the
index of closed segments (and later uploads them), and starts receivers 1..N-1 as child processes.
All of them bind the same gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads
connections across them; each writes its own active segments (segment ids carry the receiver in
their host bits) and publishes a closed segment by renaming it into the WAL directory.

Disk accounting is shared through one array in shared memory: each process publishes its own bytes
and segments there, and checks the limits against the sum. A receiver that dies is restarted, and
the supervisor first repairs and publishes the active segments it left behind, so no acknowledged
row waits for the next restart of the node.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
from typing import Any

from cluster.tasks import cancel_and_wait
from node import debug, libc, logformat
from node.config import NodeConfig
from node.wal.names import host_id

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
MIN_STOP_SECONDS = 10.0


class SlotUsage:
    """This process's slot in the shared accounting array: (bytes, segments) per process."""

    def __init__(self, array: Any, index: int, count: int) -> None:
        self._array = array
        self._index = index
        self._count = count

    def publish(self, usage: int, segments: int) -> None:
        self._array[2 * self._index] = usage
        self._array[2 * self._index + 1] = segments

    def others(self) -> tuple[int, int]:
        a = self._array
        usage = segments = 0
        for i in range(self._count):
            if i != self._index:
                usage += a[2 * i]
                segments += a[2 * i + 1]
        return usage, segments


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (PR_SET_PDEATHSIG)."""
    prctl = libc.function("prctl")
    if prctl is not None:
        prctl(1, signal.SIGTERM)


def child_main(config: NodeConfig, index: int, array: Any, ready: Any) -> None:
    """Entry point of receiver process `index` (spawned, so it imports everything afresh)."""
    _die_with_parent()
    logformat.setup(config.log_format, config.log_level, receiver=index)
    from node import runtime
    from node.server import Node

    runtime.tune()
    debug.install()

    async def run() -> None:
        node = Node.receiver(config, index, shared=SlotUsage(array, index, config.receivers))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        debug.install_task_dump(loop)
        await node.start()
        runtime.freeze()
        ready[index] = 1
        await stop.wait()
        ready[index] = 0
        await node.stop()

    asyncio.run(run())


class Receivers:
    """The supervisor's view of receivers 1..N-1: start, watch and restart, stop."""

    def __init__(self, config: NodeConfig, array: Any, adopt: Any) -> None:
        self._config = config
        self._array = array
        self._adopt = adopt  # callable(host id) -> list of segments recovered
        self._ctx = multiprocessing.get_context("spawn")
        self._ready = self._ctx.Array("b", config.receivers, lock=False)
        self._procs: dict[int, multiprocessing.context.SpawnProcess] = {}
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> None:
        self._ready[index] = 0
        p = self._ctx.Process(target=child_main, args=(self._config, index, self._array, self._ready),
                              name=f"receiver-{index}", daemon=False)
        p.start()
        self._procs[index] = p

    def not_ready_reason(self) -> str:
        """The node is ready only once every receiver serves: clients keep their HTTP/2
        connections, so one opened before a receiver listens never reaches it."""
        waiting = [i for i in range(1, self._config.receivers) if not self._ready[i]]
        return f"receivers {waiting} starting" if waiting else ""

    async def start(self) -> None:
        for index in range(1, self._config.receivers):
            self._spawn(index)
        self._watch = asyncio.create_task(self._watch_loop(), name="receivers-watch")

    async def _watch_loop(self) -> None:
        """Restart the receivers that died; a restart that fails (a full disk as their segments
        are recovered) is tried again at the next look, never given up."""
        while not self._stopping:
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            for index, p in list(self._procs.items()):
                if p.is_alive() or self._stopping:
                    continue
                try:
                    await self._restart(index, p.exitcode)
                except Exception:
                    log.exception("receiver %d: restart failed; trying again in %.0fs", index, RESTART_DELAY_SECONDS)

    async def _restart(self, index: int, exitcode: int | None) -> None:
        log.error("receiver %d exited with %s; recovering its active segments and restarting it", index, exitcode)
        found = await asyncio.to_thread(self._adopt, host_id(self._config.node_name, index))
        log.info("receiver %d: %d active segments recovered", index, len(found))
        self._array[2 * index] = self._array[2 * index + 1] = 0
        self._spawn(index)

    async def stop(self, grace: float) -> None:
        """SIGTERM every receiver, wait for them (within `grace`), SIGKILL what is left."""
        self._stopping = True
        await cancel_and_wait(self._watch)
        for p in self._procs.values():
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        # Receivers finish their in-flight requests within `grace` themselves; the floor leaves them
        # time to close their segments even with no grace at all.
        deadline = loop.time() + max(grace, MIN_STOP_SECONDS)
        for p in self._procs.values():
            await asyncio.to_thread(p.join, max(0.0, deadline - loop.time()))
            if p.is_alive():
                log.warning("receiver %s did not stop within the grace period; killing it", p.name)
                p.kill()
                p.join()
        # Whatever a killed receiver left active is recovered now rather than at the next start.
        for index in self._procs:
            await asyncio.to_thread(self._adopt, host_id(self._config.node_name, index))
