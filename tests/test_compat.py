"""Code written for the original tornadose keeps working."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from tornado import gen
from tornado.testing import bind_unused_port

from tornadose.handlers import BaseHandler, EventSource, WebSocketSubscriber
from tornadose.stores import BaseStore, DataStore, QueueStore

from .helpers import TornadoWS, wait_until
from .sseclient import RawSSEClient

EXAMPLE = Path(__file__).parent / "examples" / "original_readme.py"


async def test_original_readme_example_runs_unchanged(tmp_path):
    sock, port = bind_unused_port()
    sock.close()
    script = tmp_path / "example.py"
    script.write_text(EXAMPLE.read_text().replace("app.listen(9000)", f"app.listen({port})"))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    try:
        client = None
        for _ in range(100):
            try:
                client = await RawSSEClient.connect("127.0.0.1", port, "/")
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert client is not None, "the example never started serving"
        events = await client.read_events(2, timeout=10)
        values = [float(e.data) for e in events]
        assert all(0 <= v < 1 for v in values) and values[0] != values[1]
        client.close_fin()
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert b"Traceback" not in stderr, stderr.decode()


def test_stores_can_be_created_and_fed_before_any_loop_runs():
    queue, data = QueueStore(), DataStore(initial_data=1)
    queue.submit("early")
    data.submit(2)
    assert data.data == 2 and queue.stats()["messages"] == 1


async def test_submit_works_plain_awaited_and_yielded(serve):
    store = QueueStore()
    port = await serve([(r"/ws", WebSocketSubscriber, {"store": store})])
    client = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 1)

    @gen.coroutine
    def legacy():
        yield store.submit("yielded")

    store.submit("plain")
    await store.submit("awaited")
    await legacy()
    assert await client.read(3) == ["plain", "awaited", "yielded"]
    await client.close()


class Recorder(BaseHandler):
    """A custom subscriber handler written against the original API."""

    received: list = []

    async def get(self):
        # Keep the request open, as a streaming handler does, until the client leaves.
        self.gone = asyncio.Event()
        await self.gone.wait()

    def on_connection_close(self):
        super().on_connection_close()
        self.gone.set()

    def publish(self, message):
        Recorder.received.append(message)


class AsyncRecorder(Recorder):
    received: list = []

    async def publish(self, message):
        await asyncio.sleep(0.001 if message % 2 else 0)
        AsyncRecorder.received.append(message)


class EchoSource(EventSource):
    """An EventSource subclass that overrides publish, as an original user might."""

    def publish(self, message):
        self.write(f"data: echo {message}\n\n")
        return self.flush()


async def test_custom_basehandler_subclass_gets_every_message_in_order(serve):
    store = QueueStore()
    port = await serve([(r"/r", Recorder, {"store": store}), (r"/a", AsyncRecorder, {"store": store})])
    Recorder.received, AsyncRecorder.received = [], []
    writers = []
    for path in ("/r", "/a"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        writers.append(writer)
    await wait_until(lambda: len(store.subscribers) == 2)
    for i in range(20):
        store.submit(i)
    await wait_until(lambda: len(AsyncRecorder.received) == 20)
    assert Recorder.received == list(range(20))
    assert AsyncRecorder.received == list(range(20))
    for writer in writers:
        writer.close()
    await wait_until(lambda: len(store.subscribers) == 0, what="generic subscribers deregistered")


async def test_eventsource_subclass_overriding_publish_takes_generic_path(serve):
    store = QueueStore()
    port = await serve([(r"/e", EchoSource, {"store": store})])
    client = await RawSSEClient.connect("127.0.0.1", port, "/e")
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("one")
    store.submit("two")
    assert [e.data for e in await client.read_events(2)] == ["echo one", "echo two"]
    client.close_fin()
    await wait_until(lambda: len(store.subscribers) == 0)


class ListStore(BaseStore):
    """A custom store written against the original BaseStore API."""

    def submit(self, message):
        for subscriber in self.subscribers:
            subscriber.submit(message)

    def publish(self):
        pass


async def test_our_handlers_work_with_a_custom_store(serve):
    store = ListStore()
    port = await serve([(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})])
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    ws = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    store.submit({"x": 1})
    store.submit("line1\nline2")
    assert [e.data for e in await sse.read_events(2)] == ['{"x":1}', "line1\nline2"]
    assert await ws.read(2) == [{"x": 1}, "line1\nline2"]
    sse.close_fin()
    await ws.close()
    await wait_until(lambda: len(store.subscribers) == 0)


def test_register_rejects_objects_without_submit():
    with pytest.raises(TypeError, match="submit"):
        QueueStore().register(object())


def test_handler_rejects_a_non_store():
    with pytest.raises(TypeError, match="BaseStore"):
        BaseHandler._bind(object.__new__(BaseHandler), "not a store")


def test_base_store_methods_must_be_implemented():
    store = BaseStore()
    with pytest.raises(NotImplementedError):
        store.submit("x")
    with pytest.raises(NotImplementedError):
        store.publish()


def test_submit_from_another_thread_is_a_clear_error():
    async def main():
        store = QueueStore()
        store.register(Recorder.__new__(Recorder))  # a generic subscriber registers the loop
        errors = []

        def worker():
            try:
                store.submit("x")
            except RuntimeError as exc:
                errors.append(str(exc))

        await asyncio.get_running_loop().run_in_executor(None, worker)
        return errors

    (error,) = asyncio.run(main())
    assert "IOLoop.add_callback" in error


def test_package_is_typed():
    import tornadose

    assert (Path(tornadose.__file__).parent / "py.typed").exists()
