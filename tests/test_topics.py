"""Topics: a registry of stores by name, and handlers subscribing one connection to
several of them. Real server, real clients (our independent SSE parser, two WebSocket
clients)."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote

import pytest
from tornado.httpclient import HTTPClientError

from tornadose.handlers import TopicEventSource, TopicWebSocketSubscriber, WebSocketSubscriber
from tornadose.stores import GAP_EVENT, DataStore, QueueStore
from tornadose.topics import (
    TopicError,
    TopicLimitError,
    TopicNameError,
    TopicRegistry,
    UnknownTopicError,
    check_topic_name,
)

from .helpers import LibWS, TornadoWS, wait_until
from .sseclient import RawSSEClient


def routes(registry, **sse_kwargs):
    return [
        (r"/sse(?:/([^/]+))?", TopicEventSource, {"registry": registry, **sse_kwargs}),
        (r"/ws(?:/([^/]+))?", TopicWebSocketSubscriber, {"registry": registry}),
    ]


async def ws_frames(client, n: int) -> list[dict]:
    """The next ``n`` frames of a TornadoWS or LibWS client, decoded whole."""
    out = []
    for _ in range(n):
        if isinstance(client, TornadoWS):
            raw = await asyncio.wait_for(client.conn.read_message(), 10)
        else:
            raw = await asyncio.wait_for(client.conn.recv(), 10)
        assert raw is not None, f"closed after {len(out)} frames"
        out.append(json.loads(raw))
    return out


def only_access_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Refusals of the client's request (4xx) in the access log, refusals of ours (503)
    summarized per cause: nothing else at WARNING or above, and no 503 record each."""
    quiet = ("tornado.access", "tornadose.refusals")
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name not in quiet]
    assert not noisy, noisy
    per_refusal = [r for r in caplog.records if r.name == "tornado.access" and " 503 " in f" {r.getMessage()}"]
    assert not per_refusal, per_refusal


# -- several topics on one connection ----------------------------------------------------


async def test_sse_subscribes_to_topics_from_path_and_query_labelled_by_event(serve):
    quotes = TopicRegistry(DataStore)
    port = await serve(routes(quotes))
    client = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse/AAPL,MSFT?topics=GOOG&topics=MSFT,IBM"
    )
    assert client.status == 200
    await wait_until(lambda: quotes.connections == 1)
    assert sorted(quotes) == ["AAPL", "GOOG", "IBM", "MSFT"]
    for symbol, price in [("AAPL", 1), ("TSLA", 9), ("IBM", 2), ("MSFT", 3), ("GOOG", 4)]:
        quotes.submit(symbol, {"symbol": symbol, "price": price})
    events = await client.read_events(4)
    assert {e.type: json.loads(e.data)["price"] for e in events} == {
        "AAPL": 1,
        "IBM": 2,
        "MSFT": 3,
        "GOOG": 4,
    }
    seqs = {"AAPL": 1, "IBM": 3, "MSFT": 4, "GOOG": 5}  # one log: TSLA took 2
    for event in events:
        assert json.loads(event.data)["symbol"] == event.type
        assert event.id == quotes._event_id(seqs[event.type]).decode()
    client.close_fin()


@pytest.mark.parametrize("client_cls", [TornadoWS, LibWS], ids=["tornado", "websockets"])
async def test_websocket_frames_carry_the_topic(serve, client_cls):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    ws = await client_cls.connect(port, "/ws/AAPL?topics=MSFT")
    await wait_until(lambda: ticks.connections == 1)
    for i in range(50):
        ticks.submit("AAPL" if i % 2 else "MSFT", i)
        ticks.submit("NOPE", i)
    frames = await ws_frames(ws, 50)
    for topic in ("AAPL", "MSFT"):
        mine = [f for f in frames if f["event"] == topic]
        assert [f["data"] for f in mine] == [
            i for i in range(50) if (i % 2 == 1) == (topic == "AAPL")
        ]
        assert [f["id"] for f in mine] == [
            ticks._event_id(2 * i + 1).decode()
            for i in range(50)
            if (i % 2 == 1) == (topic == "AAPL")
        ]
    await ws.close()


