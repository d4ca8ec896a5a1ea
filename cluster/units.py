"""Sizes (`100MB`, `1GiB`) and durations (`30s`, `5m`, `1h30m`), as the node's flags and the
operator's `Ingestor` resources give them."""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
               "T": 10**12, "TB": 10**12, "KI": 1 << 10, "KIB": 1 << 10, "MI": 1 << 20, "MIB": 1 << 20,
               "GI": 1 << 30, "GIB": 1 << 30, "TI": 1 << 40, "TIB": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """`1024`, `100KB`, `100MB`, `1GiB` -> bytes (KB/MB/GB are decimal, KiB/MiB/GiB binary)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 100MB, 1GiB)")
    return int(float(m[1]) * _SIZE_UNITS[(m[2] or "").upper()])


def parse_duration(value: str | float, what: str | None = None) -> float:
    """`30s`, `5m`, `1h30m`, `500ms` (Go's units, in any combination), or plain seconds (a number,
    or its text) -> seconds. ValueError otherwise, prefixed with `what` when given.

    No range is checked: a caller that needs a finite duration >= 0 says so itself."""
    prefix = f"{what}: " if what else ""
    if isinstance(value, bool):  # a JSON true is not 1 second
        raise ValueError(f"{prefix}not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"{prefix}not a duration: {value!r} (examples: 30s, 5m, 1h30m, 500ms)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
