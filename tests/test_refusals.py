"""Refusals that cost little and say it once (tornadose.transport.refusals).

A real Tornado server on loopback, raw sockets as clients: refusals are counted per
cause, logged when their cause starts and then at most once per interval as a summary,
never one access-log record each; a ``tornadose.listen`` server within its descriptor
headroom answers a minimal 503 at accept, before any request or handler exists; the
WebSocket 101 goes out in one send().
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

import tornadose
from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    WebSocketSubscriber,
    access_log_without,
)
from tornadose.stores import QueueStore
from tornadose.topics import TopicRegistry
from tornadose.transport import refusals

from .helpers import wait_until
from .sseclient import RawSSEClient
from .test_browser import launched_chromium
from .test_origins import _ServerThread

pytestmark = pytest.mark.allow_log_errors

UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_sustained_flood_over_max_subscribers_is_one_record_per_interval(serve, caplog):
    """Connections beyond ``max_subscribers`` for 3 s at a few hundred a second, with
    a 0.5 s summary interval: one record when the refusals start, then at most one per
    interval, each with its count; every refusal counted in stats(); no access-log
    record per refusal."""
    store = QueueStore(max_subscribers=1)
    port = await serve([(r"/sse", EventSource, {"store": store})],
                       tornadose_refusal_log_interval=0.5)
    steady = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    refused = 0
    start = time.monotonic()
    while time.monotonic() - start < 3:
        clients = await asyncio.gather(
            *(RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(20))
        )
        for client in clients:
            assert client.status == 503 and 2 <= int(client.headers["retry-after"]) <= 10
            client.close_fin()
        refused += len(clients)
    await asyncio.sleep(0.7)  # the last interval's summary
    assert refused > 300 and store.stats()["rejected"] == refused
    records = warnings_of(caplog)
    assert all(r.name == "tornadose.refusals" for r in records), records
    assert 2 <= len(records) <= 1 + 3.7 / 0.5 + 1, [r.getMessage() for r in records]
    assert "refusing subscribers: max_subscribers" in records[0].getMessage()
    summed = sum(int(r.getMessage().split("refused ")[1].split()[0].replace(",", ""))
                 for r in records[1:])
    assert summed == refused - 1  # the first is the record that opened the window
    gaps = [b.created - a.created for a, b in zip(records[1:], records[2:])]
    assert all(gap >= 0.45 for gap in gaps), gaps
    steady.close_fin()


async def test_refusals_can_keep_their_access_log_records(serve, caplog):
    """``tornadose_quiet_refusals=False``: every 503 keeps Tornado's access-log record."""
    store = QueueStore(max_subscribers=1)
    port = await serve([(r"/sse", EventSource, {"store": store})], tornadose_quiet_refusals=False)
    steady = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    for _ in range(3):
        (await RawSSEClient.connect("127.0.0.1", port, "/sse")).close_fin()
    access = [r for r in caplog.records if r.name == "tornado.access" and "503" in r.getMessage()]
    assert len(access) == 3
    steady.close_fin()


@pytest.fixture
async def shedding_server():
    """A tornadose server whose every new connection is within its descriptor headroom
    (the headroom setting is larger than the limit): each one is shed at accept."""
    store = QueueStore()
    app = Application([(r"/sse", EventSource, {"store": store})],
                      tornadose_fd_headroom=1 << 30)
    server = tornadose.make_server(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    yield sockets[0].getsockname()[1], store
    server.stop()


async def test_within_the_headroom_a_connection_gets_a_minimal_503_at_accept(
    shedding_server, caplog
):
    port, store = shedding_server
    before = refusals.counts().get("open-files headroom", 0)
    for _ in range(5):
        client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
        assert client.status == 503
        assert 2 <= int(client.headers["retry-after"]) <= 10
        assert client.headers["connection"] == "close"
        assert await client.read_body() == b"server busy: too close to its open-files limit\n"
        client.close_fin()
    # Shed before Tornado: no request reached a handler or a store, nothing logged per
    # connection.
    assert refusals.counts()["open-files headroom"] - before == 5
    assert store.stats()["rejected"] == 0 and not store.subscribers
    assert not [r for r in caplog.records if r.name == "tornado.access"]
    assert len([r for r in warnings_of(caplog) if r.name == "tornadose.refusals"]) <= 1


async def test_a_shed_connection_is_closed_without_a_reset(shedding_server):
    """The server reads what the client sends before closing: the client gets the 503
    and an orderly end of stream (FIN), even when its request arrives after the
    answer."""
    port, _ = shedding_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)  # the 503 is out before the request is even sent
    writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # to EOF: a reset would raise
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    writer.close()


class _CountedFlush(WebSocketSubscriber):
    flushes = 0

    def flush(self, *args, **kwargs):
        type(self).flushes += 1
        return super().flush(*args, **kwargs)


async def test_the_websocket_101_is_tornados_bytes_in_one_send(serve):
    """The detached handshake writes the 101 itself, without Tornado's write path
    (no flush), with the same bytes as Tornado's own handshake (the Date aside)."""
    heads = []
    for detach in (False, True):
        _CountedFlush.flushes = 0
        store = QueueStore()
        port = await serve([(r"/ws", _CountedFlush, {"store": store})],
                           tornadose_detach_streams=detach)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n%b\r\n" % UPGRADE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        heads.append([line for line in head.split(b"\r\n") if not line.startswith(b"Date:")])
        await wait_until(lambda store=store: len(store.subscribers) == 1)
        assert (_CountedFlush.flushes == 0) is detach
        store.submit("x")
        assert (await asyncio.wait_for(reader.readexactly(1), 5)) == b"\x81"  # a text frame
        writer.close()
    assert heads[0] == heads[1]
    assert heads[1][0] == b"HTTP/1.1 101 Switching Protocols"