async def test_queue_topics_deliver_every_message_in_order_per_topic(serve):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B,C")
    await wait_until(lambda: ticks.connections == 1)
    for i in range(3000):  # bursts of 100 per loop iteration, spread over the topics
        ticks.submit("ABC"[i % 3], i)
        if i % 100 == 99:
            await asyncio.sleep(0)
    events = await client.read_events(3000, timeout=20)
    for topic in "ABC":
        got = [int(e.data) for e in events if e.type == topic]
        assert got == [i for i in range(3000) if "ABC"[i % 3] == topic]
    client.close_fin()


# -- latest-value snapshot, then updates -----------------------------------------------------


async def test_latest_value_topics_send_a_snapshot_then_updates(serve):
    quotes = TopicRegistry(DataStore)
    for i, symbol in enumerate(["AAPL", "MSFT", "GOOG", "IBM"]):
        quotes.submit(symbol, {"price": 100 + i})
    port = await serve(routes(quotes))
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=AAPL,GOOG,NEW")
    ws = await TornadoWS.connect(port, "/ws?topics=AAPL,GOOG,NEW")
    snapshot = await sse.read_events(2)
    assert {(e.type, e.data) for e in snapshot} == {
        ("AAPL", '{"price":100}'),
        ("GOOG", '{"price":102}'),
    }
    assert {(f["event"], f["data"]["price"]) for f in await ws_frames(ws, 2)} == {
        ("AAPL", 100),
        ("GOOG", 102),
    }
    await wait_until(lambda: quotes.connections == 2)
    quotes.submit("MSFT", {"price": 1})  # not requested
    quotes.submit("NEW", {"price": 7})  # requested before it existed
    quotes.submit("GOOG", {"price": 8})
    assert [(e.type, json.loads(e.data)["price"]) for e in await sse.read_events(2)] == [
        ("NEW", 7),
        ("GOOG", 8),
    ]
    assert [(f["event"], f["data"]["price"]) for f in await ws_frames(ws, 2)] == [
        ("NEW", 7),
        ("GOOG", 8),
    ]
    sse.close_fin()
    await ws.close()


async def test_slow_latest_value_subscriber_converges_on_each_topics_newest_value(serve):
    quotes = TopicRegistry(DataStore)
    port = await serve(routes(quotes))
    client = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B", rcvbuf=1024, limit=256
    )
    await wait_until(lambda: quotes.connections == 1)
    for i in range(2000):
        quotes.submit("A", {"i": i, "pad": "x" * 200})
        quotes.submit("B", {"i": -i, "pad": "y" * 200})
        if i % 50 == 0:
            await asyncio.sleep(0)
    latest: dict[str, int] = {}
    while latest != {"A": 1999, "B": -1999}:
        for event in await client.read_events(1):
            latest[event.type] = json.loads(event.data)["i"]
    stats = quotes.stats()
    assert stats["conflated"] > 0 and stats["lapped"] == 0
    client.close_fin()


# -- resume ------------------------------------------------------------------------------------


async def test_sse_resume_with_one_id_is_exact_for_every_topic(serve):
    """A browser keeps one Last-Event-ID: since every topic is a view of one log, that id
    resumes all the connection's topics exactly, with no gap notice."""
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B")
    await wait_until(lambda: ticks.connections == 1)
    ticks.submit("A", "a1")
    ticks.submit("B", "b1")
    ticks.submit("C", "c1")  # not subscribed: never replayed
    a1, _ = await first.read_events(2)
    first.close_rst()  # as if the connection dropped right after a1
    await wait_until(lambda: ticks.connections == 0)
    ticks.submit("A", "a2")
    ticks.submit("B", "b2")
    again = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B", headers={"Last-Event-ID": a1.id}
    )
    await wait_until(lambda: ticks.connections == 1)
    ticks.submit("B", "b3")
    got = await again.read_events(4)
    assert [(e.type, e.data) for e in got] == [("B", "b1"), ("A", "a2"), ("B", "b2"), ("B", "b3")]
    assert [e.id for e in got] == [ticks._event_id(n).decode() for n in (2, 4, 5, 6)]
    stats = ticks.stats()
    assert (stats["resumed"], stats["gaps"]) == (1, 0)
    again.close_fin()


