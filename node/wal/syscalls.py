"""The system calls of the WAL's appends, made without letting go of the GIL.

`os.write`, `os.open` and `os.close` let go of the GIL for the call and take it back after. A
segment append is a write of a few KiB into the page cache (2-4 µs); when another thread of the
process is running Python, taking the GIL back waits until that thread gives it up (up to the
switch interval, 5 ms), so a thread that makes thousands of small calls runs at a fraction of its
speed: the GIL convoy. Measured in one process, with one thread converting requests of 1,000
tables without a pause: the WAL journal's round, which opens, writes and closes 10,000 segments,
took 6.1 s for 1.2 s of its own CPU, fell behind and got requests refused at its 256 MiB limit;
with these calls it takes 0.5-1.0 s (0.35-0.5 s of CPU) and keeps up.

These go through libc with ctypes.PyDLL, which keeps the GIL. The calls are short on a local disk;
on a disk the kernel throttles (dirty pages over its limit), every thread waits for them, as the
thread that writes already does. fsync, which waits for the disk, stays with `os.fsync` (the GIL
let go). Where libc cannot be loaded, they are `os`'s own.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Sequence
from typing import Any

from node import libc


def _bind() -> tuple[Callable[[int, Sequence[bytes]], int], Callable[..., int], Callable[[int], None]]:
    lib = libc.libc(keep_gil=True)
    if lib is None:
        return os.writev, os.open, os.close
    c_write, c_open, c_close = lib.write, lib.open, lib.close
    c_write.argtypes, c_write.restype = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t), ctypes.c_ssize_t
    c_open.argtypes, c_open.restype = (ctypes.c_char_p, ctypes.c_int, ctypes.c_int), ctypes.c_int
    c_close.argtypes, c_close.restype = (ctypes.c_int,), ctypes.c_int
    get_errno, fsencode, strerror = ctypes.get_errno, os.fsencode, os.strerror

    def write_parts(fd: int, parts: Sequence[bytes]) -> int:
        """Write `parts` as one buffer; returns the bytes written (short writes are legal, as with
        os.writev: the caller writes the rest)."""
        data = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)
        while True:
            n: int = c_write(fd, data, len(data))
            if n >= 0:
                return n
            e = get_errno()
            if e != errno.EINTR:
                raise OSError(e, strerror(e))

    def open_file(path: Any, flags: int, mode: int = 0o777) -> int:
        name = fsencode(path)
        while True:
            fd: int = c_open(name, flags, mode)
            if fd >= 0:
                return fd
            e = get_errno()
            if e != errno.EINTR:
                raise OSError(e, strerror(e), os.fsdecode(name))

    def close_fd(fd: int) -> None:
        if c_close(fd) < 0:
            e = get_errno()
            if e != errno.EINTR:  # Linux has closed it anyway; retrying could close another file
                raise OSError(e, strerror(e))

    return write_parts, open_file, close_fd


writev, open, close = _bind()
"""writev(fd, parts) -> bytes written; open(path, flags, mode=0o777) -> fd; close(fd)."""
