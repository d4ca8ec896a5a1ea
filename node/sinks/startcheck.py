"""The check a sink makes of its endpoints once, at start: each is tried at once, in a thread of
its own, and the start waits at most `timeout` seconds for all of them together (a name that does
not resolve, or an address that drops packets, cannot hold it longer). What it finds is only said:
a node whose sink is down still starts and keeps its rows in the WAL until the sink answers.

    failures = check_all({"clickhouse://host:9000/db": lambda: probe(...)}, timeout=3.0)
    # {"clickhouse://host:9000/db": "Connection refused"} -- endpoints that answered are left out
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping

from node.ratelog import describe

START_CHECK_SECONDS = 3.0
"""How long a node's start waits, at most, for its sink's endpoints to answer."""


def check_all(checks: Mapping[str, Callable[[], object]], timeout: float) -> dict[str, str]:
    """Run every check at once; return, for each that raised or had not returned within `timeout`
    seconds, why (one line). A check still running then goes on in its daemon thread, unheard."""
    failures: dict[str, str] = {}
    lock = threading.Lock()
    finished: set[str] = set()

    def run(name: str, check: Callable[[], object]) -> None:
        try:
            check()
        except Exception as e:  # whatever it is, it is said, and the node starts
            with lock:
                failures[name] = " ".join(describe(e).split())
        with lock:
            finished.add(name)

    threads = [threading.Thread(target=run, args=(name, check), name=f"start-check-{i}", daemon=True)
               for i, (name, check) in enumerate(checks.items())]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        out = {name: failures[name] for name in checks if name in failures}
        for name in checks:
            if name not in finished:
                out[name] = f"no answer within {timeout:g}s"
    return out


def connect(host: str, port: int, timeout: float) -> None:
    """A TCP connection to host:port, closed at once; raises OSError when there is none."""
    with socket.create_connection((host, port), timeout=timeout):
        pass
