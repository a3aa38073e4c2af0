"""Delivery guarantees under hostile conditions: resume, gaps, slow and half-open
clients, heartbeats, shutdown, limits. Real server, real clients."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

import tornadose
from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import GAP_EVENT, DataStore, QueueStore

from .helpers import LibWS, TornadoWS, server_stream, wait_until
from .rawws import RawWS
from .sseclient import RawSSEClient


def routes(store, **sse_kwargs):
    return [(r"/sse", EventSource, {"store": store, **sse_kwargs}), (r"/ws", WebSocketSubscriber, {"store": store})]


class Feed:
    """Submits numbered messages, ``per_iteration`` per loop iteration, until stopped."""

    def __init__(self, store, total: int, per_iteration: int = 20) -> None:
        self.store, self.total, self.per_iteration, self.sent = store, total, per_iteration, 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.sent < self.total:
            for _ in range(min(self.per_iteration, self.total - self.sent)):
                self.store.submit({"n": self.sent})
                self.sent += 1
            await asyncio.sleep(0.001)


# -- resume -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resume_after_a_drop_mid_stream_is_exact(serve, how):
    store = QueueStore()
    port = await serve(routes(store))
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    feed = Feed(store, 3000)
    events = await first.read_events(500)
    first.close_rst()
    await asyncio.sleep(0.05)  # messages keep flowing while it is away
    last = events[-1].id
    if how == "header":
        second = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": last})
    else:
        second = await RawSSEClient.connect("127.0.0.1", port, f"/sse?last_event_id={quote(last)}")
    await feed.task
    events += await second.read_events(3000 - len(events), timeout=20)
    assert [json.loads(e.data)["n"] for e in events] == list(range(3000))
    assert store.stats()["resumed"] == 1 and store.stats()["gaps"] == 0
    second.close_fin()


async def test_header_wins_over_a_stale_query_parameter(serve):
    store = QueueStore()
    port = await serve(routes(store))
    for i in range(5):
        store.submit(i)
    stale, newer = store._event_id(1).decode(), store._event_id(3).decode()
    client = await RawSSEClient.connect(
        "127.0.0.1", port, f"/sse?last_event_id={stale}", headers={"Last-Event-ID": newer}
    )
    assert [e.data for e in await client.read_events(1)] == ["3"]
    client.close_fin()


@pytest.mark.parametrize("client_cls", [TornadoWS, LibWS], ids=["tornado", "websockets"])
async def test_websocket_resume_with_query_parameter_shares_sse_ids(serve, client_cls):
    store = QueueStore()
    port = await serve(routes(store))
    ws = await client_cls.connect(port, "/ws")
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 2)
    feed = Feed(store, 2000)
    got = [json.loads(await asyncio.wait_for(_ws_recv(ws), 10)) for _ in range(300)]
    sse_events = await sse.read_events(300)
    assert [g["id"] for g in got] == [e.id for e in sse_events]
    await ws.close()
    await asyncio.sleep(0.05)
    again = await client_cls.connect(port, f"/ws?last_event_id={got[-1]['id']}")
    await feed.task
    got += [json.loads(await asyncio.wait_for(_ws_recv(again), 10)) for _ in range(2000 - 300)]
    assert [g["data"]["n"] for g in got] == list(range(2000))
    await again.close()
    sse.close_fin()


async def _ws_recv(client):
    if isinstance(client, TornadoWS):
        return await client.conn.read_message()
    return await client.conn.recv()


async def test_expired_id_gets_a_gap_notice_then_live_data(serve):
    store = QueueStore(capacity=10)
    port = await serve(routes(store))
    for i in range(30):
        store.submit(i)
    old = store._event_id(5).decode()
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": old})
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("live")
    gap, live = await client.read_events(2)
    assert gap.type == GAP_EVENT
    assert json.loads(gap.data) == {"reason": "expired", "last_event_id": old, "missed": 15}
    assert gap.id == store._event_id(30).decode()
    assert (live.type, live.data) == ("message", "live")
    client.close_fin()


async def test_store_restart_gives_gap_notice_then_live_data():
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    first_store = QueueStore()
    first = tornadose.make_server(Application(routes(first_store)))
    first.add_sockets(sockets)
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(first_store.subscribers) == 1)
    first_store.submit("before restart")
    (event,) = await client.read_events(1)
    first.stop()
    await first.close_all_connections()
    await client.read_until_closed(timeout=5)

    second_store = QueueStore()  # the process restarted: a new store
    second = HTTPServer(Application(routes(second_store)))
    second.add_sockets(bind_sockets(port, "127.0.0.1"))
    try:
        again = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": event.id})
        await wait_until(lambda: len(second_store.subscribers) == 1)
        second_store.submit("after restart")
        gap, live = await again.read_events(2)
        assert gap.type == GAP_EVENT and json.loads(gap.data)["reason"] == "restarted"
        assert live.data == "after restart"
        again.close_fin()
    finally:
        second.stop()
        await second.close_all_connections()


HOSTILE_IDS = ["garbage", "-5", "x--1", "123", "9" * 40, "a" * 5000, "ü-1", " ", "0x10", "\t-1 "]


@pytest.mark.parametrize("last_id", HOSTILE_IDS, ids=lambda v: repr(v[:12]))
async def test_hostile_last_event_ids_get_200_gap_notice_and_live_data(serve, last_id):
    store = QueueStore()
    port = await serve(routes(store))
    store.submit("earlier")
    client = await RawSSEClient.connect("127.0.0.1", port, f"/sse?last_event_id={quote(last_id)}")
    assert client.status == 200
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("live")
    gap, live = await client.read_events(2)
    assert gap.type == GAP_EVENT
    notice = json.loads(gap.data)
    assert notice["reason"] in ("malformed", "restarted", "unknown")
    assert notice["last_event_id"] == last_id[:128]
    assert live.data == "live"
    client.close_fin()


async def test_huge_id_in_the_header_and_over_websocket(serve):
    store = QueueStore()
    port = await serve(routes(store))
    own_future_id = store._event_id(10**15).decode()
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": "z" * 5000})
    ws = await LibWS.connect(port, f"/ws?last_event_id={own_future_id}")
    await wait_until(lambda: len(store.subscribers) == 2)
    store.submit(1)
    gap, live = await sse.read_events(2)
    assert (gap.type, json.loads(gap.data)["reason"], live.data) == (GAP_EVENT, "malformed", "1")
    notice, data = [json.loads(await ws.conn.recv()) for _ in range(2)]
    assert notice["event"] == GAP_EVENT and notice["data"]["reason"] == "unknown"
    assert data["data"] == 1
    sse.close_fin()
    await ws.close()


async def test_datastore_resume_skips_the_value_already_seen(serve):
    store = DataStore(initial_data="v1")
    port = await serve(routes(store))
    current = store._event_id(1).decode()
    seen = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": current})
    stale = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": "old-1"})
    await wait_until(lambda: len(store.subscribers) == 2)
    assert [e.data for e in await stale.read_events(1)] == ["v1"]
    store.submit("v2")
    assert [e.data for e in await seen.read_events(1)] == ["v2"]
    assert store.stats()["gaps"] == 0
    seen.close_fin()
    stale.close_fin()


# -- slow, frozen and half-open clients ------------------------------------------------


async def test_half_open_client_is_dropped_after_the_write_timeout(serve):
    store = QueueStore(write_timeout=0.3)
    port = await serve(routes(store))
    frozen = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=1024, limit=256)
    reader = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 2)
    frozen_port = frozen.writer.get_extra_info("sockname")[1]
    frozen_handler = next(
        h for h in store.subscribers if server_stream(h).socket.getpeername()[1] == frozen_port
    )
    # No send-buffer autotuning: the frozen client's socket fills after a few KB.
    server_stream(frozen_handler).socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for i in range(40):
        store.submit("y" * 1000)
        await reader.read_events(1)
    lag = {entry["subscriber"]: entry for entry in store.lag()}
    assert lag[frozen_handler]["bytes"] > 0
    await wait_until(lambda: len(store.subscribers) == 1, timeout=5, what="frozen client dropped")
    stats = store.stats()
    assert (stats["timed_out"], stats["lapped"], stats["disconnected"]) == (1, 0, 1)
    store.submit("still flowing")
    assert [e.data for e in await reader.read_events(1)] == ["still flowing"]
    reader.close_fin()
    frozen.close_fin()


async def test_lag_counts_what_a_stalled_socket_has_not_taken(serve):
    """lag()'s bytes include what the subscriber's connection still holds, on the
    detached path too (the bytes a RawStream queued when the socket was full)."""
    store = QueueStore()
    port = await serve(routes(store))
    frozen = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=1024, limit=256)
    await wait_until(lambda: len(store.subscribers) == 1)
    (handler,) = store.subscribers
    stream = server_stream(handler)
    assert handler._raw is stream, "the stream is detached"
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for _ in range(40):
        store.submit("z" * 1000)
    await wait_until(lambda: stream.writing(), what="bytes queued behind the full socket")
    (entry,) = store.lag()
    assert entry["messages"] == 0, "every frame went to the connection"
    assert entry["bytes"] == stream._size > 0
    frozen.close_fin()


async def test_fifty_stalled_clients_and_one_reader_with_bounded_memory():
    """50 subscribers never read while 200k messages flow to one that does. The server
    runs in its own process, so its RSS is its own: it stops growing once the ring is
    full, and the whole growth stays under the ring's byte bound plus a small constant.
    (The original grows ~13 MB per 100k messages here.)"""
    max_bytes = 2 * 1024 * 1024
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    sockets[0].close()
    server = Path(__file__).parent / "servers" / "stall_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(server), str(port), "--max-bytes", str(max_bytes)], stdout=subprocess.PIPE
    )
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline() == b"ready\n"

        async def rss_and_stats():
            return json.loads((await http.fetch(base + "/stats")).body)

        stalled = [
            await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=1024, limit=256) for _ in range(50)
        ]
        reader = await RawSSEClient.connect("127.0.0.1", port, "/sse")
        rss = {"start": (await rss_and_stats())["rss"]}
        expected = 0
        for round_ in range(100):  # 100 rounds x 2,000 messages = 200k
            await http.fetch(base + "/publish?count=2000&size=60", method="POST", body=b"")
            for event in await reader.read_events(2000, timeout=30):
                seq = int(event.data.split(" ", 1)[0])
                assert seq == expected, f"reader expected {expected}, got {seq}"
                expected += 1
            if round_ == 49:
                rss["half"] = (await rss_and_stats())["rss"]
        final = await rss_and_stats()
        rss["end"] = final["rss"]
        assert expected == 200_000
        assert (final["lapped"], final["subscribers"], final["disconnected"]) == (50, 1, 50), final
        assert rss["end"] - rss["half"] < 1024 * 1024, f"RSS still growing: {rss}"
        assert rss["end"] - rss["start"] < max_bytes + 4 * 1024 * 1024, f"RSS grew too much: {rss}"
        for client in stalled + [reader]:
            client.close_fin()
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=10)


async def test_disconnect_storm_leaves_nothing_behind(serve):
    queue, latest = QueueStore(), DataStore(initial_data=0)
    port = await serve(
        [
            (r"/sse", EventSource, {"store": queue}),
            (r"/ws", WebSocketSubscriber, {"store": queue}),
            (r"/d", EventSource, {"store": latest}),
        ]
    )

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    stop = asyncio.Event()

    async def publish():
        i = 0
        while not stop.is_set():
            for _ in range(50):
                queue.submit({"i": i, "pad": "s" * 150})
                latest.submit(i)
                i += 1
            await asyncio.sleep(0)

    async def one_client(n):
        kind = n % 4
        if kind == 3:
            client = await RawWS.connect(port, "/ws")
            if n % 3:
                await client.read_frame()
        else:
            client = await RawSSEClient.connect("127.0.0.1", port, "/d" if kind == 2 else "/sse")
            if n % 3:  # some vanish mid-stream, some before reading anything
                await client.read_events(1)
        (client.close_rst if n % 2 else client.close_fin)()

    publisher = asyncio.ensure_future(publish())
    try:
        for _ in range(5):
            for batch in range(0, 2000, 250):
                await asyncio.gather(*(one_client(n) for n in range(batch, batch + 250)))
            await wait_until(lambda: not queue.subscribers and not latest.subscribers, timeout=20)
    finally:
        stop.set()
        await publisher
    await wait_until(lambda: open_fds() <= baseline, timeout=20, what="descriptors back to baseline")
    assert queue.stats()["disconnected"] == 5 * 1500


# -- heartbeats, pings, shutdown ----------------------------------------------------------


async def test_idle_sse_stream_gets_retry_hint_and_heartbeats(serve):
    store = QueueStore()
    port = await serve(routes(store, heartbeat_interval=0.05, retry=1500))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    await asyncio.sleep(0.3)
    store.submit("data")
    (event,) = await client.read_events(1)
    assert event.data == "data"
    assert 750 <= client.parser.retry <= 2250  # jittered around it
    assert client.comments >= 3, "idle stream got no heartbeat comments"
    client.close_fin()


@pytest.mark.parametrize("jitter", [None, 0.2, 0])
async def test_retry_hints_are_spread_within_the_jitter(serve, jitter):
    """Clients cut together (a restart, a blip) must not come back together: each
    stream's hint is drawn within retry x (1 +- jitter), 0.5 by default."""
    store = QueueStore()
    settings = {"sse_retry": 2000}
    if jitter is not None:
        settings["sse_retry_jitter"] = jitter
    port = await serve(routes(store), **settings)
    clients = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(30)]
    await wait_until(lambda: len(store.subscribers) == 30)
    store.submit("x")
    hints = []
    for client in clients:
        await client.read_events(1)
        hints.append(client.parser.retry)
        client.close_fin()
    spread = 0.5 if jitter is None else jitter
    assert all(2000 * (1 - spread) - 1 <= h <= 2000 * (1 + spread) + 1 for h in hints), hints
    if spread:
        assert len(set(hints)) > 20, hints  # spread out, not one value
        assert max(hints) - min(hints) > 2000 * spread  # over much of the range
    else:
        assert set(hints) == {2000}


