"""The status page (`GET /`, node/statuspage.py): the pure parts (the tables the supervisor keeps,
the JSON the page draws, the data embedded in the page), then real nodes whose page is drawn by
headless Chromium (Debian's `chromium`), asserting what the rendered DOM shows: readiness and its
reason, the tables with their bytes waiting and last upload, the limits and how close the node is
to each; with two receiver processes, that either one answers with the same tables.

Table names are `[A-Za-z0-9]` (node/names.py): no markup can arrive in one, so a hostile table
name is tried on the page itself, built by `page_html` from a status that holds one and drawn by
Chromium from a file. The node name is not checked against any pattern: the real node of the
first test is named with markup, and its page must show it as text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cluster.ring import Ring
from node.rows.names import normalize_name
from node.rows.series import BASE_SCHEMA
from node.statuspage import build_status, embed, page_html, summarize
from node.wal.names import make_prefix, schema_hash
from node.wal.repository import WalStats, directory_stats
from tests.harness import NodeProcess
from tests.node.test_grpc import gauge_request

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` binary (Debian: apt-get install chromium)"
                                    ": the page is drawn by its JavaScript, and only a browser runs that")
HOSTILE_NODE = "n0<b id=pwn>&amp;"
HOSTILE_TABLE = "</script><img id=pwn src=x>&lt;"
MiB = 1 << 20


# -- a small DOM, from the HTML Chromium dumps -------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> list[Element]:
        out = [self]
        for c in self.children:
            if isinstance(c, Element):
                out.extend(c.iter())
        return out

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements of `tag` whose attributes have these values (`class_`: one of the classes)."""
        def match(e: Element) -> bool:
            for k, v in attrs.items():
                if k == "class_":
                    if v not in e.attrs.get("class", "").split():
                        return False
                elif e.attrs.get(k.replace("_", "-")) != v:
                    return False
            return tag is None or e.tag == tag
        return [e for e in self.iter() if match(e)]

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        if tag not in VOID:
            self.stack.append(e)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def render(url: str, profile: Path) -> Element:
    """The DOM of `url` once its script has run (5 s of virtual time: the first drawing and a refresh)."""
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return parse(done.stdout)


# -- the page's parts, as values -----------------------------------------------------------------

def _stats(closed: dict[str, tuple[int, int]], active: dict[str, int]) -> WalStats:
    return WalStats(sum(b for _, b in closed.values()) + sum(active.values()),
                    sum(n for n, _ in closed.values()) + len(active), closed, active)


def test_summarize_keeps_the_tables_with_the_most_bytes_waiting_then_the_last_delivered() -> None:
    closed = {f"Metrics_T{i}": (2, 1000 + i) for i in range(300)}
    active = {"Metrics_T5": 7, "Logs_Only": 50_000}
    delivered = {"Metrics_T7": (1000.0, "local"), "Metrics_Gone": (990.0, "n1"), "Metrics_GoneEarlier": (900.0, "n1")}
    owners = {p: ("n0" if i % 3 else "n1") for i, p in enumerate(sorted(closed.keys() | active.keys()))}

    out = summarize(_stats(closed, active), delivered, lambda p: owners.get(p, "n2"), "n0", now=1234.0, top=5)

    assert [r["prefix"] for r in out["top"]] == ["Logs_Only", "Metrics_T299", "Metrics_T298", "Metrics_T297",
                                                  "Metrics_T296"]
    assert out["top"][0] == {"prefix": "Logs_Only", "closed_segments": 0, "closed_bytes": 0, "active_bytes": 50_000,
                             "owner": owners["Logs_Only"], "delivered_at": None, "delivered_to": ""}
    assert out["tables"] == 303 and out["held"] == 301  # two delivered with nothing left here
    assert out["owned"] == sum(1 for o in owners.values() if o == "n0")
    assert out["segment_count"] == 602 and out["active_segments"] == 2 and out["at"] == 1234.0
    assert out["disk_usage"] == sum(1000 + i for i in range(300)) + 50_007

    # With room left, the tables delivered lately with nothing here come after those with bytes,
    # the latest first, with when and where; their owner is asked of the ring.
    few = summarize(_stats({"Metrics_A": (1, 10)}, {}), delivered, lambda p: "n2", "n0", now=1234.0, top=3)
    assert [(r["prefix"], r["delivered_at"], r["delivered_to"], r["owner"]) for r in few["top"]] == [
        ("Metrics_A", None, "", "n2"), ("Metrics_T7", 1000.0, "local", "n2"), ("Metrics_Gone", 990.0, "n1", "n2")]
    assert few["tables"] == 4 and few["owned"] == 0


