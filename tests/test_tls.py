"""Over TLS the raw-socket path is never taken: frames go through the SSL IOStream."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
import trustme
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import websocket_connect

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import QueueStore

from .helpers import submit_in_bursts, wait_until
from .sseclient import ChunkedDecoder, SSEParser


@pytest.fixture
async def tls_server():
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    store = QueueStore()
    sock, port = bind_unused_port()
    server = HTTPServer(
        Application([(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})]),
        ssl_options=server_ctx,
    )
    server.add_sockets([sock])
    yield store, port, client_ctx
    server.stop()
    await server.close_all_connections()


async def test_sse_and_websocket_over_tls_deliver_everything_in_order(tls_server):
    store, port, client_ctx = tls_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    writer.write(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    ws = await websocket_connect(HTTPRequest(f"wss://127.0.0.1:{port}/ws", ssl_options=client_ctx))
    await wait_until(lambda: len(store.subscribers) == 2)
    assert not any(h._tornadose_sink.direct for h in store.subscribers), "TLS took the raw path"

    messages = [{"i": i, "pad": "t" * 300} for i in range(2000)]
    await submit_in_bursts(store, messages, 100)

    decoder, parser, events = ChunkedDecoder(), SSEParser(), []
    while len(events) < len(messages):
        events += parser.feed(decoder.feed(await asyncio.wait_for(reader.read(65536), 10)))
    assert [json.loads(e.data) for e in events] == messages
    received = [json.loads(await asyncio.wait_for(ws.read_message(), 10))["data"] for _ in messages]
    assert received == messages
    writer.close()
    ws.close()
    await wait_until(lambda: len(store.subscribers) == 0)