async def test_idle_streams_share_one_heartbeat_timer(serve):
    """A new subscriber adds no timer of its own to the loop: streams of the same
    interval share one wheel, whose timer stops when the last of them goes."""
    from tornadose.transport import heartbeat as _heartbeat

    store = QueueStore()
    port = await serve(routes(store, heartbeat_interval=0.04))
    loop = asyncio.get_running_loop()
    def timers() -> int:  # live handles in asyncio's own timer heap
        return sum(not handle.cancelled() for handle in loop._scheduled)

    timers_before = timers()
    clients = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(40)]
    await wait_until(lambda: len(store.subscribers) == 40)
    wheel = _heartbeat.wheel(0.04)
    assert len(wheel) == 40
    assert timers() <= timers_before + 2, "a timer per subscriber"
    await asyncio.sleep(0.25)
    store.submit("x")
    for client in clients:
        await client.read_events(1)
        assert client.comments >= 2, "an idle stream got no heartbeats"
        client.close_fin()
    await wait_until(lambda: len(wheel) == 0 and wheel._timer is None, what="wheel emptied")


async def test_an_open_stream_keeps_no_task_of_its_own(serve):
    """Once an SSE stream is open, nothing of this package waits in the loop for it:
    the only task per connection is Tornado's own connection loop."""
    store = QueueStore()
    port = await serve(routes(store))
    before = len(asyncio.all_tasks())
    clients = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(30)]
    await wait_until(lambda: len(store.subscribers) == 30)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) - before <= 30, "more than one task per connection"
    store.submit("x")
    for client in clients:
        assert [e.data for e in await client.read_events(1)] == ["x"]
    store.close()  # ends every stream cleanly: the terminating chunk
    for client in clients:
        assert await client.read_until_closed() == []
        client.close_fin()
    await wait_until(lambda: len(asyncio.all_tasks()) <= before, what="tasks back")


