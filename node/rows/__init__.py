"""The pure conversion core: decoded OTLP and Prometheus remote-write requests to per-table CSV rows.

    batch.py        TableBatch / ConvertResult: what every converter returns
    metrics.py      MetricsConverter: remote write and OTLP metrics (otlpmetrics.py, series.py,
                    exphist.py)
    logs.py         LogsConverter: OTLP logs
    traces.py       TracesConverter: OTLP traces, in the Collector ADX exporter's columns
    routing.py      kusto.database / kusto.table routing of logs and spans
    names.py        table names, name validation, Prometheus names of OTLP metrics
    csvtext.py      CSV quoting, timestamps, floats
    anyvalue.py     OTLP AnyValue as JSON and as label values

No I/O and no asyncio here; rows.md (shared/design) is the specification.
"""
