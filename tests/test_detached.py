"""Open streams leave Tornado: the detached path (tornadose.transport.rawstream, _websocket).

Once its headers (SSE) or its 101 (WebSocket) are out, a subscriber keeps only its
socket. These tests check that it does, that what stays observable still works, that
handlers which need Tornado keep it, and that a detached WebSocket still speaks RFC 6455
to a client writing frames by hand (read back with an independent parser here).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import socket
import struct
import time

import pytest
from tornado.httpserver import HTTPServer
from tornado.httputil import format_timestamp
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornadose.transport.rawstream import RawStream
from tornadose.transport.websocket import WebSocketStream
from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import QueueStore
from tornadose.topics import TopicRegistry

from .helpers import TornadoWS, wait_until
from .sseclient import RawSSEClient


def routes(store, registry):
    return [
        (r"/sse", EventSource, {"store": store}),
        (r"/ws", WebSocketSubscriber, {"store": store}),
        (r"/tsse", TopicEventSource, {"registry": registry}),
        (r"/tws", TopicWebSocketSubscriber, {"registry": registry}),
    ]


class Frames:
    """A client writing masked frames by hand and reading the server's frames with a
    parser of its own (RFC 6455 section 5.2)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, first: bytes = b"") -> Frames:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode() + first
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    @staticmethod
    def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True,
              length: int | None = None) -> bytes:
        n = len(payload) if length is None else length
        first = (0x80 if fin else 0) | opcode
        mask_bit = 0x80 if masked else 0
        if n < 126:
            head = struct.pack("!BB", first, mask_bit | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, mask_bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, n)
        if not masked:
            return head + payload
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send(self, opcode: int, payload: bytes, **kwargs) -> None:
        self.writer.write(self.frame(opcode, payload, **kwargs))

    async def read(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not second & 0x80, "server frames are never masked"
        assert first & 0x80, "this server does not fragment"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(n)

    async def read_until(self, opcode: int, timeout: float = 5.0) -> bytes:
        while True:
            got, payload = await self.read(timeout)
            if got == opcode:
                return payload

    async def eof(self, timeout: float = 5.0) -> bool:
        """Whether the server closed the TCP connection (after any frames)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionResetError:
            pass
        return True


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]


@pytest.fixture
async def plain():
    """A plain Tornado HTTPServer (its ``_connections`` is what Tornado still serves)."""
    started: list[HTTPServer] = []

    async def start(handlers, **settings):
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(Application(handlers, **settings))
        server.add_sockets(sockets)
        started.append(server)
        return server, sockets[0].getsockname()[1]

    yield start
    for server in started:
        server.stop()
        await server.close_all_connections()


# -- what a detached subscriber keeps ---------------------------------------------------


@pytest.mark.parametrize("path", ["/sse", "/ws", "/tsse?topics=A", "/tws?topics=A"])
async def test_an_open_stream_keeps_only_its_socket(plain, path):
    store, registry = QueueStore(), TopicRegistry(QueueStore)
    server, port = await plain(routes(store, registry))
    if "ws" in path:
        client = await TornadoWS.connect(port, path)
    else:
        client = await RawSSEClient.connect("127.0.0.1", port, path)
    def subscribers():
        return registry.topic("A").subscribers if "topics" in path else store.subscribers

    await wait_until(lambda: len(subscribers()) == 1)
    (handler,) = subscribers()
    await wait_until(lambda: "_headers" not in vars(handler), what="response state dropped")
    assert type(handler._raw) is (WebSocketStream if "ws" in path else RawStream)
    assert handler.request.connection is None and handler.request.server_connection is None
    assert not server._connections, "Tornado still serves the connection"
    # What stays observable still works: the request, and delivery.
    assert handler.request.path == path.split("?")[0]
    if "topics" in path:
        registry.submit("A", "tick")
    else:
        store.submit("tick")
    if "ws" in path:
        assert json.loads(await asyncio.wait_for(client.conn.read_message(), 5))["data"] == "tick"
        client.conn.close()
    else:
        assert [e.data for e in await client.read_events(1)] == ["tick"]
        client.close_fin()
    await wait_until(lambda: not subscribers())
    assert handler._raw.closed()


async def _objects_per_idle_subscriber(serve, path: str, **settings) -> float:
    store = QueueStore()
    port = await serve(routes(store, TopicRegistry(QueueStore)), **settings)
    n = 40
    # What earlier tests left (connections still closing, their tasks) goes first: it
    # would be freed during the count and make it meaningless (negative).
    await asyncio.sleep(0.3)
    gc.collect()
    before = len(gc.get_objects())
    clients = []
    for _ in range(n):  # plain sockets: next to nothing of the client in the count
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n") if path == "/ws" else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n".encode())
        clients.append(sock)
    await wait_until(lambda: len(store.subscribers) == n)
    await asyncio.sleep(0.1)  # the response state goes on the next loop iteration
    gc.collect()
    per_subscriber = (len(gc.get_objects()) - before) / n
    for sock in clients:
        sock.close()
    await wait_until(lambda: not store.subscribers)
    return per_subscriber


@pytest.mark.parametrize("path", ["/sse", "/ws"])
async def test_an_idle_detached_subscriber_is_a_few_objects(serve, path):
    """Memory per idle subscriber follows the objects it keeps (and the collector walks
    them all, again and again): 70 (SSE) and 82 (WS) GC-tracked objects each while
    Tornado kept the connection, about 20 detached."""
    kept = await _objects_per_idle_subscriber(serve, path, tornadose_detach_streams=False)
    detached = await _objects_per_idle_subscriber(serve, path)
    assert detached < 30 and detached < kept / 2, (detached, kept)


async def test_handlers_that_need_tornado_keep_it(serve):
    """A subclass overriding a lifecycle hook, or the setting turned off, keeps
    Tornado's connection; its hooks run as before."""
    closed: list[str] = []

    class Hooked(WebSocketSubscriber):
        def on_close(self) -> None:
            closed.append("ws")
            super().on_close()

    class HookedSSE(EventSource):
        def on_connection_close(self) -> None:
            closed.append("sse")
            super().on_connection_close()

    store = QueueStore()
    port = await serve([(r"/ws", Hooked, {"store": store}), (r"/sse", HookedSSE, {"store": store})])
    ws = await TornadoWS.connect(port, "/ws")
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 2)
    assert all(h._raw is None and h.request.connection is not None for h in store.subscribers)
    store.submit("x")
    assert await ws.read(1) == ["x"] and [e.data for e in await sse.read_events(1)] == ["x"]
    ws.conn.close()
    sse.close_fin()
    await wait_until(lambda: sorted(closed) == ["sse", "ws"])

    other = QueueStore()
    port = await serve(routes(other, TopicRegistry(QueueStore)), tornadose_detach_streams=False)
    ws = await TornadoWS.connect(port, "/ws")
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(other.subscribers) == 2)
    assert all(h._raw is None for h in other.subscribers)
    ws.conn.close()
    sse.close_fin()


