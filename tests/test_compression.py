"""Compressed streams: gzip'd SSE and permessage-deflate WebSockets, decoded by real clients.

Everything a client receives is decoded by something this project did not write: the
`zlib` module's own inflater on raw bytes (an independent decoder of both deflate
streams), the `websockets` library and Tornado's client with their permessage-deflate,
and headless Chromium (see ``test_chromium_decodes_gzip_sse_and_permessage_deflate``).
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import random
import struct
import zlib

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from hypothesis import given, settings
from hypothesis import strategies as st

from tornadose.core.deflate import GZIP, WEBSOCKET, Compression, compression_options
from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import DataStore, QueueStore
from tornadose.topics import TopicRegistry
from tornadose.transport.permessage import negotiate
from tornadose.transport.wsproto import data_frame

from .helpers import LoopThread, TornadoWS, wait_until
from .sseclient import RawSSEClient
from .test_browser import launched_chromium

TRAILER = b"\x00\x00\xff\xff"


def _deflaters():
    twins = [importlib.import_module("tornadose.core._deflate_py").Deflater]
    try:
        twins.append(importlib.import_module("tornadose.core._deflate_c").Deflater)
    except ImportError:
        pass  # pure-Python only: the compiled twin is tested where it is built
    return twins


def tick(seq: int, rnd: random.Random) -> dict:
    price = round(100 + rnd.gauss(0, 5), 2)
    return {"seq": seq, "symbol": f"S{seq % 7:03d}", "price": price,
            "change": round(price - 100, 2), "time": 1733241600.0 + seq / 1000}


def ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of each unmasked server frame in ``data``."""
    frames, pos = [], 0
    while pos < len(data):
        first, length = data[pos], data[pos + 1] & 0x7F
        head = 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos + 2)
            head = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos + 2)
            head = 10
        frames.append((first, data[pos + head:pos + head + length]))
        pos += head + length
    assert pos == len(data), "a frame was cut"
    return frames


# -- the codecs, both backends -----------------------------------------------------------

