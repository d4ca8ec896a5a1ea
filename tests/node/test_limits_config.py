"""The limits of issue 13 as configuration: defaults, the cgroup's memory limit, and the log that a
hostile client cannot flood."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from node import config
from node.ratelog import RateLimitedLog


def test_the_memory_budget_defaults_to_half_the_container_limit(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert config.memory_budget([v2, v1]) == config.DEFAULT_MEMORY_BUDGET  # neither file: no container limit
    v2.write_text("max\n")
    v1.write_text(f"{1 << 62}\n")  # v1's "no limit"
    assert config.memory_budget([v2, v1]) == config.DEFAULT_MEMORY_BUDGET
    v1.write_text(f"{2 << 30}\n")  # the StatefulSet's 2 GiB
    assert config.memory_budget([v2, v1]) == 1 << 30
    v2.write_text(f"{512 << 20}\n")
    assert config.memory_budget([v2, v1]) == 256 << 20


def test_the_limit_flags_parse_and_have_defaults(tmp_path: Path) -> None:
    c = config.parse(["--storage-dir", str(tmp_path), "--max-memory", "300MiB", "--idle-timeout", "2m",
                      "--stall-timeout", "10s", "--min-request-rate", "1KiB", "--max-connections", "50"], env={})
    assert (c.max_memory, c.idle_timeout, c.stall_timeout, c.min_request_rate, c.max_connections) == (
        300 << 20, 120.0, 10.0, 1024, 50)
    d = config.parse(["--storage-dir", str(tmp_path)], env={"INGESTOR_MAX_MEMORY": "1GiB"})
    assert (d.max_memory, d.idle_timeout, d.stall_timeout, d.min_request_rate, d.max_connections) == (
        1 << 30, 300.0, 30.0, 4096, 1000)
    assert d.memory_limit == 1 << 30
    e = config.parse(["--storage-dir", str(tmp_path)], env={})
    assert (e.max_memory, e.memory_limit) == (0, config.memory_budget())  # 0: half the container's memory


def test_a_reason_is_logged_once_per_interval_with_what_was_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    said = RateLimitedLog(logging.getLogger("test.ratelog"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for i in range(25_000):  # the junk requests of the issue: 24,497 lines before
            said.log(logging.INFO, "bad-body", "refused: %s", i)
            said.log(logging.INFO, "bad-gzip", "gzip refused: %s", i)
            now[0] += 0.01  # 250 s in all
    lines = [r.getMessage() for r in caplog.records]
    assert 8 <= len(lines) <= 10  # each reason once per 60 s
    assert lines[0] == "refused: 0"
    left_out = re.search(r"\(and (\d+) more like it in the last 60s\)", lines[2])
    assert left_out is not None and 5990 <= int(left_out[1]) <= 6010  # 60 s of one every 10 ms
