"""EventSource over a real server, read with raw sockets and the tests' own SSE parser."""

from __future__ import annotations

import json

import pytest

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import DataStore, QueueStore

from .helpers import wait_until
from .sseclient import RawSSEClient


async def connect(port: int, store, path: str = "/sse", **kwargs) -> RawSSEClient:
    before = len(store.subscribers)
    client = await RawSSEClient.connect("127.0.0.1", port, path, **kwargs)
    await wait_until(lambda: len(store.subscribers) > before, what="subscriber registered")
    return client


async def test_stream_headers(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    (handler,) = store.subscribers
    assert handler._tornadose_sink.direct, "plain TCP should be written straight to the socket"
    client.close_fin()


async def test_newline_message_is_one_event_and_dict_is_json(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    store.submit("a\n\nevent: x\ndata: y")
    store.submit({"k": [1, 2], "s": "ü"})
    first, second = await client.read_events(2)
    assert (first.type, first.data) == ("message", "a\n\nevent: x\ndata: y")
    assert json.loads(second.data) == {"k": [1, 2], "s": "ü"}
    assert first.id != second.id
    client.close_fin()


@pytest.mark.parametrize("http10", [False, True], ids=["http1.1-chunked", "http1.0-raw"])
async def test_http_versions(serve, http10):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store, http10=http10)
    assert ("transfer-encoding" in client.headers) is not http10
    for i in range(5):
        store.submit(f"m{i}")
    assert [e.data for e in await client.read_events(5)] == [f"m{i}" for i in range(5)]
    client.close_fin()


async def test_gzip_setting_does_not_touch_the_stream(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})], compress_response=True)
    client = await connect(port, store, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in client.headers
    store.submit("plain " * 100)
    (event,) = await client.read_events(1)
    assert event.data == "plain " * 100
    client.close_fin()


async def test_datastore_sends_current_value_at_once_then_updates(serve):
    store = DataStore(initial_data={"price": 1})
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    (event,) = await client.read_events(1)
    assert json.loads(event.data) == {"price": 1}
    store.data = {"price": 2}
    (event,) = await client.read_events(1)
    assert json.loads(event.data) == {"price": 2}
    assert store.data == {"price": 2}
    client.close_fin()


async def test_datastore_without_value_sends_nothing_until_set(serve):
    store = DataStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    store.set_data("now")
    (event,) = await client.read_events(1)
    assert event.data == "now"
    client.close_fin()


async def test_datastore_burst_is_conflated_to_the_newest(serve):
    store = DataStore(initial_data=0)
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    await client.read_events(1)
    for i in range(1, 101):
        store.submit(i)  # all in one loop iteration: only the newest goes out
    (event,) = await client.read_events(1)
    assert event.data == "100"
    assert store.stats()["conflated"] == 99
    client.close_fin()


async def test_client_close_is_noticed_without_any_write(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    fin = await connect(port, store)
    rst = await connect(port, store)
    fin.close_fin()
    rst.close_rst()
    await wait_until(lambda: len(store.subscribers) == 0, timeout=5, what="deregistration")


async def test_store_close_ends_streams_cleanly(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await connect(port, store)
    store.submit("last")  # still pending when close() is called: it goes out first
    store.close()
    assert [e.data for e in await client.read_until_closed(timeout=5)] == ["last"]
    assert client.closed_by_server
    assert len(store.subscribers) == 0


async def test_store_event_name_labels_every_frame(serve):
    from .helpers import LibWS

    store = QueueStore(event="AAPL")
    port = await serve([(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})])
    client = await connect(port, store)
    ws = await LibWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    store.submit({"px": 1})
    (event,) = await client.read_events(1)
    assert (event.type, json.loads(event.data)) == ("AAPL", {"px": 1})
    frame = json.loads(await ws.conn.recv())
    assert (frame["event"], frame["data"]) == ("AAPL", {"px": 1})
    client.close_fin()
    await ws.close()


@pytest.mark.parametrize("bad", ["", "a\nb", "x\r", "n\0"])
def test_bad_event_names_are_refused(bad):
    with pytest.raises(ValueError, match="event"):
        QueueStore(event=bad)