messages = st.lists(
    st.one_of(
        st.binary(max_size=400),
        st.sampled_from([b'{"price":101.25,"symbol":"AAPL"}', b"x" * 3000, b"abc" * 30000]),
        st.text(max_size=200).map(str.encode),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("Deflater", _deflaters(), ids=lambda d: d.__module__.rsplit(".", 1)[1])
@settings(max_examples=60, deadline=None)
@given(writes=st.lists(messages, min_size=1, max_size=6), bits=st.integers(9, 14),
       level=st.integers(1, 9), context=st.booleans())
def test_each_websocket_message_decodes_to_what_was_framed(Deflater, writes, bits, level, context):
    codec = Deflater(WEBSOCKET, bits, level, context)
    decoder = zlib.decompressobj(-15)
    for write in writes:
        out = codec.pack([data_frame(m) for m in write])
        got = []
        for first, payload in ws_frames(out):
            assert first == 0xC1, "a compressed text frame: FIN, RSV1, text"
            if not context:  # server_no_context_takeover: each message stands alone
                decoder = zlib.decompressobj(-15)
            got.append(decoder.decompress(payload + TRAILER))
        assert got == write


@pytest.mark.parametrize("Deflater", _deflaters(), ids=lambda d: d.__module__.rsplit(".", 1)[1])
@settings(max_examples=60, deadline=None)
@given(writes=st.lists(messages, min_size=1, max_size=6), bits=st.integers(9, 14))
def test_a_gzip_stream_decodes_after_every_write_and_ends_with_a_valid_trailer(
    Deflater, writes, bits
):
    codec = Deflater(GZIP, bits, 3)
    decoder = zlib.decompressobj(16 + 15)
    for write in writes:
        # Everything of a write decodes at once: the sync flush.
        assert decoder.decompress(codec.pack(write)) == b"".join(write)
    assert decoder.decompress(codec.finish()) == b""
    assert decoder.eof and decoder.unused_data == b"", "the CRC-32 and size were checked"
    assert codec.finish() == b""


def test_both_backends_decode_to_identical_streams():
    twins = _deflaters()
    if len(twins) < 2:
        pytest.skip("compiled backend not built")
    rnd = random.Random(5)
    turns = [[json.dumps(tick(i * 10 + k, rnd)).encode() for k in range(rnd.randint(1, 10))]
             for i in range(50)]
    streams = []
    for Deflater in twins:
        gz, ws = Deflater(GZIP), Deflater(WEBSOCKET)
        g, w = zlib.decompressobj(31), zlib.decompressobj(-15)
        text, msgs = b"", []
        for turn in turns:
            text += g.decompress(gz.pack(turn))
            msgs += [w.decompress(p + TRAILER) for _, p in ws_frames(ws.pack(
                [data_frame(m) for m in turn]))]
        text += g.decompress(gz.finish())
        assert g.eof
        streams.append((text, msgs))
        # Small ticks with context: a third of their size or less.
        assert ws.bytes_out < 0.5 * ws.bytes_in and gz.bytes_out < 0.5 * gz.bytes_in
    assert streams[0] == streams[1]


def test_control_frames_pass_uncompressed():
    for Deflater in _deflaters():
        ping = b"\x89\x02hi"
        out = Deflater(WEBSOCKET).pack([ping, data_frame(b"x")])
        assert out.startswith(ping) and ws_frames(out[4:])[0][0] == 0xC1


def test_settings_are_validated_with_a_clear_error():
    assert compression_options(None) is None and compression_options(False) is None
    assert compression_options(True) == Compression()
    assert compression_options({"window_bits": 12}).window_bits == 12
    with pytest.raises(ValueError, match="window_bits must be an integer 9 to 14"):
        compression_options({"window_bits": 15})
    with pytest.raises(ValueError, match="unknown compression option.*'level'"):
        compression_options({"level": 6})
    with pytest.raises(TypeError, match="compression must be"):
        compression_options("gzip")
    for Deflater in _deflaters():
        with pytest.raises(ValueError):
            Deflater(7)


def test_negotiation_follows_rfc_7692():
    assert negotiate(None, 11) is None
    assert negotiate("x-webkit-deflate-frame", 11) is None
    plain = negotiate("permessage-deflate; client_max_window_bits", 11)
    assert plain.response == "permessage-deflate; client_no_context_takeover"
    assert (plain.window_bits, plain.context) == (11, True)
    asked = negotiate(
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", 11)
    assert asked.response == ("permessage-deflate; server_no_context_takeover; "
                              "client_no_context_takeover; server_max_window_bits=10")
    assert (asked.window_bits, asked.context) == (10, False)
    assert negotiate("permessage-deflate; server_max_window_bits=15", 11).window_bits == 11
    # Unacceptable offers are declined, the next acceptable one is taken.
    assert negotiate("permessage-deflate; server_max_window_bits=8", 11) is None
    assert negotiate("permessage-deflate; bogus", 11) is None
    assert negotiate("permessage-deflate; server_no_context_takeover=1", 11) is None
    assert negotiate("permessage-deflate; client_max_window_bits=16", 11) is None
    two = negotiate("permessage-deflate; foo, permessage-deflate; server_no_context_takeover", 11)
    assert two is not None and not two.context


# -- SSE over a real server ------------------------------------------------------------------

GZIP_HEADERS = {"Accept-Encoding": "gzip, deflate, br"}


async def test_gzip_sse_delivers_every_event_exactly_and_ends_the_member(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})], tornadose_compression=True)
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=GZIP_HEADERS)
    assert client.headers["content-encoding"] == "gzip"
    assert client.headers["vary"] == "Accept-Encoding"
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    rnd = random.Random(1)
    sent = [tick(i, rnd) for i in range(400)]
    for i in range(0, 400, 40):  # ten turns of forty
        for message in sent[i:i + 40]:
            store.submit(message)
        await asyncio.sleep(0.01)
    events = await client.read_events(400)
    assert [json.loads(e.data) for e in events] == sent
    raw = sum(len(f"id: {e.id}\ndata: {e.data}\n\n") for e in events)
    assert client.bytes_received < 0.5 * raw, (client.bytes_received, raw)
    store.close()
    await client.read_until_closed()
    assert client.gunzip.eof, "the gzip member ended with its trailer (CRC-32 checked)"


