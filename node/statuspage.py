"""The status page: `GET /` on the HTTP port, for a person, and `GET /status.json`, what it shows.

The page shows this node's readiness (and why not), its peers and their health, the tables it
holds with the bytes waiting in their segments (active and closed), who owns each (the ring) and
how long ago each was last delivered, and the limits with how close the node is to each. It
redraws itself every few seconds from `status.json`; its first drawing comes from the same data,
embedded in the page, so it shows everything without a second request. No external assets: one
HTML string with its style and script inline.

Names come from the network (tables) or from flags and the membership source (node and peer
names). The script puts every one into the page as text (`textContent`), never as markup, and the
data embedded in the page is JSON with `<`, `>` and `&` escaped, so that no name can close the
script element that holds it.

Where the numbers come from:
- readiness, the memory in flight, the open segment files and the free disk: the process that
  answers, at the moment it answers (a node of several receiver processes: any of them answers,
  and says which);
- the tables, the disk usage and segment count, the peers: the supervisor's last scan of the WAL
  directory (node/roles.py `Supervisor.tick`), which it keeps (`Supervisor.published`) and gives
  its sibling processes in `cluster.json` (node/siblings.py). The scan is rate-limited by the
  segments on disk, and the tables it keeps are the `TOP_TABLES` with the most bytes waiting, so
  the page costs the same with 10,000 tables as with ten.

`summarize`, `build_status` and `page_html` are pure; `gather` reads a running node and
`add_routes` serves the two paths.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.errors import InvalidNameError
from node.wal.names import parse_prefix
from node.wal.repository import WalStats

if TYPE_CHECKING:
    from node.server import Node

TOP_TABLES = 200
"""Tables the supervisor keeps for the page: those with the most bytes waiting."""
REFRESH_SECONDS = 3
"""How often the page fetches status.json."""
NEAR = 0.8
"""A limit used this much is shown as near."""


def _names(prefix: str) -> tuple[str, str, str | None]:
    """(database, table, schema) of a prefix; one that is not valid (the view is read from a file)
    is shown as it is split, and escaped like any other text."""
    try:
        return parse_prefix(prefix)
    except InvalidNameError:
        parts = prefix.split("_", 2)
        return parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else None


def summarize(stats: WalStats, delivered: Mapping[str, tuple[float, str]], owner: Callable[[str], str], me: str,
              now: float, top: int = TOP_TABLES) -> dict[str, Any]:
    """The supervisor's account of the tables, from a scan of the WAL directory (`stats`) and the
    uploader's last deliveries (`delivered`: prefix -> (wall time, sink or peer)); `owner(prefix)`
    names a table's owner on the ring, `me` this node. Keeps the `top` tables with the most bytes
    waiting, then the ones delivered most lately: one pass over the tables held here and one over
    those delivered (10,000 of each: ~10 ms; the supervisor runs it in a worker thread)."""
    held = stats.closed.keys() | stats.active.keys()
    gone = [(at, prefix) for prefix, (at, _) in delivered.items() if prefix not in held]  # delivered, none here

    def key(prefix: str) -> tuple[int, float]:
        waiting = stats.closed.get(prefix, (0, 0))[1] + stats.active.get(prefix, 0)
        return waiting, delivered.get(prefix, (0.0, ""))[0]

    chosen = heapq.nlargest(top, held, key=key) + [p for _, p in heapq.nlargest(top, gone)]
    rows = []
    for prefix in sorted(chosen, key=lambda p: (-key(p)[0], -key(p)[1], p))[:top]:
        n, closed_bytes = stats.closed.get(prefix, (0, 0))
        at, to = delivered.get(prefix, (None, ""))
        rows.append({"prefix": prefix, "closed_segments": n, "closed_bytes": closed_bytes,
                     "active_bytes": stats.active.get(prefix, 0), "owner": owner(prefix),
                     "delivered_at": at, "delivered_to": to})
    closed_segments = sum(n for n, _ in stats.closed.values())
    return {"at": now, "disk_usage": stats.disk_usage, "segment_count": stats.segment_count,
            "active_segments": stats.segment_count - closed_segments, "tables": len(held) + len(gone),
            "held": len(held), "owned": sum(1 for p in held if owner(p) == me), "top": rows}


def _limit(name: str, flag: str, used: int | None, limit: int, scope: str, floor: bool = False) -> dict[str, Any]:
    """One limit: `used` of `limit` (`floor`: `used` is what is left, refused under `limit`)."""
    if not limit or used is None:
        fraction = None
    elif floor:
        fraction = limit / used if used > 0 else float("inf")
    else:
        fraction = used / limit
    if fraction is None:
        state = "off" if not limit else "unknown"
    else:
        state = "at limit" if fraction >= 1 else "near" if fraction >= NEAR else "ok"
    return {"name": name, "flag": flag, "used": used, "limit": limit, "scope": scope, "floor": floor,
            "fraction": None if fraction is None else min(fraction, 1e9), "state": state}


def build_status(*, node: str, version: str, receiver: int, receivers: int, not_ready: str, now: float,
                 view: Mapping[str, Any], limits: Mapping[str, int], memory: tuple[int, int],
                 open_files: tuple[int, int], free_disk: int | None) -> dict[str, Any]:
    """What the page shows (status.json). `view`: what the supervisor published (its ring: `peers`,
    `owners`, `queue`, {} alone; and `tables`, from `summarize`, absent before its first scan);
    `limits`: the flags' values by flag name; `memory`: (bytes in flight, this process's share of
    --max-memory); `open_files`: (segment files open, this process's share of --max-open-segments);
    `free_disk`: bytes free on the storage volume (None: unknown)."""
    tables: Mapping[str, Any] = view.get("tables") or {}
    rows = []
    for r in tables.get("top", []):
        database, table, schema = _names(r["prefix"])
        at = r.get("delivered_at")
        rows.append({"prefix": r["prefix"], "database": database, "table": table, "schema": schema or "",
                     "owner": r["owner"], "owned": r["owner"] == node, "closed_segments": r["closed_segments"],
                     "closed_bytes": r["closed_bytes"], "active_bytes": r["active_bytes"],
                     "waiting_bytes": r["closed_bytes"] + r["active_bytes"],
                     "last_upload_seconds": None if at is None else max(0.0, now - at),
                     "last_upload_to": r.get("delivered_to") or ""})
    scanned = "at" in tables
    share = f"this process's share ({receivers} receiver processes)" if receivers > 1 else "this process"
    peers = [{"name": p["name"], "address": p["address"], "healthy": bool(p["healthy"]),
              "reason": p.get("reason", ""), "self": p["name"] == node} for p in view.get("peers", [])]
    return {
        "node": node, "version": version, "receiver": receiver, "receivers": receivers, "time": now,
        "ready": not not_ready, "not_ready_reason": not_ready,
        "peers": peers, "transfer_queue": view.get("queue", 0),
        "scan_age_seconds": max(0.0, now - tables["at"]) if scanned else None,
        "tables": {"count": tables.get("tables", 0), "held": tables.get("held", 0),
                   "owned": tables.get("owned", 0), "shown": len(rows),
                   "more": max(0, tables.get("tables", 0) - len(rows)), "rows": rows},
        "limits": [
            _limit("disk usage (segments)", "--max-disk-usage", tables.get("disk_usage"), limits["max_disk_usage"],
                   "node"),
            _limit("segments", "--max-segment-count", tables.get("segment_count"), limits["max_segment_count"],
                   "node"),
            _limit("memory in flight", "--max-memory", memory[0], memory[1], share),
            _limit("open segment files", "--max-open-segments", open_files[0], open_files[1], share),
            _limit("free disk", "--min-free-disk", free_disk, limits["min_free_disk"], "storage volume",
                   floor=True),
        ],
        "active_segments": tables.get("active_segments"),
    }


def embed(data: Any) -> str:
    """`data` as JSON that can sit inside a <script> element: no `<`, `>` or `&` (they are escaped
    as \\u003c, \\u003e, \\u0026, which JSON.parse reads back), so nothing in it closes the element."""
    text = json.dumps(data, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page_html(status: Mapping[str, Any]) -> str:
    """The page, with `status` (from `build_status`) embedded for its first drawing."""
    return PAGE.replace("/*REFRESH*/", str(REFRESH_SECONDS * 1000)).replace("/*DATA*/", embed(status), 1)


def _free_disk(path: os.PathLike[str] | str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@functools.cache
def _version() -> str:
    from node import version

    return version()


def gather(node: Node) -> dict[str, Any]:
    """The status of a running node as the process `node` sees it (file reads: run it in a thread)."""
    c = node.config
    supervisor = node.supervising
    view = supervisor.published if supervisor is not None else node.siblings.ring()
    return build_status(
        node=c.node_name, version=_version(), receiver=node.worker, receivers=c.receivers,
        not_ready=node.state.not_ready_reason(), now=time.time(), view=view,
        limits={"max_disk_usage": c.max_disk_usage, "max_segment_count": c.max_segment_count,
                "min_free_disk": c.min_free_disk},
        memory=(node.budget.in_use, node.budget.limit),
        open_files=(len(node.wal.files), node.wal.files.limit),
        free_disk=_free_disk(node.wal.directory))


def add_routes(app: web.Application, status: Callable[[], dict[str, Any]]) -> None:
    """`GET /` (the page) and `GET /status.json` (its data); `status()` runs in a worker thread."""

    async def page(request: web.Request) -> web.Response:
        data = await asyncio.to_thread(status)
        return web.Response(text=page_html(data), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def status_json(request: web.Request) -> web.Response:
        data = await asyncio.to_thread(status)
        return web.Response(text=json.dumps(data, allow_nan=False), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/", page)
    app.router.add_get("/status.json", status_json)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ingestor</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; }
th, td { padding: .2em .7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; }
.badge { display: inline-block; padding: .15em .6em; border-radius: .3em; font-weight: bold; color: #fff; }
.ready { background: #2a7d2a; }
.not-ready { background: #b3261e; }
.ok { color: #2a7d2a; }
.near { color: #a15c00; font-weight: bold; }
.at-limit, .unhealthy { color: #b3261e; font-weight: bold; }
.bar { display: inline-block; width: 8em; height: .7em; background: #eee; vertical-align: middle; }
.bar > span { display: block; height: 100%; background: #2a7d2a; }
.bar.near > span { background: #d08000; }
.bar.at-limit > span { background: #b3261e; }
</style>
</head>
<body>
<h1>ingestor <span id="node"></span></h1>
<div class="muted"><span id="answered"></span> &middot; <span id="updated"></span> &middot;
<span id="refresh"></span></div>
<noscript><p>This page draws itself with JavaScript. The same data: <a href="status.json">status.json</a>.</p>
</noscript>
<h2>Readiness</h2>
<p><span id="readiness" class="badge"></span> <span id="reason"></span></p>
<h2>Limits</h2>
<table id="limits"><thead><tr><th>limit</th><th>flag</th><th class="num">now</th><th class="num">limit</th>
<th>how close</th><th>measured</th></tr></thead><tbody></tbody></table>
<h2>Peers</h2>
<p id="peers-summary"></p>
<table id="peers"><thead><tr><th>peer</th><th>address</th><th>health</th></tr></thead><tbody></tbody></table>
<h2>Tables</h2>
<p id="tables-summary"></p>
<table id="tables"><thead><tr><th>table</th><th>owner</th><th class="num">closed segments</th>
<th class="num">closed</th><th class="num">active</th><th class="num">waiting</th><th>last upload</th></tr></thead>
<tbody></tbody></table>
<p id="more" class="muted"></p>
<script type="application/json" id="initial">/*DATA*/</script>
<script>
(function () {
  "use strict";
  var REFRESH_MS = /*REFRESH*/;
  var shown = null;

  function $(id) { return document.getElementById(id); }
  // Every name goes in as text (textContent, setAttribute), never as markup.
  function el(tag, cls, text, attrs) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    for (var k in (attrs || {})) { e.setAttribute(k, String(attrs[k])); }
    return e;
  }
  function row(tbody, cells, attrs) {
    var tr = el("tr", null, null, attrs);
    cells.forEach(function (c) { tr.appendChild(c); });
    tbody.appendChild(tr);
    return tr;
  }
  function body(id) {
    var tb = $(id).tBodies[0];
    while (tb.firstChild) { tb.removeChild(tb.firstChild); }
    return tb;
  }
  function bytes(n) {
    if (n === null || n === undefined) { return "?"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function count(n) { return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US"); }
  function ago(s) {
    if (s === null || s === undefined) { return "never"; }
    if (s < 120) { return Math.round(s) + " s ago"; }
    if (s < 7200) { return Math.round(s / 60) + " min ago"; }
    if (s < 172800) { return Math.round(s / 3600) + " h ago"; }
    return Math.round(s / 86400) + " days ago";
  }
  function percent(f) { return f > 0 && f < 0.01 ? "<1%" : Math.round(f * 100) + "%"; }
  function numCell(cls, value, text) {
    return el("td", "num " + cls, text, {"data-value": value === null ? "" : value});
  }

  function render(d) {
    shown = d;
    document.title = (d.ready ? "ready" : "NOT READY") + " - ingestor " + d.node;
    $("node").textContent = d.node;
    $("answered").textContent = "version " + d.version + ", answered by receiver process " + d.receiver +
      " of " + d.receivers;
    $("updated").textContent = "as of " + new Date(d.time * 1000).toLocaleTimeString() +
      (d.scan_age_seconds === null ? " (no scan of the WAL yet)" :
       " (tables from a scan " + Math.round(d.scan_age_seconds) + " s old)");
    var r = $("readiness");
    r.textContent = d.ready ? "READY" : "NOT READY";
    r.className = "badge " + (d.ready ? "ready" : "not-ready");
    $("reason").textContent = d.ready ? "taking data" : d.not_ready_reason;

    var lb = body("limits");
    d.limits.forEach(function (l) {
      var unit = l.flag === "--max-segment-count" || l.flag === "--max-open-segments" ? count : bytes;
      var close, bar = el("span", "bar " + l.state.replace(" ", "-")), fill = el("span");
      if (l.fraction === null) {
        close = el("td", "close off", l.state === "off" ? "no limit" : "unknown");
      } else {
        fill.style.width = Math.min(100, l.fraction * 100) + "%";
        bar.appendChild(fill);
        close = el("td", "close " + l.state.replace(" ", "-"));
        close.appendChild(bar);
        close.appendChild(document.createTextNode(" " + (l.floor ?
          (l.used >= l.limit ? bytes(l.used - l.limit) + " above the floor" : "under the floor") :
          percent(l.fraction) + " used") + (l.state === "ok" ? "" : " (" + l.state + ")")));
      }
      row(lb, [el("td", "name", l.name), el("td", "flag", l.flag), numCell("used", l.used, unit(l.used)),
               numCell("limit", l.limit, l.limit ? unit(l.limit) : "none"), close, el("td", "scope muted", l.scope)],
          {"data-flag": l.flag});
    });

    var pb = body("peers");
    $("peers").hidden = !d.peers.length;
    if (!d.peers.length) {
      $("peers-summary").textContent = "No peers: this node is alone and owns every table.";
    } else {
      var bad = d.peers.filter(function (p) { return !p.healthy; }).length;
      $("peers-summary").textContent = d.peers.length + " peers (this node included), " + bad + " unhealthy; " +
        d.transfer_queue + " transfers queued.";
    }
    d.peers.forEach(function (p) {
      row(pb, [el("td", "name", p.name + (p.self ? " (this node)" : "")), el("td", "address", p.address),
               el("td", p.healthy ? "health ok" : "health unhealthy",
                  p.healthy ? "healthy" : "unhealthy" + (p.reason ? ": " + p.reason : ""))],
          {"data-peer": p.name});
    });

    var t = d.tables, tb = body("tables");
    $("tables").hidden = !t.rows.length;
    $("tables-summary").textContent = t.count ? (count(t.count) + " tables: " + count(t.held) +
      " with segments here (this node owns " + count(t.owned) + " of them), " + count(t.count - t.held) +
      " delivered since the node started with nothing left here.") :
      "No tables: nothing waiting here and nothing delivered since the node started.";
    t.rows.forEach(function (x) {
      var name = el("td", "name", x.database + "." + x.table);
      if (x.schema) { name.appendChild(el("span", "muted", " schema " + x.schema)); }
      var up = x.last_upload_seconds === null ? "never" : ago(x.last_upload_seconds) + " to " + x.last_upload_to;
      row(tb, [name, el("td", "owner", x.owned ? "this node" : x.owner),
               numCell("closed-segments", x.closed_segments, count(x.closed_segments)),
               numCell("closed", x.closed_bytes, bytes(x.closed_bytes)),
               numCell("active", x.active_bytes, bytes(x.active_bytes)),
               numCell("waiting", x.waiting_bytes, bytes(x.waiting_bytes)),
               el("td", "upload", up)],
          {"data-prefix": x.prefix});
    });
    $("more").textContent = t.more ? "The " + count(t.shown) + " tables with the most bytes waiting are shown; " +
      count(t.more) + " more are not." : "";
  }

  function refresh() {
    fetch("status.json", {cache: "no-store"}).then(function (resp) {
      if (!resp.ok) { throw new Error("HTTP " + resp.status); }
      return resp.json();
    }).then(function (d) {
      render(d);
      $("refresh").textContent = "refreshing every " + REFRESH_MS / 1000 + " s";
    }).catch(function (e) {
      $("refresh").textContent = "refresh failed (" + e.message + "): showing what the node said at " +
        new Date(shown.time * 1000).toLocaleTimeString();
    });
  }

  render(JSON.parse($("initial").textContent));
  $("refresh").textContent = "refreshing every " + REFRESH_MS / 1000 + " s";
  setInterval(refresh, REFRESH_MS);
})();
</script>
</body>
</html>
"""
