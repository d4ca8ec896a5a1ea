"""The node's side of the scale-down handshake: watch its own pod for `shutdown-requested`.

Every `interval` seconds the node reads its own pod. When the pod carries `shutdown-requested`
and not yet `shutdown-completed`, the node leaves (`Node.leave`: it stops taking data, closes its
active segments and uploads everything it holds, transferring nothing, since it is the one
leaving), and then patches `shutdown-completed` onto its pod. A node that restarts in the middle
sees the request again and finishes the job; a node whose pod already carries
`shutdown-completed` does nothing.

The API may be unreachable for a while: the watcher logs once per outage and keeps polling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.annotations import SHUTDOWN_COMPLETED, SHUTDOWN_REQUESTED, rfc3339
from cluster.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ShutdownWatcher:
    def __init__(self, pod: str, namespace: str, core_api: Any, leave: Callable[[], Awaitable[bool]],
                 interval: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        """`core_api`: a kubernetes `CoreV1Api`. `leave()` drains and returns whether everything was
        delivered (only then is `shutdown-completed` set)."""
        self.pod = pod
        self.namespace = namespace
        self._api = core_api
        self._leave = leave
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.completed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shutdown-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _annotations(self) -> dict[str, str]:
        pod = self._api.read_namespaced_pod(self.pod, self.namespace, _request_timeout=10)
        return dict(pod.metadata.annotations or {})

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                annotations = await asyncio.to_thread(self._annotations)
                if failing:
                    log.info("pod %s/%s readable again", self.namespace, self.pod)
                failing = False
            except Exception as e:
                if not failing:
                    log.warning("cannot read pod %s/%s for the shutdown annotation (retrying every %.0fs): %s",
                                self.namespace, self.pod, self._interval, e)
                failing = True
                await asyncio.sleep(self._interval)
                continue
            if SHUTDOWN_COMPLETED in annotations:
                self.completed.set()
                return
            if SHUTDOWN_REQUESTED in annotations:
                log.info("pod %s/%s: %s=%s: draining everything to the sinks before leaving", self.namespace,
                         self.pod, SHUTDOWN_REQUESTED, annotations[SHUTDOWN_REQUESTED])
                while not await self._leave():
                    log.warning("drain for shutdown not complete yet; continuing")
                await self._complete()
                return
            await asyncio.sleep(self._interval)

    async def _complete(self) -> None:
        body = {"metadata": {"annotations": {SHUTDOWN_COMPLETED: rfc3339(self._clock())}}}
        while True:
            try:
                await asyncio.to_thread(self._api.patch_namespaced_pod, self.pod, self.namespace, body,
                                        _request_timeout=10)
                break
            except Exception as e:
                log.warning("cannot set %s on pod %s/%s (retrying): %s", SHUTDOWN_COMPLETED, self.namespace, self.pod,
                            e)
                await asyncio.sleep(self._interval)
        log.info("pod %s/%s: drained; %s set", self.namespace, self.pod, SHUTDOWN_COMPLETED)
        self.completed.set()