async def test_websocket_resume_with_one_id_is_exact_for_all_topics(serve):
    ticks = TopicRegistry(QueueStore)
    port = await serve(routes(ticks))
    ws = await LibWS.connect(port, "/ws?topics=A,B,C")
    await wait_until(lambda: ticks.connections == 1)
    for i in range(30):
        ticks.submit("ABCD"[i % 4], i)
    frames = await ws_frames(ws, 23)
    await ws.close()
    await wait_until(lambda: ticks.connections == 0)
    # It saw only the first 10 frames: everything of A, B, C after them comes back.
    again = await LibWS.connect(port, f"/ws?topics=A,B,C&last_event_id={quote(frames[9]['id'])}")
    rest = await ws_frames(again, 13)
    assert rest == frames[10:]
    # Earlier clients sent one id per topic: the newest of them is where it stands.
    await again.close()
    await wait_until(lambda: ticks.connections == 0)
    ids = ",".join(f["id"] for f in (frames[3], frames[20], frames[7]))
    third = await LibWS.connect(port, f"/ws?topics=A,B,C&last_event_id={quote(ids)}")
    assert await ws_frames(third, 2) == frames[21:]
    assert ticks.stats()["resumed"] == 2
    await third.close()


async def test_restarted_server_gives_one_gap_notice_and_every_latest_topic_its_value(serve):
    ticks, quotes = TopicRegistry(QueueStore), TopicRegistry(DataStore)
    quotes.submit("A", 1)
    quotes.submit("B", 2)
    port = await serve(
        [
            (r"/ticks", TopicEventSource, {"registry": ticks}),
            (r"/quotes", TopicEventSource, {"registry": quotes}),
        ]
    )
    old = "0badc0de-41"  # an id from a previous run of the server
    t = await RawSSEClient.connect(
        "127.0.0.1", port, "/ticks?topics=A,B", headers={"Last-Event-ID": old}
    )
    q = await RawSSEClient.connect(
        "127.0.0.1", port, "/quotes?topics=A,B", headers={"Last-Event-ID": old}
    )
    (notice,) = await t.read_events(1)
    assert notice.type == GAP_EVENT
    assert json.loads(notice.data) == {
        "reason": "restarted",
        "last_event_id": old,
        "missed": None,
        "topics": ["A", "B"],
    }
    await wait_until(lambda: ticks.connections == 1)
    ticks.submit("B", "live")
    assert [(e.type, e.data) for e in await t.read_events(1)] == [("B", "live")]
    assert [(e.type, e.data) for e in await q.read_events(2)] == [("A", "1"), ("B", "2")]
    t.close_fin()
    q.close_fin()


async def test_latest_value_resume_skips_only_the_values_the_client_has(serve):
    quotes = TopicRegistry(DataStore)
    quotes.submit("A", "a1")
    quotes.submit("B", "b1")
    port = await serve(routes(quotes))
    seen = quotes._event_id(1).decode()
    client = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B", headers={"Last-Event-ID": seen}
    )
    await wait_until(lambda: quotes.connections == 1)
    quotes.submit("A", "a2")
    assert [(e.type, e.data) for e in await client.read_events(2)] == [("B", "b1"), ("A", "a2")]
    client.close_fin()


