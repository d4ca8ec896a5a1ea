"""The sink a node's configuration asks for (`--storage-backend`), built in one place."""

from __future__ import annotations

from node.config import NodeConfig
from node.sinks.base import Sink

ENDPOINT_FLAGS = "--metrics-kusto-endpoints, --logs-kusto-endpoints or --traces-kusto-endpoints"


def make_sink(config: NodeConfig) -> Sink:
    """local (the default, needs no set-up), adx or clickhouse. Raises ValueError for a
    configuration the sink cannot work with (`ingestor serve` says it as a usage error, exit 2):
    adx or clickhouse without a single endpoint would refuse every row it is sent."""
    if config.storage_backend == "local":
        from node.sinks.local import LocalSink

        return LocalSink(config.storage_dir / "local")
    if config.storage_backend in ("adx", "clickhouse") and not config.endpoints:
        backend = config.storage_backend
        form = "DB=https://<cluster>.kusto.windows.net" if backend == "adx" else "DB=clickhouse://user:pass@host:9000/db"
        raise ValueError(f"--storage-backend {backend} needs at least one endpoint: pass {ENDPOINT_FLAGS} {form}")
    if config.storage_backend == "adx":
        from node.sinks.adx import AdxConfig, AdxSink, parse_endpoints

        return AdxSink(AdxConfig(endpoints=parse_endpoints(list(config.endpoints)), auth=config.adx_auth,
                                 token_file=config.adx_token_file, ingest_by_tags=config.adx_ingest_by_tags))
    if config.storage_backend == "clickhouse":
        from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, parse_dsns

        return ClickHouseSink(ClickHouseConfig(
            endpoints=parse_dsns(list(config.endpoints)), ca_file=config.clickhouse_ca_file,
            client_cert=config.clickhouse_client_cert, client_key=config.clickhouse_client_key,
            insecure_skip_verify=config.clickhouse_insecure_skip_verify))
    raise ValueError(f"unknown storage backend {config.storage_backend!r}")


def allowed_databases(config: NodeConfig) -> frozenset[str] | None:
    """Databases the receivers accept: those with an endpoint, or any for the local sink."""
    if config.storage_backend == "local":
        return None
    return frozenset(e.split("=", 1)[0] for e in config.endpoints)