async def test_bytes_an_sse_client_sends_are_ignored(serve):
    store = QueueStore()
    port = await serve(routes(store, TopicRegistry(QueueStore)))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    client.writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(100_000))
    await asyncio.sleep(0.1)
    store.submit("still here")
    assert [e.data for e in await client.read_events(1)] == ["still here"]
    assert len(store.subscribers) == 1
    client.close_fin()


# -- RFC 6455 on a detached WebSocket ---------------------------------------------------

PING, PONG, CLOSE, TEXT, CONT = 0x9, 0xA, 0x8, 0x1, 0x0


@pytest.fixture
async def wsport(serve):
    registry = TopicRegistry(QueueStore)
    registry.submit("A", "a0")
    store = QueueStore()
    port = await serve(routes(store, registry))
    return port, store, registry


async def test_ping_gets_a_pong_with_its_payload(wsport):
    port, store, _ = wsport
    client = await Frames.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)
    client.send(PING, b"are you there")
    assert await client.read() == (PONG, b"are you there")


async def test_client_close_is_echoed_then_the_socket_closes(wsport):
    port, store, _ = wsport
    client = await Frames.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)
    (handler,) = store.subscribers
    client.send(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert close_code(await client.read_until(CLOSE)) == 1000
    assert await client.eof()
    await wait_until(lambda: not store.subscribers)
    assert (handler.close_code, handler.close_reason) == (1000, "bye")


async def test_a_fragmented_subscribe_with_a_ping_inside_applies(wsport):
    port, _, registry = wsport
    client = await Frames.connect(port, "/tws")
    await wait_until(lambda: registry.connections == 1)
    request = json.dumps({"subscribe": ["A"]}).encode()
    client.send(TEXT, request[:5], fin=False)
    client.send(PING, b"p")
    client.send(CONT, request[5:12], fin=False)
    client.send(CONT, request[12:])
    assert await client.read() == (PONG, b"p")
    opcode, payload = await client.read()
    assert opcode == TEXT and json.loads(payload) == {
        "event": "tornadose-subscribed", "data": {"topics": ["A"]}}
    registry.submit("A", "a1")
    opcode, payload = await client.read()
    assert json.loads(payload)["data"] == "a1"


async def test_a_subscribe_sent_with_the_upgrade_request_is_read(wsport):
    """Bytes that arrive with the request (read ahead by Tornado) are not lost."""
    port, _, registry = wsport
    request = Frames.frame(TEXT, json.dumps({"subscribe": ["A"]}).encode())
    client = await Frames.connect(port, "/tws", first=request)
    opcode, payload = await client.read()
    assert json.loads(payload)["event"] == "tornadose-subscribed"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frames.frame(TEXT, b"hello", masked=False), 1002),  # clients must mask
        # over 64 KiB: refused from its header, before any payload
        (Frames.frame(TEXT, b"x", length=70_000)[:14], 1009),
        (Frames.frame(TEXT, b"\xff\xfe"), 1007),  # not UTF-8
        (Frames.frame(0x3, b"?"), 1002),  # reserved opcode
        (Frames.frame(CONT, b"orphan"), 1002),  # continuation of nothing
        (Frames.frame(PING, b"x" * 126), 1002),  # control frame too long
        (Frames.frame(CLOSE, struct.pack("!H", 1005)), 1002),  # a code that may not be sent
    ],
    ids=["unmasked", "too-big", "bad-utf8", "reserved-opcode", "orphan-continuation",
         "long-ping", "bad-close-code"],
)
async def test_protocol_errors_close_with_their_code(wsport, frame, code):
    port, store, _ = wsport
    client = await Frames.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)
    client.writer.write(frame)
    assert close_code(await client.read_until(CLOSE)) == code
    assert await client.eof()
    await wait_until(lambda: not store.subscribers)


