"""What a process does when it is stuck or faults.

- Stack dumps on demand, for a node that seems stuck: `kill -USR1 <pid>` writes every thread's
  stack to stderr (Python's faulthandler: works even while the event loop is blocked), and
  `kill -USR2 <pid>` writes every asyncio task's stack (needs a free event loop: it runs on it).
- A fatal signal (SIGSEGV, SIGBUS, ...) writes the Python stacks and ends the process at once
  (`default_fatal_signals`).
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import io
import signal
import sys
from typing import TextIO


def install() -> None:
    """SIGUSR1: every thread's stack to stderr; the fatal signals: the stacks, then the end. Call
    once per process, before its loop starts."""
    faulthandler.register(signal.SIGUSR1, file=_stderr(), all_threads=True, chain=False)
    default_fatal_signals()


FATAL = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)


def default_fatal_signals() -> None:
    """Take the fatal signals back from native libraries: faulthandler writes the Python stacks,
    then the signal's default action ends the process. chdb (the local sink's embedded ClickHouse)
    installs handlers, at import and again at every `connect`, that log, then sleep up to 300 s
    before the process dies, holding the thread that faulted, the event loop included: a node
    that went quiet for 5 minutes instead of restarting. A node that faults must die at once (its
    supervisor or the kubelet restarts it; every acknowledged row is in the WAL). Any thread; call
    it after such a library took them."""
    faulthandler.disable()
    for sig in FATAL:
        _LIBC.signal(int(sig), None)  # SIG_DFL, from any thread (Python's signal.signal: main only)
    faulthandler.enable(file=_stderr(), all_threads=True)


def _stderr() -> TextIO:
    """Where faulthandler writes: stderr, or the process's original one when stderr was replaced
    by something with no descriptor (a test capturing it)."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ if sys.__stderr__ is not None else sys.stderr


_LIBC = ctypes.CDLL(None)
_LIBC.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_LIBC.signal.restype = ctypes.c_void_p


def task_dump() -> str:
    """Every task of the running loop with its stack, awaited-on first."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"--- {len(tasks)} asyncio tasks ---\n")
    for task in tasks:
        out.write(f"{task!r}\n")
        for frame in task.get_stack(limit=12):
            out.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}\n")
    return out.getvalue()


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR2: every asyncio task's stack to stderr (from the loop, so only if it is free)."""
    def dump() -> None:
        sys.stderr.write(task_dump())
        sys.stderr.flush()

    loop.add_signal_handler(signal.SIGUSR2, dump)