async def test_a_compressed_reader_that_falls_behind_catches_up_exactly(serve):
    """The drain path: a client that stops reading while thousands of ticks go by (its
    socket fills, the connection waits for its drain and is caught up from the log)
    still decodes every event, in order, from one gzip stream."""
    store = QueueStore(capacity=20_000)
    port = await serve([(r"/sse", EventSource, {"store": store})], tornadose_compression=True)
    slow = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=GZIP_HEADERS,
                                      rcvbuf=4096, limit=4096)
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    rnd = random.Random(6)
    # Random hex does not compress: 6 MB, more than the socket buffers take.
    sent = [{**tick(i, rnd), "noise": os.urandom(150).hex()} for i in range(20_000)]
    for i in range(0, len(sent), 200):
        for message in sent[i:i + 200]:
            store.submit(message)
        await asyncio.sleep(0)
    (handler,) = store.subscribers
    assert not handler._tornadose_sink.live, "the reader fell behind"
    events = await slow.read_events(len(sent), timeout=60)
    assert [json.loads(e.data) for e in events] == sent
    slow.close_fin()


async def test_without_accept_encoding_the_bytes_are_exactly_the_uncompressed_ones(serve):
    store = DataStore(initial_data={"p": 1})
    handlers = [(r"/on", EventSource, {"store": store, "compression": True}),
                (r"/off", EventSource, {"store": store})]
    port = await serve(handlers, sse_retry_jitter=0)
    on = await RawSSEClient.connect("127.0.0.1", port, "/on")
    off = await RawSSEClient.connect("127.0.0.1", port, "/off")
    refused = await RawSSEClient.connect("127.0.0.1", port, "/on",
                                         headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in on.headers and "content-encoding" not in refused.headers
    assert on.headers["vary"] == "Accept-Encoding" and "vary" not in off.headers
    await wait_until(lambda: len(store.subscribers) == 3, what="subscribed")
    for i in range(20):
        store.submit({"p": i, "text": "line\nbreak"})
        await asyncio.sleep(0.002)
    bodies = []
    for client in (on, off, refused):
        await client.read_events(21)
        bodies.append(client.bytes_received)
    store.close()
    ends = [await client.read_until_closed() for client in (on, off, refused)]
    assert bodies[0] == bodies[1] == bodies[2] and ends == [[], [], []]


async def test_resuming_a_dropped_compressed_stream_is_exact(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})], tornadose_compression=True)
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=GZIP_HEADERS)
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    for i in range(50):
        store.submit({"n": i})
    seen = await first.read_events(30)
    first.close_rst()
    await wait_until(lambda: not store.subscribers, what="dropped")
    for i in range(50, 80):
        store.submit({"n": i})
    again = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse", headers={**GZIP_HEADERS, "Last-Event-ID": seen[-1].id})
    rest = await again.read_events(50)
    assert [json.loads(e.data)["n"] for e in seen + rest] == list(range(80))
    again.close_fin()


async def test_topic_sse_is_compressed_across_topics(serve):
    registry = TopicRegistry(QueueStore)
    port = await serve([(r"/t", TopicEventSource, {"registry": registry, "compression": {
        "window_bits": 10, "mem_level": 2}})])
    client = await RawSSEClient.connect("127.0.0.1", port, "/t?topics=A,Q", headers=GZIP_HEADERS)
    assert client.headers["content-encoding"] == "gzip"
    await wait_until(lambda: registry.connections == 1, what="subscribed")
    for i in range(30):
        registry.submit("A", {"a": i})
        registry.submit("B", {"b": i})
        registry.submit("Q", {"q": i})
        if i % 5 == 0:
            await asyncio.sleep(0.001)
    events = await client.read_events(60)
    assert [(e.type, json.loads(e.data)) for e in events] == [
        pair for i in range(30) for pair in (("A", {"a": i}), ("Q", {"q": i}))]
    client.close_fin()