def _status(view: dict[str, Any], **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "node": "n0", "version": "9.9", "receiver": 1, "receivers": 2, "not_ready": "", "now": 2000.0, "view": view,
        "limits": {"max_disk_usage": 1000, "max_segment_count": 10, "min_free_disk": 100},
        "memory": (90, 100), "open_files": (3, 8), "free_disk": 150}
    args.update(over)
    return build_status(**args)


def test_build_status_says_readiness_tables_ages_and_how_close_each_limit_is() -> None:
    tables = summarize(_stats({"Metrics_Cpu_abc": (3, 600)}, {"Logs_App": 400}),
                       {"Metrics_Cpu_abc": (1990.0, "local"), "Traces_Span": (1500.0, "n1")},
                       lambda p: "n1" if p.startswith("Traces") else "n0", "n0", now=1999.0)
    view = {"peers": [{"name": "n0", "address": "a:1", "healthy": True, "reason": ""},
                      {"name": "n1", "address": "b:1", "healthy": False, "reason": "transfer failed"}],
            "owners": {"Metrics_Cpu_abc": "n0", "Logs_App": "n0"}, "queue": 4, "tables": tables}

    st = _status(view)

    assert st["ready"] is True and st["not_ready_reason"] == "" and (st["receiver"], st["receivers"]) == (1, 2)
    assert st["scan_age_seconds"] == 1.0 and st["transfer_queue"] == 4
    assert [(p["name"], p["healthy"], p["reason"], p["self"]) for p in st["peers"]] == [
        ("n0", True, "", True), ("n1", False, "transfer failed", False)]
    rows = {r["prefix"]: r for r in st["tables"]["rows"]}
    assert (rows["Metrics_Cpu_abc"]["database"], rows["Metrics_Cpu_abc"]["table"],
            rows["Metrics_Cpu_abc"]["schema"]) == ("Metrics", "Cpu", "abc")
    assert rows["Metrics_Cpu_abc"]["waiting_bytes"] == 600 and rows["Logs_App"]["waiting_bytes"] == 400
    assert rows["Metrics_Cpu_abc"]["last_upload_seconds"] == 10.0
    assert rows["Metrics_Cpu_abc"]["last_upload_to"] == "local"
    assert rows["Logs_App"]["last_upload_seconds"] is None  # "never" on the page
    assert rows["Traces_Span"]["owner"] == "n1" and rows["Traces_Span"]["owned"] is False
    assert rows["Logs_App"]["owned"] is True and rows["Traces_Span"]["last_upload_seconds"] == 500.0
    assert [r["prefix"] for r in st["tables"]["rows"]] == ["Metrics_Cpu_abc", "Logs_App", "Traces_Span"]
    assert (st["tables"]["count"], st["tables"]["held"], st["tables"]["owned"], st["tables"]["more"]) == (3, 2, 2, 0)

    limits = {x["flag"]: x for x in st["limits"]}
    assert (limits["--max-disk-usage"]["used"], limits["--max-disk-usage"]["state"]) == (1000, "at limit")
    assert (limits["--max-segment-count"]["used"], limits["--max-segment-count"]["fraction"]) == (4, 0.4)
    assert limits["--max-segment-count"]["state"] == "ok"
    assert (limits["--max-memory"]["state"], limits["--max-memory"]["fraction"]) == ("near", 0.9)
    assert "2 receiver processes" in limits["--max-memory"]["scope"]
    assert (limits["--max-open-segments"]["used"], limits["--max-open-segments"]["limit"]) == (3, 8)
    free = limits["--min-free-disk"]
    assert (free["used"], free["limit"], free["floor"], free["state"]) == (150, 100, True, "ok")

    not_ready = _status(view, not_ready="over limits: 10 segments of max 10", free_disk=90,
                        limits={"max_disk_usage": 0, "max_segment_count": 0, "min_free_disk": 100})
    assert not_ready["ready"] is False and not_ready["not_ready_reason"] == "over limits: 10 segments of max 10"
    limits = {x["flag"]: x for x in not_ready["limits"]}
    assert limits["--max-disk-usage"]["state"] == "off" and limits["--max-segment-count"]["fraction"] is None
    assert limits["--min-free-disk"]["state"] == "at limit"  # 90 free, under the floor of 100

    # Before the supervisor's first scan: no tables yet, said so.
    empty = _status({})
    assert empty["scan_age_seconds"] is None and empty["tables"]["rows"] == [] and empty["peers"] == []
    assert {x["flag"]: x["used"] for x in empty["limits"]}["--max-disk-usage"] is None

    # 250 tables: the supervisor kept 200; the page says how many more there are.
    many = summarize(_stats({f"Metrics_T{i}": (1, i + 1) for i in range(250)}, {}), {}, lambda p: "n0", "n0", 1.0)
    st = _status({"tables": many})
    assert (st["tables"]["shown"], st["tables"]["more"], st["tables"]["count"]) == (200, 50, 250)
    json.dumps(st, allow_nan=False)  # what status.json sends