async def test_heartbeat_setting_from_the_application(serve):
    store = QueueStore()
    port = await serve(routes(store), sse_heartbeat_interval=0.05, sse_retry=0)
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await asyncio.sleep(0.3)
    store.submit("x")
    await client.read_events(1)
    assert client.comments >= 2 and client.parser.retry is None
    client.close_fin()


async def test_websocket_clients_that_reset_during_the_handshake(serve, caplog):
    """Clients that send the upgrade request and reset before the server answers it (a
    tab closed while connecting; seen in the soak bench): the 101 then fails and open()
    finds the stream closed. Nothing is logged above INFO, nothing stays subscribed,
    and the subscribers that stay get every message."""

    class SlowToAccept(WebSocketSubscriber):
        async def prepare(self) -> None:
            await asyncio.sleep(0.05)  # e.g. looking the user up: the client leaves meanwhile
            super().prepare()

    store = QueueStore()
    port = await serve([*routes(store)[:1], (r"/ws", SlowToAccept, {"store": store})])
    steady = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for round_ in range(10):
        socks = []
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(request)
            socks.append(sock)
        await asyncio.sleep(0.01)  # read by the server, which is still in prepare()
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            sock.close()
        store.submit(round_)
    await asyncio.sleep(0.2)  # every prepare() over, every open() called
    await wait_until(lambda: store.subscribers == {next(iter(store.subscribers))}
                     and len(store.subscribers) == 1, what="only the steady subscriber left")
    events = await steady.read_events(10)
    assert [json.loads(e.data) for e in events] == list(range(10))
    noisy = [r for r in caplog.records if r.levelno > logging.INFO and r.name != "tornado.access"]
    assert not noisy, [r.getMessage() for r in noisy]
    steady.close_fin()


