"""ErrorLog: expected errors in one line every time, unexpected ones with their traceback once."""

from __future__ import annotations

import logging

import pytest

from node.errors import SinkError
from node.ratelog import ErrorLog, describe, error_key

LOG = logging.getLogger("test.errorlog")


def raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as e:
        return e


def raised_elsewhere(error: Exception) -> Exception:
    try:
        raise error
    except Exception as e:
        return e


def test_expected_errors_are_one_line_every_time(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorLog(LOG)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(3):
            e = raised(SinkError("sink down"))
            errors.log(logging.WARNING, e, "upload failed: %s", describe(e))
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [("upload failed: sink down", None)] * 3


def test_an_unexpected_error_has_its_traceback_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    errors = ErrorLog(LOG, interval=600, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for t in (0.0, 10.0, 20.0, 700.0):
            now[0] = t
            e = raised(KeyError("x"))
            errors.log(logging.ERROR, e, "round failed: %s", describe(e))
    assert [r.exc_info is not None for r in caplog.records] == [True, False, False, True]
    assert all(r.getMessage().startswith("round failed: KeyError: 'x'") for r in caplog.records)
    assert "(and 2 more like it" in caplog.records[3].getMessage()


def test_the_same_type_raised_elsewhere_is_another_error(caplog: pytest.LogCaptureFixture) -> None:
    a, b, a_again = raised(ValueError("1")), raised_elsewhere(ValueError("2")), raised(ValueError("3"))
    assert error_key(a) == error_key(a_again) != error_key(b)
    errors = ErrorLog(LOG)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for e in (a, b, a_again):
            errors.log(logging.ERROR, e, "failed: %s", describe(e))
    assert [r.exc_info is not None for r in caplog.records] == [True, True, False]


def test_an_error_never_raised_has_a_key_too() -> None:
    assert error_key(RuntimeError("made, not raised")).startswith("builtins.RuntimeError@")
