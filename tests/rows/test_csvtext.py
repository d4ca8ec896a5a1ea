from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import pytest

from node.rows.csvtext import Timestamps, field, label_float, quoted, real


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a,b", '"a,b"'),
        ('say "hi"', '"say ""hi"""'),
        ("two\nlines", '"two\nlines"'),
        ("cr\r", '"cr\r"'),
        (" lead", '" lead"'),
        ("trail\t", '"trail\t"'),
        ("\\N", '"\\N"'),
        ("in side", "in side"),
        ("ünïcode", "ünïcode"),
        ("'", '"\'"'),
        ("x'", '"x\'"'),
        ("it's", '"it\'s"'),
        ('""', '""""""'),
        ("a\\b", '"a\\b"'),
        ("\\\\N", '"\\\\N"'),
        ("\r\n", '"\r\n"'),
        ("\t", '"\t"'),
        (" ", '" "'),
        ("a\tb", "a\tb"),
        ("#;|", "#;|"),
    ],
)
def test_field(value: str, text: str) -> None:
    assert field(value) == text


def test_no_field_changes_its_neighbours_for_any_clickhouse_quote_setting() -> None:
    """The reported case: values `'` ... `x'` written unquoted made one row of five on ClickHouse
    servers before 22.7 (`format_csv_allow_single_quotes` = 1). Quoted, the rows stay apart under
    either setting; chdb is a current ClickHouse, so the old default is set here by hand."""
    chdb = pytest.importorskip("chdb")
    values = ["'", "a", "b", "c", "x'", '"', "\\N", " sp ", "\\", "a,b\r\nc"]
    rows = "".join(f"{i},{field(v)}\n" for i, v in enumerate(values))
    for single_quotes in (0, 1):
        out = chdb.query(f"SELECT I, hex(S) FROM format(CSV, $$I Int64, S String$$, $${rows}$$) "
                         f"SETTINGS format_csv_allow_single_quotes = {single_quotes}", "TSV")
        got = [line.split("\t") for line in str(out).splitlines()]
        assert [(int(i), bytes.fromhex(h).decode()) for i, h in got] == list(enumerate(values)), single_quotes


def test_quoted_always_quotes() -> None:
    assert quoted("x") == '"x"'
    assert quoted('{"a":1}') == '"{""a"":1}"'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.5"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e300, "1e+300"),
        (1.5e-07, "1.5e-07"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
    ],
)
def test_real(value: float, text: str) -> None:
    assert real(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.005, "0.005"),
        (2.5, "2.5"),
        (1e6, "1000000"),
        (1e21, "1000000000000000000000"),
        (1.5e-07, "0.00000015"),
        (-0.5, "-0.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_label_float_matches_go_f_minus_one(value: float, text: str) -> None:
    assert label_float(value) == text


def test_millisecond_timestamps() -> None:
    ts = Timestamps(3)
    assert ts.format(1_795_492_800_123) == "2026-11-24T04:00:00.123Z"
    assert ts.format(1_795_492_800_000) == "2026-11-24T04:00:00.000Z"
    assert ts.format(-1) == "1969-12-31T23:59:59.999Z"
    assert ts.format(0) == "1970-01-01T00:00:00.000Z"
    assert ts.cache[1_795_492_800_123] == "2026-11-24T04:00:00.123Z"


def test_nanosecond_timestamps_keep_nine_digits() -> None:
    ts = Timestamps(9)
    assert ts.format(1_795_492_800_123_456_789) == "2026-11-24T04:00:00.123456789Z"
    assert ts.format(1_795_492_800_000_000_001) == "2026-11-24T04:00:00.000000001Z"
    assert ts.format(0) == "1970-01-01T00:00:00.000000000Z"


def test_timestamps_out_of_range() -> None:
    ts = Timestamps(3)
    with pytest.raises(ValueError, match=r"outside years 1\.\.9999"):
        ts.format(10**18)
    with pytest.raises(ValueError, match=r"outside years 1\.\.9999"):
        ts.format(-(10**17))
    assert ts.format(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize("digits", [3, 9])
def test_text_of_a_new_timestamp_is_the_calendar_s(digits: int) -> None:
    """`text` reads a time's second off its decimal digits (the hot path of log records and spans):
    the same text as the calendar's, at every length of those digits and on each side of a second,
    the epoch and year 9999; not kept in `cache`, and its seconds' cache bounded."""
    unit = 10**digits
    rng = random.Random(17)
    last = 253_402_300_800 * unit - 1  # 9999-12-31T23:59:59.999...
    values = [0, 1, unit - 1, unit, unit + 1, 10 * unit - 1, 10 * unit, last, -1, -unit, -unit - 1]
    values += [rng.randrange(-62_135_596_800 * unit, last + 1) for _ in range(2000)]
    values += [rng.randrange(10**k, min(10 ** (k + 1), last + 1)) for k in range(21) if 10**k <= last
               for _ in range(20)]
    ts = Timestamps(digits, max_entries=64)
    for t in values:
        sec, frac = divmod(t, unit)
        want = f"{(datetime(1970, 1, 1) + timedelta(seconds=sec)).isoformat()}.{frac:0{digits}d}Z"
        assert ts.text(t) == ts.text(t) == want, t
        assert len(ts.prefixes) <= 64
    assert not ts.cache
    with pytest.raises(ValueError, match=rf"outside years 1\.\.9999: {last + 1}$"):
        ts.text(last + 1)


def test_timestamp_cache_is_bounded() -> None:
    ts = Timestamps(9, max_entries=4)
    for i in range(10):
        assert ts.format(i) == f"1970-01-01T00:00:00.{i:09d}Z"
        assert len(ts.cache) <= 4


def test_clickhouse_parses_the_row_text() -> None:
    """NaN / Infinity / -Infinity, RFC 3339 timestamps and quoting, as ClickHouse's CSV reads them."""
    chdb = pytest.importorskip("chdb")
    ms, ns = Timestamps(3), Timestamps(9)
    lines = [
        [ms.format(1_795_492_800_123), "-1", quoted('{"a":"b,c"}'), real(math.nan), field(' x, "y"')],
        [ns.format(1_795_492_800_123_456_789), "2", quoted("{}"), real(math.inf), field("plain")],
        [ns.format(0), "3", quoted("{}"), real(-math.inf), field("")],
        [ns.format(0), "4", quoted("{}"), real(1e300), field("\\N")],
    ]
    rows = "".join(",".join(line) + "\n" for line in lines)
    structure = "T DateTime64(9, 'UTC'), S Int64, L String, V Float64, X String"
    out = str(chdb.query(f"SELECT T, S, L, V, X FROM format(CSV, $${structure}$$, $${rows}$$)", "TSVRaw"))
    assert out.splitlines() == [
        '2026-11-24 04:00:00.123000000\t-1\t{"a":"b,c"}\tnan\t x, "y"',
        "2026-11-24 04:00:00.123456789\t2\t{}\tinf\tplain",
        "1970-01-01 00:00:00.000000000\t3\t{}\t-inf\t",
        "1970-01-01 00:00:00.000000000\t4\t{}\t1e300\t\\N",
    ]