@pytest.mark.parametrize("path", ["/sse", "/ws", "/feed/sse", "/feed/ws"])
async def test_a_finished_connection_is_freed_without_the_garbage_collector(serve, path):
    """No reference cycle through the handler: once its client is gone, a handler (with
    its request, stream and buffers) is freed by reference counting, not left for the
    cyclic collector (which a reconnect storm would make walk them again and again)."""
    import gc
    import weakref

    from tornadose.handlers import TopicEventSource, TopicWebSocketSubscriber
    from tornadose.topics import TopicRegistry

    store, registry = QueueStore(), TopicRegistry(QueueStore)
    port = await serve([*routes(store),
                        (r"/feed/sse", TopicEventSource, {"registry": registry}),
                        (r"/feed/ws", TopicWebSocketSubscriber, {"registry": registry})])
    gc.collect()
    gc.disable()
    try:
        if path.endswith("sse"):
            client = await RawSSEClient.connect("127.0.0.1", port, path + "?topics=A")
        else:
            client = await TornadoWS.connect(port, path + "?topics=A")
        await wait_until(lambda: len(store.subscribers) + registry.connections == 1)
        (handler,) = store.subscribers or registry._handlers.values()
        freed = weakref.ref(handler)
        store.submit("x")
        registry.submit("A", "x")
        del handler
        if path.endswith("sse"):
            await client.read_events(1)
            client.close_fin()
        else:
            await client.read(1)
            await client.close()
        await wait_until(lambda: len(store.subscribers) + registry.connections == 0)
        await wait_until(lambda: freed() is None, timeout=2, what="the handler freed")
    finally:
        gc.enable()