def _hostile_status() -> dict[str, Any]:
    prefix = f"Metrics_{HOSTILE_TABLE}"
    tables = summarize(_stats({prefix: (1, 4096)}, {"Metrics_Plain": 5}), {}, lambda p: "n<i>1", "n<i>1", 10.0)
    return _status({"tables": tables, "peers": [{"name": "n<i>1", "address": "<u>x:1", "healthy": False,
                                                 "reason": "<script>alert(1)</script>"}]},
                   node="n<i>1", not_ready="over limits: </script><b>", now=11.0)


def test_names_are_embedded_as_data_never_as_markup() -> None:
    st = _hostile_status()
    html = page_html(st)
    data = re.search(r'<script type="application/json" id="initial">(.*?)</script>', html, re.S)
    assert data is not None
    assert "<" not in data.group(1) and ">" not in data.group(1) and "&" not in data.group(1)
    assert json.loads(data.group(1)) == st  # what the script reads is what was meant
    assert HOSTILE_TABLE not in html and "<img" not in html and "<i>" not in html and "<u>" not in html
    assert embed({"a": "</script>&"}) == '{"a": "\\u003c/script\\u003e\\u0026"}'
    assert re.search(r"https?://", html) is None  # nothing fetched from elsewhere
    assert "status.json" in html and html.count("<script") == 2


@needs_chromium
def test_the_page_shows_hostile_names_as_text(tmp_path: Path) -> None:
    """The page as the browser draws it, from `page_html` alone (its refresh fails from a file: it
    says so and keeps what it showed)."""
    page = tmp_path / "page.html"
    page.write_text(page_html(_hostile_status()))

    dom = render(page.as_uri(), tmp_path / "profile")

    assert dom.find("img") == [] and dom.find(id="pwn") == [] and dom.find("i") == [] and dom.find("u") == []
    assert len(dom.find("script")) == 2  # the page's own, none added
    row = dom.one("tr", data_prefix=f"Metrics_{HOSTILE_TABLE}")
    assert row.one("td", class_="name").text() == f"Metrics.{HOSTILE_TABLE}"
    assert row.one("td", class_="owner").text() == "this node"
    assert row.one("td", class_="waiting").attrs["data-value"] == "4096"
    assert row.one("td", class_="waiting").text() == "4.00 KiB"
    peer = dom.one("tr", data_peer="n<i>1")
    assert peer.one("td", class_="name").text() == "n<i>1 (this node)"
    assert peer.one("td", class_="address").text() == "<u>x:1"
    assert peer.one("td", class_="health").text() == "unhealthy: <script>alert(1)</script>"
    assert dom.one(id="reason").text() == "over limits: </script><b>"
    assert dom.one(id="readiness").text() == "NOT READY"
    assert dom.one(id="refresh").text().startswith("refresh failed")