def test_refusals_without_a_loop_are_counted_and_logged(caplog):
    """Outside a running loop (nothing could summarize later) every start is logged."""
    before = refusals.counts().get("test cause", 0)
    refusals.refused("test cause", "thing", "detail")
    refusals.refused("test cause", "thing", "detail")
    assert refusals.counts()["test cause"] - before == 2
    assert len([r for r in caplog.records if "test cause" in r.getMessage()]) == 2


async def test_topics_refused_at_the_registry_limit_say_it_once(serve, caplog):
    registry = TopicRegistry(QueueStore, max_subscribers=1)
    port = await serve([(r"/sse", TopicEventSource, {"registry": registry})])
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A")
    await wait_until(lambda: registry.connections == 1)
    for _ in range(10):
        client = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=B")
        assert client.status == 503
        client.close_fin()
    assert registry.stats()["rejected"] == 10
    records = warnings_of(caplog)
    assert [r.name for r in records] == ["tornadose.refusals"], records
    first.close_fin()


class _Page(RequestHandler):
    def get(self) -> None:
        # Closed after the page, so that the stream's request comes on a connection of
        # its own (accepted once the server is within its headroom).
        self.set_header("Connection", "close")
        self.finish("<!doctype html><title>shed</title><p>page</p>")


class _ShedServerThread(_ServerThread):
    """A tornadose server, page and stream on one port, on a loop of its own; the test
    moves it in and out of its descriptor headroom with the setting."""

    def _listen(self) -> int:
        self.app = Application([(r"/", _Page), (r"/sse", EventSource, {"store": self.store})])
        self.server = tornadose.listen(self.app, 0, "127.0.0.1")
        self.ticker = PeriodicCallback(lambda: self.store.submit(time.time()), 50)
        self.ticker.start()
        return next(iter(self.server._sockets.values())).getsockname()[1]


@pytest.fixture
def chromium() -> Iterator[Any]:
    yield from launched_chromium()


def test_chromium_treats_a_503_shed_at_accept_as_a_failed_stream(chromium):
    """A browser's EventSource given the 503 of a server within its headroom (written
    at accept; tests above read its bytes) fails the stream (error event, readyState
    CLOSED): a valid HTTP answer, not a network error to retry at once. Out of the
    headroom again, a new EventSource streams."""
    server = _ShedServerThread()
    try:
        context = chromium.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"http://127.0.0.1:{server.port}/")
        before = refusals.counts().get("open-files headroom", 0)
        server.call(server.app.settings.__setitem__, "tornadose_fd_headroom", 1 << 30)
        page.evaluate("""() => { window.es = new EventSource('/sse'); window.got = [];
            window.errors = 0; es.onmessage = (e) => got.push(e.data);
            es.onerror = () => { window.errors += 1; }; }""")
        page.wait_for_function("window.errors >= 1")
        page.wait_for_timeout(500)
        assert page.evaluate("es.readyState") == 2  # CLOSED: the browser gave up
        assert page.evaluate("window.got") == []
        # Refused at accept on a new connection; Chromium may also send the stream's
        # request on a spare connection it opened before the switch, which the handler
        # then refuses the same way (same cause, same 503): either is this cause's.
        assert refusals.counts()["open-files headroom"] - before >= 1
        server.call(server.app.settings.pop, "tornadose_fd_headroom")
        page.evaluate("""() => { window.es2 = new EventSource('/sse'); window.got2 = [];
            es2.onmessage = (e) => got2.push(e.data); }""")
        page.wait_for_function("window.got2.length >= 2")
        context.close()
    finally:
        server.stop()


async def test_entitlement_refusals_can_be_kept_out_of_the_access_log(serve, caplog):
    """``access_log_without(403)``: Tornado's access log less the 403s; the rest keeps
    its records and levels."""

    class Denying(EventSource):
        def prepare(self) -> None:
            if self.get_query_argument("user", "") != "alice":
                raise HTTPError(403)
            super().prepare()

    store = QueueStore()
    port = await serve([(r"/sse", Denying, {"store": store})],
                       log_function=access_log_without(403))
    denied = await RawSSEClient.connect("127.0.0.1", port, "/sse?user=mallory")
    missing = await RawSSEClient.connect("127.0.0.1", port, "/nowhere")
    assert (denied.status, missing.status) == (403, 404)
    access = [(r.levelname, r.getMessage().split()[0]) for r in caplog.records
              if r.name == "tornado.access"]
    assert access == [("WARNING", "404")]
    denied.close_fin()
    missing.close_fin()


async def test_prometheus_counts_refusals_by_cause(shedding_server):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from tornadose.metrics import install

    port, _ = shedding_server
    registry = CollectorRegistry()
    install(registry)
    (await RawSSEClient.connect("127.0.0.1", port, "/sse")).close_fin()
    text = generate_latest(registry).decode()
    (line,) = [x for x in text.splitlines()
               if x.startswith('tornadose_refused_total{cause="open-files headroom"}')]
    assert float(line.split()[-1]) == refusals.counts()["open-files headroom"] >= 1