async def test_lapped_queue_topic_disconnects_and_resume_reports_what_was_lost(serve):
    ticks = TopicRegistry(QueueStore, capacity=16)
    port = await serve(routes(ticks))
    client = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B", rcvbuf=1024, limit=256
    )
    await wait_until(lambda: ticks.connections == 1)
    ticks.submit("A", "first")
    (first,) = await client.read_events(1)
    for i in range(400):
        ticks.submit("A", "x" * 500)
        if i % 20 == 0:
            await asyncio.sleep(0)
    await wait_until(lambda: ticks.connections == 0, what="lapped subscriber disconnected")
    assert ticks.stats()["lapped"] == 1
    again = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=A,B", headers={"Last-Event-ID": first.id}
    )
    gap, *retained = await again.read_events(17)
    notice = json.loads(gap.data)
    assert gap.type == GAP_EVENT
    assert (notice["reason"], notice["topics"], notice["missed"]) == ("expired", ["A"], None)
    # Then everything the log still holds of its topics, from the notice's id on.
    assert gap.id == ticks._event_id(401 - 16).decode()
    assert [e.id for e in retained] == [ticks._event_id(n).decode() for n in range(386, 402)]
    client.close_fin()
    again.close_fin()


async def test_a_quiet_topic_resumes_exactly_however_busy_the_others_were(serve):
    """The log evicts per entry, but a connection is only lapped or told of a gap when
    an entry of ITS topics was lost."""
    ticks = TopicRegistry(QueueStore, capacity=8)
    port = await serve(routes(ticks))
    ticks.submit("QUIET", "q1")
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=QUIET")
    await wait_until(lambda: ticks.connections == 1)
    ticks.submit("QUIET", "q2")
    (q2,) = await client.read_events(1)
    client.close_rst()
    await wait_until(lambda: ticks.connections == 0)
    for i in range(100):
        ticks.submit("BUSY", i)
    ticks.submit("QUIET", "q3")
    again = await RawSSEClient.connect(
        "127.0.0.1", port, "/sse?topics=QUIET", headers={"Last-Event-ID": q2.id}
    )
    assert [(e.type, e.data) for e in await again.read_events(1)] == [("QUIET", "q3")]
    assert ticks.stats()["gaps"] == 0
    again.close_fin()


# -- limits and bad names ----------------------------------------------------------------------

BAD_NAMES = [
    "a b",
    "-x",
    ".x",
    "x" * 65,
    "tornadose-gap",
    "error",
    "message",
    "ü",
    "a/b",
    "a;b",
    "a\x00",
]


@pytest.mark.allow_log_errors
@pytest.mark.parametrize(
    "where, name",
    # (Tornado turns control characters in query arguments into spaces, then strips.)
    [("path", n) for n in BAD_NAMES] + [("query", n) for n in BAD_NAMES if n != "a\x00"],
    ids=lambda v: repr(v[:10]),
)
async def test_bad_topic_names_answer_400_with_the_reason(serve, caplog, name, where):
    registry = TopicRegistry()
    port = await serve(routes(registry))
    quoted = quote(name, safe="")
    path = f"/sse/OK,{quoted}" if where == "path" else f"/sse?topics=OK,{quoted}"
    client = await RawSSEClient.connect("127.0.0.1", port, path)
    body = (await client.read_body()).decode()
    assert client.status == 400, body
    assert client.headers["content-type"].startswith("text/plain")
    assert body.startswith("bad topic name ") and "Traceback" not in body
    assert len(registry) == 0
    only_access_warnings(caplog)
    client.close_fin()


@pytest.mark.allow_log_errors
async def test_too_many_topics_per_subscriber_and_in_the_registry_answer_400(serve, caplog):
    registry = TopicRegistry(max_topics=5, max_topics_per_subscriber=3)
    registry.submit("KEPT1", 1)
    registry.submit("KEPT2", 2)
    port = await serve(routes(registry))
    over = await RawSSEClient.connect("127.0.0.1", port, "/sse/A,B?topics=C,D")
    assert over.status == 400
    assert (await over.read_body()).decode() == "too many topics: at most 3 per subscriber\n"
    fits = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=KEPT1,A,B")  # 4 topics now
    assert fits.status == 200
    full = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=C,D")
    assert full.status == 400
    assert "limit of 5 topics is reached" in (await full.read_body()).decode()
    with pytest.raises(HTTPClientError) as refused:
        await TornadoWS.connect(port, "/ws?topics=X,Y,Z,W")
    assert refused.value.code == 400
    assert sorted(registry) == ["A", "B", "KEPT1", "KEPT2"]
    only_access_warnings(caplog)
    for client in (over, fits, full):
        client.close_fin()


