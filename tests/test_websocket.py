"""WebSocketSubscriber over a real server, read with Tornado's and `websockets`' clients."""

from __future__ import annotations

import asyncio

import pytest

from tornadose.handlers import WebSocketSubscriber
from tornadose.stores import DataStore, QueueStore

from .helpers import LibWS, TornadoWS, wait_until

CLIENTS = pytest.mark.parametrize("client_cls", [TornadoWS, LibWS], ids=["tornado", "websockets"])


class CompressedSubscriber(WebSocketSubscriber):
    def get_compression_options(self):
        return {}


async def subscribe(client_cls, port, store, path="/ws", **kwargs):
    before = len(store.subscribers)
    client = await client_cls.connect(port, path, **kwargs)
    await wait_until(lambda: len(store.subscribers) > before, what="subscriber registered")
    return client


@CLIENTS
async def test_messages_arrive_as_data_objects(serve, client_cls):
    store = QueueStore()
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})])
    client = await subscribe(client_cls, port, store)
    messages = ["text", {"k": [1, 2]}, 3.5, "a\n\nevent: x", "x" * 70_000]
    for m in messages:
        store.submit(m)
    assert await client.read(len(messages)) == messages
    await client.close()
    await wait_until(lambda: len(store.subscribers) == 0, what="deregistration")


@CLIENTS
async def test_negotiated_compression_still_delivers_in_order(serve, client_cls):
    store = QueueStore()
    port = await serve([(r"/ws", CompressedSubscriber, {"store": store})])
    kwargs = {"compression_options": {}} if client_cls is TornadoWS else {}
    client = await subscribe(client_cls, port, store, **kwargs)
    (handler,) = store.subscribers
    assert handler.ws_connection._compressor is not None, "compression was not negotiated"
    for i in range(50):
        store.submit({"i": i, "pad": "z" * 200})
    assert [m["i"] for m in await client.read(50)] == list(range(50))
    await client.close()


async def test_datastore_current_value_on_open(serve):
    store = DataStore(initial_data="hello")
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})])
    client = await subscribe(TornadoWS, port, store)
    assert await client.read(1) == ["hello"]
    await client.close()


async def test_client_messages_are_ignored(serve):
    store = QueueStore()
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})])
    client = await subscribe(LibWS, port, store)
    await client.conn.send("hello server")
    await client.conn.send(b"\x00binary")
    await asyncio.sleep(0.05)
    store.submit("still here")
    assert await client.read(1) == ["still here"]
    await client.close()


async def test_store_close_closes_websockets_normally(serve):
    store = QueueStore()
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})])
    client = await subscribe(LibWS, port, store)
    store.close()
    await asyncio.wait_for(client.conn.wait_closed(), 5)
    assert client.conn.close_code == 1001
    assert len(store.subscribers) == 0
