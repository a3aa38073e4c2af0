"""Cross-origin use: ``tornadose_allowed_origins`` / ``allowed_origins`` for SSE (CORS,
preflight) and WebSocket (check_origin); a real headless Chromium reads an allowed
origin's stream with ``withCredentials`` and is refused on another origin."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import QueueStore
from tornadose.topics import TopicRegistry

from tornadose.web.origins import _check_origins

from .helpers import LoopThread, wait_until
from .sseclient import RawSSEClient
from .test_browser import launched_chromium

ALLOWED = "https://app.example"

# Tornado's access log records every 4xx at WARNING: refusals are what these tests do.
pytestmark = pytest.mark.allow_log_errors


@pytest.fixture(autouse=True)
def quiet_but_access(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    bad = [f"{r.name} {r.levelname}: {r.getMessage()}"
           for when in ("setup", "call", "teardown") for r in caplog.get_records(when)
           if r.levelno >= logging.WARNING and r.name != "tornado.access"]
    assert not bad, bad


def _routes(store: QueueStore, registry: TopicRegistry, **kwargs: Any) -> list[Any]:
    return [
        (r"/sse", EventSource, {"store": store, **kwargs}),
        (r"/ws", WebSocketSubscriber, {"store": store, **kwargs}),
        (r"/feed/sse", TopicEventSource, {"registry": registry, **kwargs}),
        (r"/feed/ws", TopicWebSocketSubscriber, {"registry": registry, **kwargs}),
    ]


@pytest.mark.parametrize("path", ["/sse", "/feed/sse?topics=A"])
async def test_sse_grants_cors_to_allowed_origins_only(serve, path):
    store, registry = QueueStore(), TopicRegistry(QueueStore)
    port = await serve(_routes(store, registry), tornadose_allowed_origins=[ALLOWED])
    allowed = await RawSSEClient.connect("127.0.0.1", port, path, headers={"Origin": ALLOWED})
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in allowed.headers["vary"]
    other = await RawSSEClient.connect("127.0.0.1", port, path,
                                       headers={"Origin": "https://evil.example"})
    assert other.status == 200  # the server streams; the browser withholds it from the page
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-credentials" not in other.headers
    for client in (allowed, other):
        client.close_fin()


async def test_no_setting_no_cors_and_handler_argument_wins(serve):
    store = QueueStore()
    port = await serve([
        (r"/plain", EventSource, {"store": store}),
        (r"/any", EventSource, {"store": store, "allowed_origins": "*"}),
    ])
    plain = await RawSSEClient.connect("127.0.0.1", port, "/plain", headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in plain.headers and "vary" not in plain.headers
    anyone = await RawSSEClient.connect("127.0.0.1", port, "/any",
                                        headers={"Origin": "http://localhost:1234"})
    assert anyone.headers["access-control-allow-origin"] == "http://localhost:1234"
    plain.close_fin()
    anyone.close_fin()


async def test_preflight_is_answered_and_subscribes_nothing(serve):
    store, registry = QueueStore(), TopicRegistry(QueueStore)
    port = await serve(_routes(store, registry), tornadose_allowed_origins=[ALLOWED])
    http = AsyncHTTPClient()
    for path in ("/sse", "/feed/sse?topics=A"):
        ok = await http.fetch(f"http://127.0.0.1:{port}{path}", method="OPTIONS", headers={
            "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id"})
        assert ok.code == 204
        assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert ok.headers["Access-Control-Allow-Methods"] == "GET"
        assert ok.headers["Access-Control-Allow-Headers"] == "last-event-id"
        refused = await http.fetch(f"http://127.0.0.1:{port}{path}", method="OPTIONS", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert refused.code == 204 and "Access-Control-Allow-Origin" not in refused.headers
    assert store.subscribers == set() and registry.connections == 0
    assert "A" not in registry  # no topic was created for a preflight


async def test_websocket_origins(serve):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    store, registry = QueueStore(), TopicRegistry(QueueStore)
    configured = await serve(_routes(store, registry), tornadose_allowed_origins=[ALLOWED])
    default = await serve(_routes(QueueStore(), TopicRegistry(QueueStore)))
    for path in ("/ws", "/feed/ws"):
        async with connect(f"ws://127.0.0.1:{configured}{path}", origin=ALLOWED) as ws:
            await wait_until(lambda: len(store.subscribers) + registry.connections == 1)
            await ws.close()
        await wait_until(lambda: len(store.subscribers) + registry.connections == 0)
        for port, origin in ((configured, "https://evil.example"),
                             (default, "https://app.example")):  # Tornado: same origin only
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}{path}", origin=origin):
                    pass
            assert refused.value.response.status_code == 403
        for port in (configured, default):  # same origin: always (Tornado's own rule)
            async with connect(f"ws://127.0.0.1:{port}{path}", origin=f"http://127.0.0.1:{port}"):
                pass


def test_bad_origin_settings_are_refused_clearly():
    assert _check_origins("*") == "*"
    assert _check_origins(["HTTPS://App.Example/"]) == frozenset({"https://app.example"})
    for bad in ("https://app.example", ["app.example"], [None]):
        with pytest.raises(TypeError, match="allowed origins"):
            _check_origins(bad)  # type: ignore[arg-type]


# -- a real browser ---------------------------------------------------------------------

PAGE = """<!doctype html><title>cors</title><script>
window.got = []; window.errors = 0;
const es = new EventSource(STREAM, {withCredentials: true});
es.onmessage = (e) => window.got.push(e.data);
es.onerror = () => { window.errors += 1; };
</script>"""


class _Page(RequestHandler):
    def get(self) -> None:
        stream = self.get_query_argument("stream")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE.replace("STREAM", repr(stream)))


class _ServerThread(LoopThread):
    """Page and stream on one port, on a loop of its own. The page's origin is the host
    it was loaded by: http://localhost:P is allowed, http://127.0.0.1:P is not."""

    def __init__(self) -> None:
        super().__init__()
        self.store: QueueStore = self.call(QueueStore)
        self.port = self.call(self._listen)

    def _listen(self) -> int:
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        app = Application([(r"/", _Page), (r"/sse", EventSource, {"store": self.store})],
                          tornadose_allowed_origins=[f"http://localhost:{port}"])
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        self.ticker = PeriodicCallback(lambda: self.store.submit(time.time()), 50)
        self.ticker.start()
        return port

    def stop(self) -> None:
        async def close() -> None:
            self.ticker.stop()
            self.store.close()
            self.server.stop()
            await self.server.close_all_connections()

        self.call(close)
        self.close()


@pytest.fixture
def chromium() -> Iterator[Any]:
    yield from launched_chromium()


def test_chromium_reads_an_allowed_origins_stream_with_credentials(chromium):
    server = _ServerThread()
    try:
        context = chromium.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        # Allowed: a page on http://localhost:P reads http://127.0.0.1:P/sse.
        page.goto(f"http://localhost:{server.port}/?stream="
                  f"http://127.0.0.1:{server.port}/sse")
        page.wait_for_function("window.got.length >= 3")
        assert page.evaluate("window.errors") == 0
        # Refused: a page on http://127.0.0.1:P reading http://localhost:P/sse.
        page.goto(f"http://127.0.0.1:{server.port}/?stream="
                  f"http://localhost:{server.port}/sse")
        page.wait_for_function("window.errors >= 1")
        page.wait_for_timeout(500)  # ticks keep coming: none may reach the page
        assert page.evaluate("window.got") == []
        assert page.evaluate("es.readyState") == 2  # CLOSED: the browser gave up
        context.close()
    finally:
        server.stop()
