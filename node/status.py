"""The node's status, as the admin RPC (`ingestor status`) answers it."""

from __future__ import annotations

from typing import Any

from node import version
from node.config import NodeConfig
from node.gen.ingestor.v1 import admin_pb2
from node.state import NodeState
from node.wal.names import parse_prefix
from node.wal.repository import WalStats


def node_status(config: NodeConfig, state: NodeState, stats: WalStats, ring: dict[str, Any]) -> admin_pb2.NodeStatus:
    """`stats`: the WAL directory's; `ring`: peers, owners and transfer queue as the supervisor
    sees them (node/roles.py), {} for a node alone."""
    c = config
    st = admin_pb2.NodeStatus(
        node_name=c.node_name,
        ready=not state.not_ready_reason(),
        readiness_reason=state.not_ready_reason(),
        disk_usage_bytes=stats.disk_usage,
        segment_count=stats.segment_count,
        limits=admin_pb2.Limits(max_disk_usage=c.max_disk_usage, max_segment_count=c.max_segment_count,
                                max_segment_size=c.max_segment_size, max_segment_age_seconds=c.max_segment_age),
        version=version(),
    )
    owners: dict[str, str] = ring.get("owners", {})
    for prefix in sorted(set(stats.closed) | set(stats.active)):
        db, table, _ = parse_prefix(prefix)
        n, closed_bytes = stats.closed.get(prefix, (0, 0))
        st.tables.add(database=db, table=table, closed_segments=n, closed_bytes=closed_bytes,
                      active_bytes=stats.active.get(prefix, 0), owner=owners.get(prefix, c.node_name))
    for p in ring.get("peers", []):
        st.peers.add(name=p["name"], address=p["address"], healthy=p["healthy"], self=p["name"] == c.node_name,
                     unhealthy_reason=p.get("reason", ""))
    st.owned_prefixes.extend(sorted(p for p, o in owners.items() if o == c.node_name))
    st.transfer_queue = ring.get("queue", 0)
    return st