@pytest.mark.allow_log_errors
async def test_no_topic_and_unknown_topic(serve, caplog):
    registry = TopicRegistry(create_on_subscribe=False)
    registry.topic("KNOWN")
    port = await serve(routes(registry))
    none = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=,")
    assert none.status == 400 and b"no topic requested" in await none.read_body()
    unknown = await RawSSEClient.connect("127.0.0.1", port, "/sse/KNOWN,OTHER")
    assert unknown.status == 404 and await unknown.read_body() == b"unknown topic 'OTHER'\n"
    known = await RawSSEClient.connect("127.0.0.1", port, "/sse/KNOWN")
    assert known.status == 200
    only_access_warnings(caplog)
    for client in (none, unknown, known):
        client.close_fin()


@pytest.mark.allow_log_errors
async def test_max_subscribers_counts_connections_whatever_their_topics(serve, caplog):
    registry = TopicRegistry(QueueStore, max_subscribers=1)
    port = await serve(routes(registry))
    first = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=B,C")
    await wait_until(lambda: registry.connections == 1)
    refused = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B")
    assert refused.status == 503 and 2 <= int(refused.headers["retry-after"]) <= 10
    # Nothing held for the refused one: A (no publisher, no subscriber) is gone again.
    await wait_until(lambda: "A" not in registry)
    first.close_rst()
    await wait_until(lambda: registry.connections == 0)
    other = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A")
    assert other.status == 200
    assert registry.stats()["rejected"] == 1
    only_access_warnings(caplog)
    for client in (refused, other):
        client.close_fin()


# -- lifecycle ----------------------------------------------------------------------------------


async def test_topics_only_subscribers_asked_for_go_away_with_them(serve):
    registry = TopicRegistry()
    registry.submit("PUB", 1)
    port = await serve(routes(registry))
    a = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=PUB,SUBONLY")
    b = await TornadoWS.connect(port, "/ws?topics=SUBONLY")
    await wait_until(lambda: registry.connections == 2)
    assert sorted(registry) == ["PUB", "SUBONLY"]
    a.close_rst()
    await wait_until(lambda: registry.connections == 1)
    assert "SUBONLY" in registry
    await b.close()
    await wait_until(lambda: registry.connections == 0)
    assert sorted(registry) == ["PUB"]
    assert registry.topic("PUB").subscribers == set()


async def test_closing_the_registry_ends_every_stream_cleanly(serve):
    registry = TopicRegistry(QueueStore)
    port = await serve(routes(registry))
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B")
    ws = await LibWS.connect(port, "/ws?topics=A,B")
    await wait_until(lambda: registry.connections == 2)
    registry.submit("A", "bye")
    registry.submit("B", "bye")
    registry.close()
    assert [e.data for e in await sse.read_until_closed(timeout=5)] == ["bye", "bye"]
    assert sse.closed_by_server
    assert [f["data"] for f in await ws_frames(ws, 2)] == ["bye", "bye"]
    await asyncio.wait_for(ws.conn.wait_closed(), 5)
    assert ws.conn.close_code == 1001
    await wait_until(lambda: registry.connections == 0)
    assert registry.stats()["subscribers"] == 0


async def test_idle_multi_topic_stream_gets_heartbeats_and_retry_hint(serve):
    registry = TopicRegistry(QueueStore)
    port = await serve(routes(registry, heartbeat_interval=0.05, retry=1500))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse?topics=A,B,C")
    await asyncio.sleep(0.3)
    registry.submit("B", "data")
    (event,) = await client.read_events(1)
    assert (event.type, event.data) == ("B", "data")
    assert 750 <= client.parser.retry <= 2250  # 1500, jittered
    # One heartbeat per interval for the connection, not one per topic.
    assert 3 <= client.comments <= 7
    client.close_fin()