async def test_websocket_pings_follow_tornado_setting(serve, caplog):
    store = QueueStore()
    port = await serve(routes(store), websocket_ping_interval=0.05)
    caplog.set_level(logging.DEBUG, logger="websockets.client")
    client = await LibWS.connect(port, "/ws", ping_interval=None)
    await asyncio.sleep(0.3)
    store.submit("after pings")
    assert await client.read(1) == ["after pings"]
    pings = [r for r in caplog.records if r.name == "websockets.client" and "< PING" in r.getMessage()]
    assert len(pings) >= 2
    await client.close()


def start_server(store) -> tuple[HTTPServer, int]:
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application(routes(store)))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def test_stopping_the_server_ends_every_stream_cleanly():
    """The documented shutdown: close the stores (SSE responses finish, WebSockets close
    with 1001), then stop the server. Tornado's close_all_connections() alone does not
    reach upgraded WebSockets."""
    store = QueueStore()
    server, port = start_server(store)
    sse = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(5)]
    ws = [await LibWS.connect(port, "/ws") for _ in range(5)]
    await wait_until(lambda: len(store.subscribers) == 10)
    store.submit("bye")
    store.close()
    server.stop()
    await server.close_all_connections()
    for client in sse:
        assert [e.data for e in await client.read_until_closed(timeout=5)] == ["bye"]
        assert client.closed_by_server
    for client in ws:
        assert await client.read(1) == ["bye"]
        await asyncio.wait_for(client.conn.wait_closed(), 5)
        assert client.conn.close_code == 1001
    assert len(store.subscribers) == 0


