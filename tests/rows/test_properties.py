"""Property tests: whatever the label or attribute text, the CSV parses back to the original values."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from tests.rows.build import T_MS, T_NS, kvs, log_record, logs_request, parse, remote_write, sid

# any text protobuf can carry (no lone surrogates), with the characters CSV cares about made likely
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(['"', ",", "\n", "\r", " ", "\t", "\\", "\0", "é", "日", "\u2028", "P", "o", "d"]),
        st.characters(exclude_categories=["Cs"]),
    ),
    max_size=12,
)
LIFT = ("pod", "Zone")


@settings(max_examples=300, deadline=None)
@given(
    name=TEXT,
    labels=st.dictionaries(st.one_of(TEXT, st.sampled_from(["pod", "POD", "zone", "adxmon_x"])), TEXT, max_size=6),
    value=st.floats(allow_nan=True, allow_infinity=True),
)
def test_remote_write_rows_parse_back(name: str, labels: dict[str, str], value: float) -> None:
    labels = {k: v for k, v in labels.items() if k != "__name__"}
    labels["__name__"] = "m" + name
    conv = MetricsConverter(MetricsConfig(lift_labels=LIFT))
    result = conv.convert_remote_write(remote_write((labels, [(value, T_MS)])))
    assert (result.accepted, result.rejected) == (1, 0)
    (batch,) = result.tables.values()
    rows = parse(batch.data.decode())
    assert len(rows) == 1
    row = rows[0]
    assert len(row) == 4 + len(LIFT)

    # a lifted column takes the first label (by name) that matches case-insensitively
    lifted: dict[str, str | None] = {}
    for lname in sorted(x.lower() for x in LIFT):
        matches = sorted(k for k in labels if k.lower() == lname)
        lifted[lname] = matches[0] if matches else None
    taken = {k for k in lifted.values() if k is not None}
    shown = {k: v for k, v in labels.items() if k != "__name__" and not k.startswith("adxmon_") and k not in taken}
    assert row[0] == "2026-11-24T04:00:00.123Z"
    assert row[1] == str(sid(labels))
    assert json.loads(row[2]) == shown
    parsed = float(row[3].replace("Infinity", "inf"))
    assert parsed == value or (parsed != parsed and value != value)
    assert row[4:] == [labels[k] if k is not None else "" for k in lifted.values()]


@settings(max_examples=200, deadline=None)
@given(attrs=st.dictionaries(TEXT, TEXT, max_size=6), body=TEXT, severity=TEXT)
def test_log_rows_parse_back(attrs: dict[str, str], body: str, severity: str) -> None:
    rec = log_record(dict(attrs), body=body, time_unix_nano=T_NS, severity_text=severity)
    rec.attributes.extend(kvs({"kusto.table": "T"}))
    result = LogsConverter(LogsConfig("Logs")).convert(logs_request(rec, resource=attrs))
    rows = parse(result.tables[("Logs", "T")].data.decode())
    assert len(rows) == 1
    row = rows[0]
    assert len(row) == 9
    expected = {k: v for k, v in attrs.items() if not k.startswith("kusto.")}
    assert row[4] == severity
    assert json.loads(row[6]) == body
    assert json.loads(row[7]) == expected
    assert json.loads(row[8]) == expected