async def test_registry_stats_sum_the_topics():
    registry = TopicRegistry(QueueStore)
    registry.submit("A", 1)
    registry.submit("A", 2)
    registry.submit("B", 3)
    stats = registry.stats()
    assert (stats["topics"], stats["messages"], stats["subscribers"], stats["connections"]) == (
        2,
        3,
        0,
        0,
    )
    assert stats["max_lag"] == 0
    assert set(registry.topic("A").stats()) <= set(stats)


class CompressedTopics(TopicWebSocketSubscriber):
    def get_compression_options(self):
        return {}


async def test_compressed_websocket_gets_every_topic_in_order(serve):
    ticks = TopicRegistry(QueueStore)
    port = await serve([(r"/ws", CompressedTopics, {"registry": ticks})])
    ws = await LibWS.connect(port, "/ws?topics=A,B")  # offers permessage-deflate
    await wait_until(lambda: ticks.connections == 1)
    (handler,) = ticks.topic("A").subscribers
    assert handler.ws_connection._compressor is not None, "not negotiated"
    for i in range(200):
        ticks.submit("AB"[i % 2], i)
    frames = await ws_frames(ws, 200)
    assert [f["data"] for f in frames if f["event"] == "A"] == list(range(0, 200, 2))
    assert [f["data"] for f in frames if f["event"] == "B"] == list(range(1, 200, 2))
    await ws.close()


async def test_websocket_subscriber_subclass_on_close_runs(serve):
    """Refactoring kept the original's contract: a subclass's on_close() is called."""
    closed = asyncio.Event()

    class Tracked(WebSocketSubscriber):
        def on_close(self):
            super().on_close()
            closed.set()

    store = QueueStore()
    port = await serve([(r"/ws", Tracked, {"store": store})])
    ws = await LibWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)
    await ws.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert not store.subscribers


# -- the registry without a server ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["AAPL", "BRK.B", "eur:usd", "X-1_2", "9", "a" * 64])
def test_good_topic_names(name):
    assert check_topic_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES + ["", "open", "tornadose-x"])
def test_bad_topic_names_raise(name):
    with pytest.raises(TopicNameError):
        check_topic_name(name)
    with pytest.raises(TopicNameError):
        TopicRegistry().submit(name, 1)


def test_parse_and_limits():
    registry = TopicRegistry(max_topics=2, max_topics_per_subscriber=2)
    assert registry.parse(["A,B", "B", "", "A,"]) == ["A", "B"]
    with pytest.raises(TopicLimitError):
        registry.parse(["A,B,C"])
    with pytest.raises(TopicError):
        registry.parse([",", ""])
    registry.topic("A")
    registry.topic("B")
    with pytest.raises(TopicLimitError):
        registry.topic("C")
    with pytest.raises(TopicLimitError):
        registry.acquire(["A", "C"])
    assert [s.event for s in registry.acquire(["B", "A"])] == ["B", "A"]
    registry.release(["B", "A"])
    assert sorted(registry) == ["A", "B"]  # publishers' topics stay


def test_unknown_topic_error_without_create_on_subscribe():
    registry = TopicRegistry(create_on_subscribe=False)
    with pytest.raises(UnknownTopicError):
        registry.acquire(["A"])
    assert len(registry) == 0


def test_registry_checks_its_arguments():
    with pytest.raises(ValueError):
        TopicRegistry(max_topics=0)
    with pytest.raises(ValueError):
        TopicRegistry(max_topics_per_subscriber=0)
    with pytest.raises(TypeError):
        TopicRegistry(event="x")
    with pytest.raises(TypeError, match="cannot back topics"):
        TopicRegistry(lambda event: object())
    with pytest.raises(TypeError, match="unexpected keyword"):
        TopicRegistry(QueueStore, capcity=8)
    registry = TopicRegistry(QueueStore, capacity=8)
    assert registry.capacity == 8 and registry.topic("A").event == "A"


def test_topic_handlers_need_a_registry():
    handler = object.__new__(TopicEventSource)
    with pytest.raises(TypeError, match="TopicRegistry"):
        handler._bind_registry(QueueStore())
