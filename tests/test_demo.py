"""The README's "run it" command serves a page, live streams and stats."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from .helpers import TornadoWS
from .sseclient import RawSSEClient


async def test_demo_serves_page_streams_and_stats():
    sock, port = bind_unused_port()
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tornadose.demo", "--port", str(port), "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    http = AsyncHTTPClient()
    try:
        assert b"tornadose demo" in proc.stdout.readline()
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
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert b"Traceback" not in stderr and b"WARNING" not in stderr, stderr.decode()
