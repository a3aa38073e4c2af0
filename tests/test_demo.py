"""The README's "run it" command serves a page, live streams and stats."""

from __future__ import annotations

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from .helpers import TornadoWS
from .redis_server import redis_py, redis_server  # noqa: F401  (fixtures)
from .sseclient import RawSSEClient
from .test_browser import DemoServer


def _demo(*args: str) -> DemoServer:
    """The demo on a free port, started: it has printed that it serves."""
    sock, port = bind_unused_port()
    sock.close()
    demo = DemoServer(port, *args)
    demo.start()
    return demo


async def test_demo_serves_page_streams_and_stats():
    demo = _demo("--interval", "0.05")
    port = demo.port
    http = AsyncHTTPClient()
    try:
        page = await http.fetch(f"http://127.0.0.1:{port}/")
        assert b"new EventSource" in page.body and b"new WebSocket" in page.body

        sse = await RawSSEClient.connect("127.0.0.1", port, "/ticks/sse")
        ticks = [json.loads(e.data) for e in await sse.read_events(3)]
        assert [t["seq"] for t in ticks] == list(range(ticks[0]["seq"], ticks[0]["seq"] + 3))
        latest = await RawSSEClient.connect("127.0.0.1", port, "/latest/sse")
        assert "price" in json.loads((await latest.read_events(1))[0].data)
        ws = await TornadoWS.connect(port, "/ticks/ws")
        assert {"seq", "price", "time"} <= set((await ws.read(1))[0])

        stats = json.loads((await http.fetch(f"http://127.0.0.1:{port}/stats")).body)
        assert stats["ticks"]["subscribers"] == 2 and stats["latest"]["subscribers"] == 1
        assert stats["backend"] in ("python", "cython")
        sse.close_fin()
        latest.close_fin()
        await ws.close()
        await asyncio.sleep(0.1)
    finally:
        http.close()
        demo.stop()
    stderr = demo.logged()
    assert b"Traceback" not in stderr and b"WARNING" not in stderr, stderr.decode()


async def test_demo_processes_resume_trades_on_another_worker(redis_server):  # noqa: F811
    """--processes with --redis: the trades topics are views of one Redis stream, so a
    client cut from one worker resumes on another with every tick exactly once."""
    demo = _demo(
        "--symbols", "20", "--rate", "300", "--processes", "2",
        "--redis", f"redis://127.0.0.1:{redis_server.port}/0",
    )
    port = demo.port
    http = AsyncHTTPClient()
    try:
        symbols = json.loads((await http.fetch(f"http://127.0.0.1:{port}/symbols")).body)
        path = "/trades/sse?topics=" + ",".join(symbols)  # every symbol: every tick

        async def connect(headers=None, other_than=None) -> RawSSEClient:
            for _ in range(200):
                client = await RawSSEClient.connect("127.0.0.1", port, path, headers=headers)
                if client.headers["x-served-by"] != other_than:
                    return client
                client.close_fin()
            raise AssertionError("every connection landed on the same worker")

        first = await connect()
        seen = await first.read_events(60)
        first.close_rst()
        await asyncio.sleep(0.3)  # ticks keep coming while it is away
        again = await connect({"Last-Event-ID": seen[-1].id}, first.headers["x-served-by"])
        seen += await again.read_events(240)
        assert all(e.type in symbols for e in seen), {e.type for e in seen}
        seqs = [json.loads(e.data)["seq"] for e in seen]
        # Every tick once, in order, across the two workers: the feed numbers them.
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        again.close_fin()
    finally:
        http.close()
        demo.stop()
    stderr = demo.logged()
    assert b"Traceback" not in stderr and b"ERROR" not in stderr, stderr.decode()


async def test_demo_entitlements_mode():
    """--entitlements: ?user=free sees the first 10 symbols, ?user=pro all of them,
    anyone else nothing; the page's /symbols lists what the user may see."""
    demo = _demo("--interval", "0.01", "--symbols", "20", "--entitlements")
    port = demo.port
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    try:
        everything = json.loads((await http.fetch(base + "/symbols?user=pro")).body)
        free = json.loads((await http.fetch(base + "/symbols?user=free")).body)
        assert len(everything) == 20 and free == everything[:10]
        assert json.loads((await http.fetch(base + "/symbols")).body) == []
        anonymous = await RawSSEClient.connect("127.0.0.1", port, f"/quotes/sse/{free[0]}")
        assert anonymous.status == 401
        denied = await RawSSEClient.connect(
            "127.0.0.1", port, f"/quotes/sse?topics={free[0]},{everything[15]}&user=free")
        assert denied.status == 403
        assert (await denied.read_body()).decode() == f"forbidden topics: {everything[15]}\n"
        allowed = await RawSSEClient.connect(
            "127.0.0.1", port, f"/quotes/sse?topics={','.join(free)}&user=free")
        assert allowed.status == 200
        assert {e.type for e in await allowed.read_events(10)} <= set(free)
        pro = await TornadoWS.connect(port, f"/trades/ws/{everything[15]}?user=pro")
        assert {"price"} <= set((await pro.read(1))[0])
        allowed.close_fin()
        await pro.close()
        await asyncio.sleep(0.1)
    finally:
        http.close()
        demo.stop()
    stderr = demo.logged()
    # 401/403 are access-log WARNINGs by Tornado's convention; nothing else may appear.
    problems = [line for line in stderr.decode().splitlines()
                if ("WARNING" in line or "ERROR" in line or "Traceback" in line)
                and "tornado.access" not in line]
    assert not problems, stderr.decode()


async def test_demo_compress_mode_serves_gzip_streams():
    """--compress: a client that accepts gzip gets a gzip'd stream it decodes; one that
    does not gets plain SSE; /stats says compression is on."""
    demo = _demo("--interval", "0.02", "--compress")
    port = demo.port
    http = AsyncHTTPClient()
    try:
        gz = await RawSSEClient.connect(
            "127.0.0.1", port, "/ticks/sse", headers={"Accept-Encoding": "gzip"})
        assert gz.headers.get("content-encoding") == "gzip"
        seqs = [json.loads(e.data)["seq"] for e in await gz.read_events(5)]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
        plain = await RawSSEClient.connect("127.0.0.1", port, "/ticks/sse")
        assert "content-encoding" not in plain.headers
        assert "seq" in json.loads((await plain.read_events(1))[0].data)
        stats = json.loads((await http.fetch(f"http://127.0.0.1:{port}/stats")).body)
        assert stats["compression"] is True
        gz.close_fin()
        plain.close_fin()
        await asyncio.sleep(0.1)
    finally:
        http.close()
        demo.stop()
    stderr = demo.logged()
    assert b"Traceback" not in stderr and b"WARNING" not in stderr, stderr.decode()