# -- real nodes ------------------------------------------------------------------------------------

def post_metrics(node: NodeProcess, name: str, points: int = 3) -> None:
    body = gauge_request(name, points=points, attrs=3).SerializeToString()
    req = urllib.request.Request(node.http_url + "/v1/metrics", data=body,
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def status_json(node: NodeProcess) -> dict[str, Any]:
    """/status.json over a new connection (urllib closes each): either receiver process may answer."""
    with urllib.request.urlopen(node.http_url + "/status.json", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        data: dict[str, Any] = json.loads(r.read())
        return data


def waiting(storage: Path) -> dict[str, int]:
    """Bytes waiting per table prefix, as the WAL directory holds them now."""
    stats = directory_stats(storage / "wal")
    return {p: stats.closed.get(p, (0, 0))[1] + stats.active.get(p, 0) for p in stats.closed.keys() | stats.active}


def until(what: str | Callable[[], str], check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what if isinstance(what, str) else what()}")
        time.sleep(0.2)


def shown_tables(dom: Element) -> dict[str, tuple[int, str]]:
    """prefix -> (bytes waiting, last upload) as the drawn page shows them."""
    return {tr.attrs["data-prefix"]: (int(tr.one("td", class_="waiting").attrs["data-value"]),
                                      tr.one("td", class_="upload").text())
            for tr in dom.one("table", id="tables").find("tr") if "data-prefix" in tr.attrs}


def limit_row(dom: Element, flag: str) -> tuple[int, int, str]:
    """(now, limit, how close) of a limit's row."""
    tr = dom.one("tr", data_flag=flag)
    return (int(tr.one("td", class_="used").attrs["data-value"]), int(tr.one("td", class_="limit").attrs["data-value"]),
            tr.find("td")[4].text().strip())


@needs_chromium
def test_a_node_shows_readiness_tables_and_limits(tmp_path: Path) -> None:
    """One table delivered (its segment closed at --max-segment-size and uploaded at once), two
    waiting in active segments, then a third that takes the node to --max-segment-count: not
    ready, and the page says why."""
    node = NodeProcess(tmp_path / "data", "--max-segment-age", "1h", "--max-segment-size", "4KiB",
                       "--min-batch-size", "1", "--upload-interval", "0.5s", "--max-segment-count", "3",
                       "--max-disk-usage", "64MiB", "--max-memory", "32MiB", "--max-open-segments", "64",
                       "--min-free-disk", "1MiB", name=HOSTILE_NODE).start()
    try:
        post_metrics(node, "page_alpha", points=400)  # over 4 KiB: closed at once, then uploaded

        def alpha_delivered() -> dict[str, Any] | None:
            rows = {r["table"]: r for r in status_json(node)["tables"]["rows"]}
            alpha = rows.get("PageAlpha")
            return alpha if alpha and alpha["last_upload_seconds"] is not None and not alpha["waiting_bytes"] else None
        alpha = until("page_alpha uploaded", alpha_delivered)
        post_metrics(node, "page_beta")
        post_metrics(node, "page_gamma")
        on_disk = waiting(node.storage_dir)
        assert len(on_disk) == 2 and all(on_disk.values()), on_disk

        def scanned() -> bool:
            rows = status_json(node)["tables"]["rows"]
            return {r["prefix"]: r["waiting_bytes"] for r in rows if r["waiting_bytes"]} == on_disk
        until("the supervisor's scan sees both tables", scanned)

        dom = render(node.http_url + "/", tmp_path / "profile")

        assert dom.one(id="readiness").text() == "READY" and dom.one(id="reason").text() == "taking data"
        assert dom.one(id="node").text() == HOSTILE_NODE and dom.find(id="pwn") == [] and dom.find("b") == []
        assert "answered by receiver process 0 of 1" in dom.one(id="answered").text()
        tables = shown_tables(dom)
        assert tables.pop(alpha["prefix"])[0] == 0
        assert re.fullmatch(r"\d+ s ago to local", shown_tables(dom)[alpha["prefix"]][1])
        assert tables == {p: (n, "never") for p, n in on_disk.items()}
        names = {tr.one("td", class_="name").text().split(" schema ")[0] for tr in dom.find("tr") if
                 "data-prefix" in tr.attrs}
        assert names == {"Metrics.PageAlpha", "Metrics.PageBeta", "Metrics.PageGamma"}
        assert {tr.one("td", class_="owner").text() for tr in dom.find("tr") if "data-prefix" in tr.attrs} == {
            "this node"}
        assert dom.one(id="tables-summary").text().startswith("3 tables: 2 with segments here (this node owns 2")
        assert dom.one(id="peers-summary").text().startswith("No peers")

        assert limit_row(dom, "--max-disk-usage") == (sum(on_disk.values()), 64 * MiB, "<1% used")
        assert limit_row(dom, "--max-segment-count") == (2, 3, "67% used")
        assert limit_row(dom, "--max-memory") == (0, 32 * MiB, "0% used")
        assert limit_row(dom, "--max-open-segments") == (2, 64, "3% used")
        free, floor, close = limit_row(dom, "--min-free-disk")
        assert floor == MiB and abs(free - shutil.disk_usage(tmp_path).free) < 0.05 * free
        assert close.endswith("above the floor")

        post_metrics(node, "page_delta")  # the third segment: at --max-segment-count
        until("not ready", lambda: not node.ready())
        until("the scan sees three segments", lambda: status_json(node)["limits"][1]["used"] == 3)

        dom = render(node.http_url + "/", tmp_path / "profile")

        assert dom.one(id="readiness").text() == "NOT READY"
        assert dom.one(id="reason").text() == "over limits: 3 segments of max 3"
        assert limit_row(dom, "--max-segment-count") == (3, 3, "100% used (at limit)")
        assert "Metrics.PageDelta" in dom.one(id="tables").text()
    finally:
        node.stop()


@needs_chromium
def test_either_receiver_process_shows_the_same_tables(tmp_path: Path) -> None:
    """The supervisor alone scans the WAL and knows the uploads; receiver 1 shows what it published."""
    node = NodeProcess(tmp_path / "data", "--receivers", "2", "--max-segment-age", "1h").start(timeout=60)
    try:
        for i in range(8):  # a connection each: both receivers write some
            post_metrics(node, f"page_two_{i}")
        on_disk = waiting(node.storage_dir)
        assert len(on_disk) == 8

        answers: dict[int, dict[str, int]] = {}

        def both_agree() -> bool:
            st = status_json(node)
            answers[st["receiver"]] = {r["prefix"]: r["waiting_bytes"] for r in st["tables"]["rows"]}
            return set(answers) == {0, 1} and answers[0] == answers[1] == on_disk
        until(lambda: f"both receiver processes show the tables {sorted(on_disk)}: they show {answers}", both_agree)

        drawn: dict[str, dict[str, tuple[int, str]]] = {}
        for attempt in range(16):  # each a new browser, new connections: the kernel picks the process
            dom = render(node.http_url + "/", tmp_path / f"profile-{attempt}")
            answered = dom.one(id="answered").text()
            drawn[answered.rsplit("answered by ", 1)[1]] = shown_tables(dom)
            assert dom.one(id="readiness").text() == "READY"
            if len(drawn) == 2:
                break
        assert set(drawn) == {"receiver process 0 of 2", "receiver process 1 of 2"}, drawn.keys()
        assert drawn["receiver process 0 of 2"] == drawn["receiver process 1 of 2"] == {
            p: (n, "never") for p, n in on_disk.items()}
    finally:
        node.stop()


def test_the_page_needs_nothing_from_elsewhere(tmp_path: Path) -> None:
    """Served by a real node: HTML with everything inline, and its data as JSON."""
    node = NodeProcess(tmp_path / "data").start()
    try:
        with urllib.request.urlopen(node.http_url + "/", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            html = r.read().decode()
        assert re.search(r"""(src|href)=["']?(https?:)?//""", html) is None and "@import" not in html
        assert '"node": "node-0"' in html and status_json(node)["node"] == "node-0"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(node.http_url + "/nothing", timeout=10)
        e.value.close()
        assert e.value.code == 404
    finally:
        node.stop()


@needs_chromium
def test_peers_their_health_and_the_owner_of_each_table(tmp_path: Path) -> None:
    """Two nodes on one ring: the page lists both, says who owns each table; once the other node
    is gone and a transfer to it fails, it shows that node unhealthy, with the reason."""
    nodes = [NodeProcess(tmp_path / f"node-{i}", name=f"ring-{i}") for i in range(2)]
    peers = ",".join(f"{n.name}={n.grpc_addr}" for n in nodes)
    for n in nodes:
        n.args += ["--peers", peers, "--peer-token", "t", "--max-segment-age", "1h", "--max-segment-size", "4KiB",
                   "--upload-interval", "0.5s", "--peer-unhealthy-timeout", "5m"]
        n.start()
    me, other = nodes
    ring = Ring(n.name for n in nodes)
    try:
        for i in range(6):
            post_metrics(me, f"ring_page_{i}")
        on_disk = waiting(me.storage_dir)
        assert len(on_disk) == 6
        owners = {p: ring.owner(p) for p in on_disk}
        assert set(owners.values()) == {me.name, other.name}  # both own some (else pick other names)
        until("the scan sees the tables", lambda: len(status_json(me)["tables"]["rows"]) == 6)

        dom = render(me.http_url + "/", tmp_path / "profile")

        assert {tr.attrs["data-peer"]: (tr.one("td", class_="name").text(), tr.one("td", class_="address").text(),
                                        tr.one("td", class_="health").text())
                for tr in dom.find("tr") if "data-peer" in tr.attrs} == {
            me.name: (f"{me.name} (this node)", me.grpc_addr, "healthy"),
            other.name: (other.name, other.grpc_addr, "healthy")}
        assert dom.one(id="peers-summary").text().startswith("2 peers (this node included), 0 unhealthy")
        shown = {tr.attrs["data-prefix"]: tr.one("td", class_="owner").text() for tr in dom.find("tr")
                 if "data-prefix" in tr.attrs}
        assert shown == {p: "this node" if o == me.name else o for p, o in owners.items()}
        mine = sum(1 for o in owners.values() if o == me.name)
        assert f"(this node owns {mine} of them)" in dom.one(id="tables-summary").text()

        other.kill()
        theirs = next(f"ring_gone_{i}" for i in range(100) if ring.owner(
            make_prefix("Metrics", normalize_name(f"ring_gone_{i}"), schema_hash(BASE_SCHEMA))) == other.name)
        post_metrics(me, theirs, points=400)  # over 4 KiB: closed, and its transfer to the owner fails

        def unhealthy() -> bool:
            return any(not p["healthy"] for p in status_json(me)["peers"])
        until("the other node unhealthy", unhealthy)

        dom = render(me.http_url + "/", tmp_path / "profile")

        health = dom.one("tr", data_peer=other.name).one("td", class_="health")
        assert health.text().startswith("unhealthy: ") and len(health.text()) > len("unhealthy: ")
        assert "health unhealthy" in health.attrs["class"]
        assert dom.one(id="peers-summary").text().startswith("2 peers (this node included), 1 unhealthy")
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