async def test_stopping_a_tornadose_server_alone_ends_every_stream_cleanly():
    """close_all_connections() of a tornadose server (listen/make_server) also ends the
    streams detached from Tornado: SSE with the terminating chunk, WebSockets 1001."""
    store = QueueStore()
    server = tornadose.make_server(Application(routes(store)))
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    sse = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(5)]
    ws = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 6)
    server.stop()
    await server.close_all_connections()
    for client in sse:
        await client.read_until_closed(timeout=5)
        assert client.closed_by_server
    assert await ws.conn.read_message() is None
    assert ws.conn.close_code == 1001
    await wait_until(lambda: len(store.subscribers) == 0)


async def test_empty_last_event_id_means_none(serve):
    store = QueueStore()
    port = await serve(routes(store))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse?last_event_id=", headers={"Last-Event-ID": ""})
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("live")
    assert [(e.type, e.data) for e in await client.read_events(1)] == [("message", "live")]
    assert store.stats()["gaps"] == 0
    client.close_fin()


# -- limits and hostile input --------------------------------------------------------------


@pytest.mark.allow_log_errors
async def test_subscriber_limit_answers_503_with_retry_after(serve, caplog):
    store = QueueStore(max_subscribers=2)
    port = await serve(routes(store))
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    second = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    third = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    assert third.status == 503 and 2 <= int(third.headers["retry-after"]) <= 10
    with pytest.raises(HTTPClientError) as refused:
        await TornadoWS.connect(port, "/ws")
    assert refused.value.code == 503
    first.close_fin()
    await wait_until(lambda: len(store.subscribers) == 1)
    fourth = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    assert fourth.status == 200
    await wait_until(lambda: len(store.subscribers) == 2)
    assert store.stats()["rejected"] == 2
    # Two refusals, one record: the cause starting. No access-log record per refusal.
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in records] == ["tornadose.refusals"], records
    assert "max_subscribers" in records[0].getMessage()
    fourth.close_fin()
    third.close_fin()
    await second.close()


async def test_oversized_client_frame_closes_only_that_socket(serve):
    store = QueueStore()
    port = await serve(routes(store))
    rude = await LibWS.connect(port, "/ws", max_size=None)
    polite = await LibWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    await rude.conn.send("x" * 200_000)
    await asyncio.wait_for(rude.conn.wait_closed(), 5)
    assert rude.conn.close_code == 1009
    store.submit("fine")
    assert await polite.read(1) == ["fine"]
    await polite.close()


@settings(max_examples=300, deadline=None)
@given(last_event_id=st.text(max_size=300))
def test_any_last_event_id_gives_a_valid_position(last_event_id):
    store = QueueStore(capacity=8)
    for i in range(20):
        store.submit(i)
    cursor, gap = store._resume_point(last_event_id)
    ring = store._ring
    assert ring.tail <= cursor <= ring.head
    if gap is not None:
        assert cursor == ring.head
        assert gap["reason"] in ("malformed", "restarted", "unknown", "expired")
        json.dumps(gap)


@settings(max_examples=150, deadline=None)
@given(message=st.one_of(st.text(), st.binary(max_size=40), st.floats(), st.dictionaries(st.text(), st.integers())))
def test_any_message_is_delivered_or_refused_with_a_documented_error(message):
    from .sseclient import SSEParser

    store = QueueStore(max_message_size=10_000)
    try:
        store.submit(message)
    except (TypeError, ValueError):
        assert store.stats()["messages"] == 0
        return
    events = SSEParser().feed(store._ring.join(0, 1))
    assert len(events) == 1 and events[0].id == store._event_id(1).decode()


async def test_live_fuzzed_ids_never_break_the_stream(serve):
    store = QueueStore()
    port = await serve(routes(store))
    rng = random.Random(7)
    for _ in range(25):
        text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)])) for _ in range(rng.randrange(0, 60)))
        client = await RawSSEClient.connect("127.0.0.1", port, f"/sse?last_event_id={quote(text)}")
        assert client.status == 200
        await wait_until(lambda: len(store.subscribers) == 1)
        store.submit("ok")
        events = await client.read_events(2 if text else 1)
        assert events[-1].data == "ok"
        client.close_rst()
        await wait_until(lambda: len(store.subscribers) == 0)
