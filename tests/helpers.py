"""Small helpers shared by the live-server tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable
from typing import Any, Callable

from tornado.websocket import websocket_connect


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


async def submit_in_bursts(store: Any, messages: list[Any], per_iteration: int) -> None:
    """Submit ``messages``, ``per_iteration`` of them per event-loop iteration."""
    for start in range(0, len(messages), per_iteration):
        for message in messages[start : start + per_iteration]:
            store.submit(message)
        await asyncio.sleep(0)


class TornadoWS:
    """A subscriber read with Tornado's own WebSocket client."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, port: int, path: str, **kwargs: Any) -> TornadoWS:
        return cls(await websocket_connect(f"ws://127.0.0.1:{port}{path}", **kwargs))

    async def read(self, n: int, timeout: float = 10.0) -> list[Any]:
        out = []
        for _ in range(n):
            raw = await asyncio.wait_for(self.conn.read_message(), timeout)
            assert raw is not None, f"connection closed after {len(out)} messages"
            out.append(json.loads(raw)["data"])
        return out

    async def close(self) -> None:
        self.conn.close()


class LibWS:
    """A subscriber read with the `websockets` library's client."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, port: int, path: str, **kwargs: Any) -> LibWS:
        from websockets.asyncio.client import connect

        return cls(await connect(f"ws://127.0.0.1:{port}{path}", **kwargs))

    async def read(self, n: int, timeout: float = 10.0) -> list[Any]:
        out = []
        for _ in range(n):
            raw = await asyncio.wait_for(self.conn.recv(), timeout)
            assert isinstance(raw, str), "expected a text frame"
            out.append(json.loads(raw)["data"])
        return out

    async def close(self) -> None:
        await self.conn.close()


class LoopThread:
    """An event loop in a thread of its own, for tests that drive a browser with
    Playwright's sync API (which cannot share a thread with a running loop).
    ``call(fn, *args)`` runs ``fn`` on that loop and returns its result (awaited when
    it is awaitable); ``close()`` stops the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 15) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if isinstance(result, Awaitable) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def server_stream(handler: Any) -> Any:
    """The stream a subscriber's handler writes to on the server: its detached socket
    (tornadose.transport.rawstream), its WebSocket's, or its HTTP connection's IOStream."""
    raw = getattr(handler, "_raw", None)
    if raw is not None:
        return raw
    ws = getattr(handler, "ws_connection", None)
    if ws is not None:
        return ws.stream
    return handler.request.connection.stream