# -- WebSocket over a real server ------------------------------------------------------------


def ws_route(store):
    return [(r"/ws", WebSocketSubscriber, {"store": store})]


async def _raw_ws(port: int, path: str, extensions: str | None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 101"), head
    return reader, writer, head


async def _read_frames(reader, n: int) -> list[tuple[int, bytes]]:
    out = []
    while len(out) < n:
        first, second = await asyncio.wait_for(reader.readexactly(2), 10)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        out.append((first, await reader.readexactly(length)))
    return out


def _masked(first: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((first, 0x80 | len(payload))) + mask + body


async def test_raw_permessage_deflate_decodes_with_zlib_and_keeps_context(serve):
    store = QueueStore()
    port = await serve(ws_route(store), tornadose_compression=True)
    reader, writer, head = await _raw_ws(port, "/ws", "permessage-deflate; client_max_window_bits")
    assert "Sec-Websocket-Extensions: permessage-deflate; client_no_context_takeover" in head
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    rnd = random.Random(2)
    sent = [tick(i, rnd) for i in range(120)]
    for i in range(0, 120, 12):
        for message in sent[i:i + 12]:
            store.submit(message)
        await asyncio.sleep(0.005)
    decoder = zlib.decompressobj(-15)
    frames = await _read_frames(reader, 120)
    assert {first for first, _ in frames} == {0xC1}
    got = [json.loads(decoder.decompress(p + TRAILER))["data"] for _, p in frames]
    assert got == sent
    wire = sum(len(p) + 2 for _, p in frames)
    plain = sum(len(json.dumps({"id": "x" * 10, "data": m}, separators=(",", ":"))) + 2
                for m in sent)
    assert wire < 0.5 * plain, (wire, plain)
    writer.close()


async def test_resuming_a_dropped_compressed_websocket_is_exact(serve):
    from websockets.asyncio.client import connect

    store = QueueStore()
    port = await serve(ws_route(store), tornadose_compression=True)
    url = f"ws://127.0.0.1:{port}/ws"
    first = await connect(url, compression="deflate")
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    for i in range(50):
        store.submit({"n": i})
    seen = [json.loads(await asyncio.wait_for(first.recv(), 10)) for _ in range(30)]
    first.transport.abort()  # dropped, not closed
    await wait_until(lambda: not store.subscribers, what="dropped")
    for i in range(50, 80):
        store.submit({"n": i})
    async with connect(f"{url}?last_event_id={seen[-1]['id']}", compression="deflate") as again:
        assert "permessage-deflate" in again.response.headers["Sec-WebSocket-Extensions"]
        rest = [json.loads(await asyncio.wait_for(again.recv(), 10)) for _ in range(50)]
    assert [m["data"]["n"] for m in seen + rest] == list(range(80))


async def test_server_no_context_takeover_makes_every_message_stand_alone(serve):
    store = QueueStore()
    port = await serve(ws_route(store), tornadose_compression=True)
    reader, writer, head = await _raw_ws(
        port, "/ws", "permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
    assert "server_no_context_takeover" in head and "server_max_window_bits=9" in head
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    for i in range(20):
        store.submit({"same": "payload " * 4, "i": i})
    for i, (_, payload) in enumerate(await _read_frames(reader, 20)):
        message = zlib.decompressobj(-9).decompress(payload + TRAILER)
        assert json.loads(message)["data"]["i"] == i
    writer.close()


async def test_a_client_that_offers_nothing_gets_todays_frames_exactly(serve):
    store = QueueStore()
    handlers = [(r"/on", WebSocketSubscriber, {"store": store, "compression": True}),
                (r"/off", WebSocketSubscriber, {"store": store})]
    port = await serve(handlers)
    on = await _raw_ws(port, "/on", None)
    off = await _raw_ws(port, "/off", None)
    assert "Extensions" not in on[2]
    await wait_until(lambda: len(store.subscribers) == 2, what="subscribed")
    for i in range(30):
        store.submit({"i": i, "pad": "p" * i})
    assert await _read_frames(on[0], 30) == await _read_frames(off[0], 30)
    on[1].close()
    off[1].close()


@pytest.mark.parametrize("window", [None, 9])
async def test_websockets_library_decodes_everything(serve, window):
    from websockets.asyncio.client import connect
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    store = QueueStore()
    port = await serve(ws_route(store), tornadose_compression=True)
    factory = ClientPerMessageDeflateFactory(
        server_max_window_bits=window, server_no_context_takeover=window is not None)
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None,
                       extensions=[factory]) as conn:
        assert "permessage-deflate" in conn.response.headers["Sec-WebSocket-Extensions"]
        await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
        rnd = random.Random(3)
        sent = [tick(i, rnd) for i in range(200)] + ["x" * 70_000, "line\nbreak"]
        for message in sent:
            store.submit(message)
        got = [json.loads(await asyncio.wait_for(conn.recv(), 10))["data"] for _ in sent]
        assert got == sent


async def test_tornado_client_with_compression_decodes_everything(serve):
    store = DataStore(initial_data={"v": 0})
    port = await serve(ws_route(store), tornadose_compression=True)
    client = await TornadoWS.connect(port, "/ws", compression_options={})
    await wait_until(lambda: len(store.subscribers) == 1, what="subscribed")
    (handler,) = store.subscribers
    assert handler._tornadose_sink.codec is not None, "compressed on the detached path"
    for i in range(1, 40):
        store.submit({"v": i})
        await asyncio.sleep(0.001)
    values = [m["v"] for m in await client.read(5)]
    assert values == sorted(values) and values[0] == 0
    await client.close()


async def test_compressed_subscribe_requests_are_decoded(serve):
    from websockets.asyncio.client import connect

    registry = TopicRegistry()
    registry.submit("AAPL", {"p": 1})
    registry.submit("MSFT", {"p": 2})
    port = await serve([(r"/t", TopicWebSocketSubscriber, {"registry": registry})],
                       tornadose_compression=True)
    async with connect(f"ws://127.0.0.1:{port}/t", compression="deflate") as conn:
        # websockets compresses what it sends once permessage-deflate is agreed.
        await conn.send(json.dumps({"subscribe": ["AAPL"]}))
        replies = [json.loads(await asyncio.wait_for(conn.recv(), 10)) for _ in range(2)]
        assert {r.get("event") for r in replies} == {"tornadose-subscribed", "AAPL"}, replies
    # The same by hand: a compressed, fragmented request (RSV1 on the first frame only).
    reader, writer, _ = await _raw_ws(port, "/t", "permessage-deflate")
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = (z.compress(b'{"subscribe": ["MSFT"]}') + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    writer.write(_masked(0x41, body[:5]) + _masked(0x80, body[5:]))
    decoder = zlib.decompressobj(-15)
    frames = await _read_frames(reader, 2)
    replies = [json.loads(decoder.decompress(p + TRAILER)) for _, p in frames]
    assert {r.get("event") for r in replies} == {"tornadose-subscribed", "MSFT"}, replies
    writer.close()


@pytest.mark.allow_log_errors
async def test_a_client_that_lies_gets_1007_and_nothing_else_breaks(serve):
    store = QueueStore()
    port = await serve(ws_route(store), tornadose_compression=True)
    honest = await TornadoWS.connect(port, "/ws", compression_options={})
    reader, writer, _ = await _raw_ws(port, "/ws", "permessage-deflate")
    await wait_until(lambda: len(store.subscribers) == 2, what="subscribed")
    writer.write(_masked(0xC1, b"\xff\xfe garbage that is not deflate"))
    first, payload = (await _read_frames(reader, 1))[0]
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 1007
    # RSV2 is never agreed to: a protocol error.
    reader2, writer2, _ = await _raw_ws(port, "/ws", "permessage-deflate")
    writer2.write(_masked(0xA1, b"x"))
    first, payload = (await _read_frames(reader2, 1))[0]
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 1002
    await wait_until(lambda: len(store.subscribers) == 1, what="liars dropped")
    store.submit({"still": "here"})
    assert await honest.read(1) == [{"still": "here"}]
    await honest.close()
    writer.close()
    writer2.close()


async def test_a_compressed_message_over_the_limit_closes_with_1009(serve):
    store = QueueStore()
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})],
                       tornadose_compression=True, websocket_max_message_size=1000)
    reader, writer, _ = await _raw_ws(port, "/ws", "permessage-deflate")
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = (bomb.compress(b"a" * 20_000) + bomb.flush(zlib.Z_SYNC_FLUSH))[:-4]
    writer.write(_masked(0xC1, body))
    first, payload = (await _read_frames(reader, 1))[0]
    assert first == 0x88 and struct.unpack("!H", payload[:2])[0] == 1009
    writer.close()


