"""`cluster/units.py`: the sizes and durations of the node's flags and of the operator's resources."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.units import parse_duration, parse_size


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400), ("2m30s500ms", 150.5),
    ("90", 90), (" 7.5 ", 7.5), ("0", 0), (42, 42), (1.5, 1.5),
])
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "five minutes", "5x", "5 m", "m5", True])
def test_not_durations(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^not a duration"):
        parse_duration(value)
    with pytest.raises(ValueError, match=r"^spec\.x: not a duration"):
        parse_duration(value, "spec.x")


@pytest.mark.parametrize(("text", "size"), [("1024", 1024), ("100KB", 100_000), ("100MB", 100_000_000),
                                            ("1GiB", 1 << 30), ("2 mib", 2 << 20), ("1.5K", 1500)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1", "1 PB", "ten"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
