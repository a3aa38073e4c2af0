"""Bad input fails loudly at submit() and breaks nothing else."""

from __future__ import annotations

import pytest

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import DataStore, QueueStore

from .helpers import TornadoWS, wait_until
from .sseclient import RawSSEClient

BAD = [
    (object(), TypeError, "cannot serialize"),
    ({"set": {1, 2}}, TypeError, "cannot serialize"),
    (b"\xc3\x28", ValueError, "not valid UTF-8"),
    ("\udc80", ValueError, "UTF-8"),
]


@pytest.mark.parametrize(("message", "error", "text"), BAD)
async def test_bad_message_raises_and_others_are_unaffected(serve, message, error, text):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})])
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    ws = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    store.submit("before")
    with pytest.raises(error, match=text):
        store.submit(message)
    store.submit("after")
    assert [e.data for e in await sse.read_events(2)] == ["before", "after"]
    assert await ws.read(2) == ["before", "after"]
    assert store.stats()["messages"] == 2
    sse.close_fin()
    await ws.close()


def test_oversized_message_is_refused():
    store = QueueStore(max_message_size=10)
    with pytest.raises(ValueError, match="max_message_size"):
        store.submit("x" * 11)
    store.submit("x" * 10)
    assert store.stats()["messages"] == 1


def test_datastore_keeps_previous_value_on_bad_input():
    store = DataStore(initial_data="good")
    with pytest.raises(TypeError):
        store.submit(object())
    assert store.data == "good"


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"max_bytes": 0}, {"max_message_size": 0}])
def test_bad_store_bounds(kwargs):
    with pytest.raises(ValueError):
        QueueStore(**kwargs)
