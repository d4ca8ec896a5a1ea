"""The C library, loaded once, for the calls Python's `os` does not make (mallopt, malloc_trim,
prctl, syncfs) and for the WAL's calls that keep the GIL (node/wal/syscalls.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def libc(keep_gil: bool = False) -> Any:
    """The C library with errno kept (`ctypes.get_errno`), or None where it cannot be loaded.
    `keep_gil`: loaded with ctypes.PyDLL, whose calls keep the GIL (CDLL's let go of it)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return (ctypes.PyDLL if keep_gil else ctypes.CDLL)(name, use_errno=True)
    except OSError:
        return None


def function(name: str) -> Any:
    """The C library's function `name` (its calls let go of the GIL), or None where the library or
    the function is missing."""
    lib = libc()
    return getattr(lib, name, None) if lib is not None else None
