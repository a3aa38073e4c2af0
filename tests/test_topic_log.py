"""Topics as views of one log: one write per connection per loop turn, the WebSocket
subscribe protocol, and TCP_NODELAY on every subscriber socket. Real server, real
clients (our independent SSE parser, Tornado's and the `websockets` library's
WebSocket clients)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornadose import make_server
from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import DataStore, QueueStore
from tornadose.topics import TopicRegistry

from .helpers import LibWS, TornadoWS, server_stream, wait_until
from .sseclient import RawSSEClient


def routes(registry, prefix=""):
    return [
        (prefix + r"/sse(?:/([^/]+))?", TopicEventSource, {"registry": registry}),
        (prefix + r"/ws(?:/([^/]+))?", TopicWebSocketSubscriber, {"registry": registry}),
    ]


async def recv(ws: LibWS, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.conn.recv(), timeout))


async def nothing_more(ws: LibWS, wait: float = 0.2) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.conn.recv(), wait)


def subscribed(*topics: str) -> dict:
    return {"event": "tornadose-subscribed", "data": {"topics": sorted(topics)}}


# -- one write per connection per loop turn ------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "ws"])
async def test_a_turn_of_many_topics_is_one_write_per_connection(serve, kind):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    topics = [f"S{i:02d}" for i in range(50)]
    clients = []
    for c in range(4):
        mine = ",".join(topics[c % 2 :: 2])  # 25 topics each; two connections per topic
        if kind == "sse":
            clients.append(await RawSSEClient.connect("127.0.0.1", port, f"/sse?topics={mine}"))
        else:
            clients.append(await LibWS.connect(port, f"/ws?topics={mine}"))
    await wait_until(lambda: ticks.connections == 4)
    for i in range(200):  # one loop turn, every topic four times
        ticks.submit(topics[i % 50], i)
    await asyncio.sleep(0)
    ticks.publish()
    stats = ticks.stats()
    assert (stats["delivered"], stats["writes"]) == (400, 4)
    for c, client in enumerate(clients):
        expected = [i for i in range(200) if i % 2 == c % 2]
        if kind == "sse":
            got = [int(e.data) for e in await client.read_events(100)]
            client.close_fin()
        else:
            got = [(await recv(client))["data"] for _ in range(100)]
            await client.close()
        assert got == expected  # submit order across its topics


async def test_a_flush_touches_only_the_connections_of_the_new_entries(serve):
    """The cost of a flush follows deliveries: connections whose topics got nothing are
    neither written nor visited."""
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    quiet = [await RawSSEClient.connect("127.0.0.1", port, f"/sse?topics=Q{i}") for i in range(20)]
    busy = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=B,C")
    await wait_until(lambda: ticks.connections == 21)
    marks = [sink.mark for sink in ticks._fanout]
    for i in range(10):
        ticks.submit("BC"[i % 2], i)  # two topics: the pass over entries, not one run
    ticks.publish()
    touched = [sink for sink, before in zip(ticks._fanout, marks) if sink.mark != before]
    assert len(touched) == 1 and ticks.stats()["writes"] == 1
    assert [e.data for e in await busy.read_events(10)] == [str(i) for i in range(10)]
    for client in quiet + [busy]:
        client.close_fin()


# -- the WebSocket subscribe protocol ------------------------------------------------------


@pytest.mark.parametrize("client_cls", [LibWS, TornadoWS], ids=["websockets", "tornado"])
async def test_subscribe_and_unsubscribe_over_the_open_socket(serve, client_cls):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    ws = await client_cls.connect(port, "/ws")  # no topics in the URL
    await wait_until(lambda: ticks.connections == 1)

    async def send(obj):
        if client_cls is LibWS:
            await ws.conn.send(json.dumps(obj))
        else:
            await ws.conn.write_message(json.dumps(obj))

    async def read():
        if client_cls is LibWS:
            return await recv(ws)
        return json.loads(await asyncio.wait_for(ws.conn.read_message(), 10))

    await send({"subscribe": ["MSFT", "AAPL", "MSFT"]})
    assert await read() == subscribed("AAPL", "MSFT")
    for topic in ("AAPL", "IBM", "MSFT"):
        ticks.submit(topic, topic.lower())
    assert [(f["event"], f["data"]) for f in [await read(), await read()]] == [
        ("AAPL", "aapl"),
        ("MSFT", "msft"),
    ]
    await send({"unsubscribe": ["AAPL", "NEVER"], "subscribe": ["IBM"]})
    assert await read() == subscribed("IBM", "MSFT")
    for topic in ("AAPL", "IBM", "MSFT"):
        ticks.submit(topic, topic.lower() + "2")
    assert [(f["event"], f["data"]) for f in [await read(), await read()]] == [
        ("IBM", "ibm2"),
        ("MSFT", "msft2"),
    ]
    await ws.close()
    await wait_until(lambda: ticks.connections == 0)
    assert sorted(ticks) == ["AAPL", "IBM", "MSFT"]  # published to: kept


async def test_nothing_of_an_unsubscribed_topic_follows_the_notice(serve):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    ws = await LibWS.connect(port, "/ws?topics=A,B")
    await wait_until(lambda: ticks.connections == 1)
    running = True

    async def publish():
        i = 0
        while running:
            for _ in range(20):
                ticks.submit("A", i)
                ticks.submit("B", i)
                i += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(publish())
    await ws.conn.send(json.dumps({"unsubscribe": ["A"]}))
    seen_notice = False
    after = []
    deadline = asyncio.get_running_loop().time() + 0.5
    while asyncio.get_running_loop().time() < deadline or not seen_notice:
        frame = await recv(ws)
        if frame.get("event") == "tornadose-subscribed":
            assert frame == subscribed("B")
            seen_notice = True
        elif seen_notice:
            after.append(frame["event"])
    running = False
    await task
    assert after and set(after) == {"B"}
    await ws.close()


async def test_a_new_latest_value_subscription_gets_the_current_value_after_the_notice(serve):
    quotes = TopicRegistry(DataStore)
    quotes.submit("AAPL", {"p": 1})
    quotes.submit("MSFT", {"p": 2})
    quotes.submit("AAPL", {"p": 3})
    port = await serve(routes(quotes))
    ws = await LibWS.connect(port, "/ws?topics=IBM")
    await wait_until(lambda: quotes.connections == 1)
    await ws.conn.send(json.dumps({"subscribe": ["AAPL", "MSFT", "NEW"]}))
    assert await recv(ws) == subscribed("AAPL", "IBM", "MSFT", "NEW")
    snapshot = [await recv(ws), await recv(ws)]
    # Oldest value first; ids are the values' own positions in the log.
    assert [(f["event"], f["data"]) for f in snapshot] == [("MSFT", {"p": 2}), ("AAPL", {"p": 3})]
    assert [f["id"] for f in snapshot] == [quotes._event_id(n).decode() for n in (2, 3)]
    await nothing_more(ws)
    # Subscribing again to a topic it has is no change and resends nothing.
    await ws.conn.send(json.dumps({"subscribe": ["AAPL"]}))
    assert await recv(ws) == subscribed("AAPL", "IBM", "MSFT", "NEW")
    await nothing_more(ws)
    quotes.submit("NEW", 7)
    assert (await recv(ws))["data"] == 7
    await ws.close()


@pytest.mark.parametrize(
    "request_text, reason",
    [
        ("hello", "not JSON"),
        ('["AAPL"]', 'expected {"subscribe": [...]} or {"unsubscribe": [...]}'),
        ("{}", 'expected {"subscribe": [...]} or {"unsubscribe": [...]}'),
        ('{"subscribe": ["A"], "extra": 1}', 'expected {"subscribe": [...]}'),
        ('{"subscribe": "AAPL"}', "'subscribe' takes a list of topic names"),
        ('{"unsubscribe": [1]}', "'unsubscribe' takes a list of topic names"),
        ('{"subscribe": ["ok", "bad name"]}', "bad topic name 'bad name'"),
        ('{"subscribe": ["tornadose-x"]}', "bad topic name 'tornadose-x'"),
        ('{"subscribe": ["T1", "T2", "T3"]}', "too many topics: at most 3 per subscriber"),
        ('{"subscribe": ["UNKNOWN"]}', "unknown topic 'UNKNOWN'"),
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_keeps_its_topics(
    serve, request_text, reason
):
    registry = TopicRegistry(QueueStore, max_topics_per_subscriber=3, create_on_subscribe=False)
    for name in ("A", "ok", "T1", "T2", "T3"):
        registry.topic(name)
    port = await serve(routes(registry))
    ws = await LibWS.connect(port, "/ws?topics=A")
    await wait_until(lambda: registry.connections == 1)
    await ws.conn.send(request_text)
    error = await recv(ws)
    assert error["event"] == "tornadose-error"
    assert error["data"]["reason"].startswith(reason), error
    registry.submit("A", "still here")
    registry.submit("ok", "not subscribed")
    assert (await recv(ws))["data"] == "still here"
    await nothing_more(ws, 0.1)
    assert registry.connections == 1
    await ws.conn.send(json.dumps({"subscribe": ["ok"]}))
    assert await recv(ws) == subscribed("A", "ok")  # and it still works
    await ws.close()


async def test_error_details_name_the_bad_topics_and_the_limit(serve):
    registry = TopicRegistry(QueueStore, max_topics_per_subscriber=2)
    port = await serve(routes(registry))
    ws = await LibWS.connect(port, "/ws")
    await ws.conn.send(json.dumps({"subscribe": ["ok", "no way", "-x"]}))
    assert (await recv(ws))["data"]["topics"] == ["no way", "-x"]
    await ws.conn.send(json.dumps({"subscribe": ["a", "b", "c"]}))
    assert (await recv(ws))["data"]["limit"] == 2
    assert len(registry) == 0  # nothing created for refused requests
    await ws.close()


@pytest.mark.allow_log_errors
async def test_sse_still_needs_topics_in_the_url(serve):
    registry = TopicRegistry(QueueStore)
    port = await serve(routes(registry))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    assert client.status == 400
    assert b"no topic requested" in await client.read_body()
    client.close_fin()


# -- TCP_NODELAY ------------------------------------------------------------------------------


def nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def server_socket(handler) -> socket.socket:
    return server_stream(handler).socket


@pytest.fixture
async def tornadose_serve():
    """As the ``serve`` fixture, with a server from ``tornadose.make_server``."""
    servers = []

    async def start(handlers, **settings):
        server = make_server(Application(handlers, **settings))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        servers.append((server, sockets[0]))
        return sockets[0].getsockname()[1]

    yield start
    for server, _ in servers:
        server.stop()
        await server.close_all_connections()


@pytest.mark.parametrize("setting", [None, False])
@pytest.mark.parametrize("kind", ["tornado", "tornadose"])
async def test_every_subscriber_socket_has_tcp_nodelay(serve, tornadose_serve, setting, kind):
    """Set per socket by the handlers on a plain Tornado server; a tornadose server
    sets it on its listening socket instead, which accepted sockets inherit."""
    store = QueueStore()
    registry = TopicRegistry(QueueStore)
    settings = {} if setting is None else {"tornadose_tcp_nodelay": setting}
    port = await (serve if kind == "tornado" else tornadose_serve)(
        [
            (r"/sse", EventSource, {"store": store}),
            (r"/ws", WebSocketSubscriber, {"store": store}),
        ]
        + routes(registry, "/topics"),
        **settings,
    )
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    ws = await LibWS.connect(port, "/ws")
    tsse = await RawSSEClient.connect("127.0.0.1", port, "/topics/sse?topics=A")
    tws = await LibWS.connect(port, "/topics/ws?topics=A")
    await wait_until(lambda: len(store.subscribers) == 2 and registry.connections == 2)
    await asyncio.sleep(0.1)  # anything Tornado does after the upgrade has happened
    handlers = list(store.subscribers) + list(registry.topic("A").subscribers)
    assert len(handlers) == 4
    expected = setting is None
    assert [nodelay(server_socket(h)) for h in handlers] == [expected] * 4
    sse.close_fin()
    tsse.close_fin()
    await ws.close()
    await tws.close()


# -- write_delay ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay, writes", [(0.0, 5), (0.2, 1)])
@pytest.mark.parametrize("kind", ["store", "registry"])
async def test_a_write_delay_coalesces_loop_turns_into_one_write(serve, kind, delay, writes):
    if kind == "store":
        source = QueueStore(write_delay=delay)
        port = await serve([(r"/sse", EventSource, {"store": source})])
        client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
        await wait_until(lambda: len(source.subscribers) == 1)
        submit = source.submit
    else:
        source = TopicRegistry(QueueStore, write_delay=delay)
        port = await serve(routes(source))
        client = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B")
        await wait_until(lambda: source.connections == 1)

        def submit(i):
            return source.submit("AB"[i % 2], i)

    for i in range(5):  # one per loop turn
        submit(i)
        await asyncio.sleep(0)
    assert [int(e.data) for e in await client.read_events(5)] == list(range(5))
    assert source.stats()["writes"] == writes
    client.close_fin()


def test_write_delay_is_bounded():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="write_delay"):
            QueueStore(write_delay=bad)
        with pytest.raises(ValueError, match="write_delay"):
            TopicRegistry(QueueStore, write_delay=bad)


# -- latest-value topics: stall, then drain -------------------------------------------------


async def test_a_stalled_latest_value_connection_drains_to_the_newest_values_only(serve):
    """Its socket really fills (small buffers on both ends, a client that does not
    read); when it reads again it gets only each topic's newest value, not a backlog."""
    quotes = TopicRegistry(DataStore)
    port = await serve(routes(quotes))
    client = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B,C", rcvbuf=4096, limit=1024
    )
    await wait_until(lambda: quotes.connections == 1)
    (handler,) = quotes.topic("A").subscribers
    server_socket(handler).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pad = "x" * 1000
    turns = 0
    while next(iter(quotes._fanout)).live or turns < 50:  # until it is behind, and then some
        for topic in "ABC":
            quotes.submit(topic, {"turn": turns, "pad": pad})
        turns += 1
        await asyncio.sleep(0.001)
        assert turns < 5000, "the connection never fell behind"
    final = {"A": turns - 1, "B": turns - 1, "C": turns - 1}
    received = 0
    latest: dict[str, int] = {}
    while latest != final:
        (event,) = await client.read_events(1)
        latest[event.type] = json.loads(event.data)["turn"]
        received += 1
    stats = quotes.stats()
    assert stats["lapped"] == 0 and stats["conflated"] > 0
    # Far fewer than the 3 x turns values submitted reached it: the backlog was skipped.
    assert received < 3 * turns / 2, (received, turns)
    client.close_fin()
