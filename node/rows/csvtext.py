"""The text of one CSV field: quoting, RFC 3339 timestamps and floats, as ADX and ClickHouse read them.

A row is RFC 4180: fields separated by ",", a field that needs it is enclosed in `"` with `"`
doubled, the row ends in "\\n". ADX and ClickHouse agree on this; the choices below are the ones
where they could disagree:

* `real` -- non-finite values are written `NaN`, `Infinity`, `-Infinity`: the spellings ADX's
  `real` parser takes (the .NET ones; ADX itself cannot be run in tests), and ClickHouse's float
  parser takes them too (it matches `nan`/`inf`/`infinity` case-insensitively, optionally signed;
  checked with chdb in tests/rows/test_csvtext.py). Finite values are Python's shortest round-trip `repr`
  (`0.1`, `1e+300`), which both parse exactly.
* `field` -- a string is quoted when it contains any of `"` `'` `,` CR LF or a backslash, or starts
  or ends with a space or tab; else it is written as it is. Why each: `,` CR LF end a field or a
  row; `"` opens a quoted field; `'` opens one too for ClickHouse servers before 22.7, whose
  `format_csv_allow_single_quotes` defaults to 1 (an unquoted `'` would swallow the following rows
  up to the next `'`: the sinks also turn that setting off, see chschema.CSV_SETTINGS); an unquoted
  `\\N` is NULL to a current ClickHouse (the empty string in a non-Nullable column), and readers
  that take backslash escapes would change any other backslash; ClickHouse trims unquoted spaces
  and tabs.
  Inside `"..."` only `""` means something (`"`): ClickHouse and ADX (RFC 4180) both keep
  backslashes, single quotes, spaces and line breaks there as they are. `quoted` quotes always (JSON).
* `Timestamps` -- UTC, `YYYY-MM-DDTHH:MM:SS.fffZ` for milliseconds (remote write) and
  `YYYY-MM-DDTHH:MM:SS.fffffffffZ` for nanoseconds (OTLP): all nine digits are kept, so nothing the
  sender measured is lost; ADX rounds to its 100 ns tick, ClickHouse DateTime64(9) keeps them all.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from decimal import Decimal

from node.cache import BoundedCache

_SPECIAL = re.compile(r'[",\r\n\'\\]').search
_EPOCH = datetime(1970, 1, 1)


def field(s: str) -> str:
    """`s` as a CSV field: unchanged when no reader could take it otherwise, else quoted (see above)."""
    if _SPECIAL(s) is None and (not s or (s[0] not in " \t" and s[-1] not in " \t")):
        return s
    return '"' + s.replace('"', '""') + '"'


def quoted(s: str) -> str:
    """`s` always quoted (used for JSON columns, which nearly always contain `"` and `,`)."""
    return '"' + s.replace('"', '""') + '"'


def real(v: float) -> str:
    """A float for a `real` column; NaN and infinities spelled so ADX and ClickHouse both parse them."""
    if v - v == 0.0:  # finite; inf - inf and nan - nan are nan
        return repr(v)
    if v != v:
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def label_float(v: float) -> str:
    """A float as Prometheus writes it in a label (`le`, `quantile`, a double attribute): Go's
    `strconv.FormatFloat(v, 'f', -1, 64)` -- shortest round-trip digits, never an exponent,
    `1` not `1.0`; `+Inf`, `-Inf`, `NaN`."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    r = repr(v)
    if "e" in r:
        r = format(Decimal(r), "f")
    if r.endswith(".0"):
        r = r[:-2]
    return r


class Timestamps:
    """Formats integer timestamps since the Unix epoch (`digits` = 3: milliseconds, 9: nanoseconds)
    as UTC RFC 3339 with exactly `digits` fractional digits.

    Hot loops call `cache.get(t) or format(t)` where a request's items share a handful of
    timestamps (metric points): the full text is cached per value. Where nearly every value is new
    (a log record's time, a span's start and end) they call `text(t)`, or inline it: the decimal
    text of `t` less its last `digits` digits names its second, whose date text is cached in
    `prefixes` (keyed by that text, never ""), and the digits are the fraction as they are (a
    quarter of the time of `divmod` and a padded format, and no churn of `cache`). Both caches are
    cleared when they reach `max_entries`.
    """

    def __init__(self, digits: int, max_entries: int = 8192) -> None:
        self.digits = digits
        self.cache: BoundedCache[int, str] = BoundedCache(max_entries)
        self._unit = 10**digits
        self.prefixes: BoundedCache[str, str] = BoundedCache(max_entries)
        """The date text of a second ("2026-11-24T04:00:00"), by the second's decimal text."""

    def text(self, t: int) -> str:
        """Text of `t`, not kept in `cache`; raises ValueError when it is outside years 1..9999."""
        s = str(t)
        try:
            if t >= self._unit:  # s has more than `digits` digits, the first not 0
                cut = len(s) - self.digits
                prefix = self.prefixes.get(s[:cut]) or self._prefix(t // self._unit)
                return f"{prefix}.{s[cut:]}Z"
            sec, frac = divmod(t, self._unit)  # the first second, or before the epoch
            return f"{self._prefix(sec)}.{frac:0{self.digits}d}Z"
        except OverflowError:
            raise ValueError(f"timestamp outside years 1..9999: {t}") from None

    def _prefix(self, sec: int) -> str:
        """The date text of second `sec` since the epoch; OverflowError outside years 1..9999."""
        key = str(sec)
        prefix = self.prefixes.get(key)
        if prefix is None:
            prefix = self.prefixes.put(key, (_EPOCH + timedelta(seconds=sec)).isoformat())
        return prefix

    def format(self, t: int) -> str:
        """Text of `t`, kept in `cache`; raises ValueError when it is outside years 1..9999."""
        return self.cache.put(t, self.text(t))