async def test_server_close_comes_after_queued_data_and_waits_for_the_answer(wsport):
    port, store, _ = wsport
    client = await Frames.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("last words")
    store.close()
    opcode, payload = await client.read()
    assert opcode == TEXT and json.loads(payload)["data"] == "last words"
    opcode, payload = await client.read()
    assert opcode == CLOSE and close_code(payload) == 1001
    await asyncio.sleep(0.1)
    assert not client.reader.at_eof(), "the server waits for the client's close frame"
    client.send(CLOSE, payload[:2])
    assert await client.eof()


async def test_ping_interval_pings_and_drops_a_silent_client(serve):
    store = QueueStore()
    port = await serve(routes(store, TopicRegistry(QueueStore)),
                       websocket_ping_interval=0.1, websocket_ping_timeout=0.1)
    answering = await Frames.connect(port, "/ws")
    silent = await Frames.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    for _ in range(5):  # a client that answers stays
        payload = await answering.read_until(PING, timeout=2)
        answering.send(PONG, payload)
    await silent.read_until(PING, timeout=2)  # this one never answers: dropped
    assert await silent.eof(timeout=3)
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("x")
    assert json.loads(await answering.read_until(TEXT))["data"] == "x"


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /sse HTTP/1.1\r\nHost: x\r\n",
        b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        b"GET /sse HTTP/1.0\r\n",
        b"GET /sse HTTP/1.0\r\nConnection: keep-alive\r\n",
    ],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive"],
)
async def test_a_detached_sse_response_starts_with_the_bytes_tornado_sends(serve, request_head):
    """The detached path writes the status line, headers and retry hint itself: the
    same bytes as Tornado's own path (the Date header aside)."""
    heads = []
    for detach in (False, True):
        port = await serve(routes(QueueStore(), TopicRegistry(QueueStore)),
                           tornadose_detach_streams=detach, sse_retry_jitter=0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_head + b"\r\n")
        data = await reader.readuntil(b"retry: 2000\n\n")
        heads.append([line for line in data.split(b"\r\n") if not line.startswith(b"Date:")])
        writer.close()
    assert heads[0] == heads[1]
    assert heads[1][0] == b"HTTP/1.1 200 OK"