# -- a real browser -------------------------------------------------------------------------


class _Blank(RequestHandler):
    def get(self) -> None:
        self.finish('<!doctype html><link rel="icon" href="data:,"><title>compression</title>')


class _CompressedServer(LoopThread):
    """A page, a gzip'd SSE store and a permessage-deflate WebSocket on a loop of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.store: QueueStore = self.call(QueueStore)
        self.port = self.call(self._listen)

    def _listen(self) -> int:
        sockets = bind_sockets(0, "127.0.0.1")
        app = Application([(r"/", _Blank), (r"/sse", EventSource, {"store": self.store}),
                           (r"/ws", WebSocketSubscriber, {"store": self.store})],
                          tornadose_compression=True)
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        return sockets[0].getsockname()[1]

    def codecs(self) -> list[str]:
        return sorted(type(s.codec).__name__ + str(s.format) for s in self.store._fanout._sinks
                      if s.codec is not None)

    def stop(self) -> None:
        async def close() -> None:
            self.store.close()
            self.server.stop()
            await self.server.close_all_connections()

        self.call(close)
        self.close()


def test_chromium_decodes_gzip_sse_and_permessage_deflate():
    """Headless Chromium's EventSource (Accept-Encoding: gzip) and WebSocket (offering
    permessage-deflate) receive exactly what was submitted, in order, both compressed."""
    server = _CompressedServer()
    try:
        for browser in launched_chromium():
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.evaluate("""() => {
                window.sse = []; window.ws = []; window.open = 0;
                const es = new EventSource('/sse');
                es.onopen = () => { window.open += 1; };
                es.onmessage = (e) => {  // a str message is its own text on SSE
                    try { window.sse.push(JSON.parse(e.data)); } catch { window.sse.push(e.data); }
                };
                const sock = new WebSocket(`ws://${location.host}/ws`);
                sock.onopen = () => { window.open += 1; };
                sock.onmessage = (e) => window.ws.push(JSON.parse(e.data).data);
            }""")
            page.wait_for_function("window.open === 2")
            server.call(wait_until, lambda: len(server.store.subscribers) == 2)
            assert len(server.codecs()) == 2, "both streams compressed"
            rnd = random.Random(4)
            sent = [tick(i, rnd) for i in range(300)] + ["x" * 70_000, "é\nline two"]

            async def publish() -> None:
                for i in range(0, len(sent), 25):
                    for message in sent[i:i + 25]:
                        server.store.submit(message)
                    await asyncio.sleep(0.005)

            server.call(publish)
            page.wait_for_function(f"window.sse.length >= {len(sent)} && "
                                   f"window.ws.length >= {len(sent)}")
            assert page.evaluate("window.ws") == sent
            assert page.evaluate("window.sse") == sent
    finally:
        server.stop()
