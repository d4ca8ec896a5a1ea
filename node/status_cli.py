"""`ingestor status --addr HOST:PORT`: a node's status, for a person (or `--json` for scripts)."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format

from node.gen.ingestor.v1 import admin_pb2, admin_pb2_grpc


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="print a node's status")
    p.add_argument("--addr", default="127.0.0.1:4317", help="the node's gRPC address (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_status)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(st: admin_pb2.NodeStatus) -> str:
    lines = [
        f"node       {st.node_name} (version {st.version})",
        f"ready      {'yes' if st.ready else 'no: ' + st.readiness_reason}",
        f"wal        {st.segment_count} segments, {_size(st.disk_usage_bytes)}",
        f"limits     disk {_size(st.limits.max_disk_usage) if st.limits.max_disk_usage else 'unlimited'}, "
        f"{st.limits.max_segment_count or 'unlimited'} segments, segment size {_size(st.limits.max_segment_size)}, "
        f"age {st.limits.max_segment_age_seconds:.0f}s",
    ]
    if st.peers:
        lines.append("peers")
        for p in st.peers:
            flag = " (this node)" if p.self else ""
            health = "healthy" if p.healthy else f"UNHEALTHY ({p.unhealthy_reason})"
            lines.append(f"  {p.name:<24} {p.address:<24} {health}{flag}")
        lines.append(f"owns       {len(st.owned_prefixes)} tables; transfer queue {st.transfer_queue}")
    if st.tables:
        lines.append(f"{'DATABASE':<16} {'TABLE':<40} {'CLOSED':>6} {'CLOSED BYTES':>14} {'ACTIVE BYTES':>14} "
                     f"OWNER")
        for t in st.tables:
            lines.append(f"{t.database:<16} {t.table:<40} {t.closed_segments:>6} {_size(t.closed_bytes):>14} "
                         f"{_size(t.active_bytes):>14} {t.owner}")
    return "\n".join(lines)


def explain(addr: str, code: grpc.StatusCode, details: str, timeout: float) -> str:
    """One line for a status call that failed, naming the likely mistake where there is one."""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "http1.x server" in details or "Failed parsing HTTP/2" in details:
            return (f"{addr} answers HTTP/1, not gRPC: is it the node's HTTP port (--http-addr)? "
                    "pass its gRPC port (--grpc-addr, 4317 by default) to --addr")
        if "Connection refused" in details:
            return f"nothing listens on {addr} (connection refused): is the node running, with this --grpc-addr?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{addr}: no answer within {timeout:g}s (DEADLINE_EXCEEDED): is --addr the node's --grpc-addr?"
    return f"{addr}: {code.name}: {details}"


def cmd_status(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.addr) as channel:
        try:
            st = admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"ingestor status: {explain(args.addr, e.code(), e.details() or '', args.timeout)}",
                  file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(st), indent=2))
    else:
        print(render(st))
    return 0