async def test_the_date_header_is_the_current_second_formatted_as_tornado_does(serve):
    """The Date header is formatted once a second (tornadose.transport.http.http_date), not per
    request: every response still carries the second it was answered in."""
    port = await serve(routes(QueueStore(), TopicRegistry(QueueStore)))
    for path in ("/sse", "/ws", "/tsse?topics=A"):
        before = int(time.time())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if path == "/ws" else b""
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n%b\r\n" % (path.encode(), upgrade))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        after = int(time.time())
        (date,) = [line[6:].decode() for line in head.split(b"\r\n") if line.startswith(b"Date: ")]
        assert date in {format_timestamp(t) for t in range(before, after + 1)}, (path, date)
        writer.close()


class _SummaryCounted(EventSource):
    summaries = 0

    def _request_summary(self) -> str:
        type(self).summaries += 1
        return super()._request_summary()


@pytest.mark.parametrize("setting", ["info", "warning", "log_function"])
async def test_an_opening_stream_is_logged_only_where_a_log_is_written(serve, caplog, setting):
    """A detached SSE stream is logged as it opens, as Tornado would log the request:
    one access-log line when ``tornado.access`` takes INFO records, the application's
    ``log_function`` when it has one; when nothing would be written, the line is not even
    formatted (it costs every new subscriber otherwise)."""
    _SummaryCounted.summaries = 0
    called = []
    settings = {"log_function": called.append} if setting == "log_function" else {}
    store = QueueStore()
    port = await serve([(r"/sse", _SummaryCounted, {"store": store})], **settings)
    caplog.set_level(logging.INFO if setting == "info" else logging.WARNING, "tornado.access")
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    (handler,) = store.subscribers
    assert handler._raw is not None, "the stream is detached"
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    if setting == "info":
        assert len(lines) == 1 and lines[0].startswith("200 GET /sse") and handler.summaries == 1
    elif setting == "warning":
        assert lines == [] and handler.summaries == 0
    else:
        assert called == [handler] and lines == []
    client.close_fin()
    await wait_until(lambda: not store.subscribers)


class _CookieSetting(EventSource):
    def prepare(self) -> None:
        self.set_cookie("session", "abc")
        super().prepare()


async def test_a_response_that_sets_a_cookie_keeps_tornados_head(serve):
    """A handler that set a cookie before the stream opened gets its Set-Cookie header:
    such a head is left to Tornado (the detached head has only plain headers)."""
    store = QueueStore()
    port = await serve([(r"/sse", _CookieSetting, {"store": store})])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"\r\nSet-Cookie: session=abc" in head, head
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("tick")
    body = await asyncio.wait_for(reader.readuntil(b"data: tick\n\n"), 5)
    assert b"data: tick" in body
    writer.close()
    await wait_until(lambda: not store.subscribers)
