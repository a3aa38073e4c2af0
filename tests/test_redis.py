"""RedisStore against a real redis-server, real Tornado servers and real clients."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado import gen
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from tornadose.stores import RedisStore
from tornadose.handlers import EventSource, WebSocketSubscriber

from .helpers import LibWS, TornadoWS, wait_until
from .redis_server import RedisServer, free_port, redis_py, redis_server  # noqa: F401  (fixtures)
from .sseclient import RawSSEClient


SERVER = Path(__file__).parent / "servers" / "redis_store_server.py"


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r
        for when in ("setup", "call")
        for r in caplog.get_records(when)
        if r.name == "tornadose.redis" and r.levelno == level
    ]


def publish_commands(messages: list[str]) -> bytes:
    """redis-cli input publishing ``messages`` in order (double-quoted, escaped)."""
    quoted = (json.dumps(m, ensure_ascii=False) for m in messages)
    return "".join(f"PUBLISH tornadose {q}\n" for q in quoted).encode()


class Clients(SimpleNamespace):
    async def read(self, n: int) -> list[list[str]]:
        """What each client received: SSE event data, WebSocket ``data`` values."""
        sse = [e.data for e in await self.sse.read_events(n)]
        return [sse, await self.tornado.read(n), await self.lib.read(n)]

    async def close(self) -> None:
        await self.sse.aclose()
        await self.tornado.close()
        await self.lib.close()


async def connect_clients(port: int, expect_subscribers) -> Clients:
    clients = Clients(
        sse=await RawSSEClient.connect("127.0.0.1", port, "/sse"),
        tornado=await TornadoWS.connect(port, "/ws"),
        lib=await LibWS.connect(port, "/ws"),
    )
    await wait_until(expect_subscribers, what="subscribers registered")
    return clients


@pytest.fixture
async def served(redis_server: RedisServer, serve):  # noqa: F811
    """A RedisStore on the test's redis-server, served on /sse and /ws, subscribed."""
    store = RedisStore(host="127.0.0.1", port=redis_server.port, max_message_size=1000)
    port = await serve(
        [(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})]
    )
    await asyncio.wait_for(store.start(), 5)
    clients = await connect_clients(port, lambda: len(store.subscribers) == 3)
    yield SimpleNamespace(store=store, port=port, redis=redis_server, clients=clients)
    await clients.close()
    await store.aclose()


# -- without a running loop or without redis-py ---------------------------------------


@pytest.mark.usefixtures("redis_py")
def test_created_before_any_loop_runs_and_connects_lazily():
    store = RedisStore("prices", port=free_port())
    assert store.channel == "prices" and not store.subscribed
    with pytest.raises(RuntimeError, match="event loop running"):
        store.submit("no loop")
    with pytest.raises(TypeError):
        store.submit(object())  # bad input is refused before anything else
    with pytest.raises(TypeError):
        RedisStore(no_such_redis_option=1)
    store.shutdown()  # nothing started: a no-op


def test_missing_redis_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r'pip install "tornadose\[redis\]"'):
        RedisStore()


def test_importing_stores_does_not_import_redis():
    code = "import sys, tornadose.stores, tornadose.redis.pubsub; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- delivery ------------------------------------------------------------------------------


async def test_redis_cli_publications_reach_sse_and_websocket_in_order(served):
    received: list[str] = []

    class Custom:  # a generic-path subscriber, as the original API allows
        def submit(self, message):
            received.append(message)

    custom = Custom()
    served.store.register(custom)
    messages = ["hello", "two\nlines", "ünïcode ✓", '{"a": 1}', "id: forged"] + [
        f"n{i}" for i in range(20)
    ]
    served.redis.cli(input=publish_commands(messages))  # one real redis-cli process, in order
    assert await served.clients.read(len(messages)) == [messages] * 3
    await wait_until(lambda: len(received) == len(messages))
    assert received == messages
    served.store.deregister(custom)


async def test_submit_plain_awaited_and_yielded(served):
    store = served.store

    @gen.coroutine
    def legacy():
        yield store.submit("yielded")

    store.submit("plain")
    store.submit({"k": [1, 2]})
    assert await store.submit("awaited", debug=True) is None
    await legacy()
    # Serialized as the SSE payload is: a dict travels as its JSON text.
    expected = ["plain", '{"k":[1,2]}', "awaited", "yielded"]
    assert await served.clients.read(4) == [expected] * 3
    assert served.redis.cli("GET", "tornadose") == b"awaited\n"  # debug=True: SETEX 5 s


async def test_bad_input_raises_and_nothing_else_breaks(served):
    store = served.store
    store.submit("before")
    for message, error in [
        (object(), TypeError),
        ({"set": {1}}, TypeError),
        (b"\xc3\x28", ValueError),
        ("\udc80", ValueError),
        ("x" * 1001, ValueError),  # over max_message_size
    ]:
        with pytest.raises(error):
            store.submit(message)
    await store.submit("after")
    assert await served.clients.read(2) == [["before", "after"]] * 3
    assert store.stats()["messages"] == 2


async def test_plain_submits_keep_their_order_at_volume(served):
    for i in range(3000):  # several pipelined batches
        served.store.submit(str(i))
    expected = [str(i) for i in range(3000)]
    assert await served.clients.read(3000) == [expected] * 3


@pytest.mark.allow_log_errors
async def test_invalid_utf8_from_another_publisher_is_skipped_with_one_warning(served, caplog):
    served.redis.cli("PUBLISH", "tornadose", b"\xff\xfe not text")
    served.redis.cli("PUBLISH", "tornadose", "x" * 1001)  # over max_message_size
    served.redis.cli("PUBLISH", "tornadose", "fine")
    assert await served.clients.read(1) == [["fine"]] * 3
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "'tornadose'" in warnings[0].getMessage() and "UTF-8" in warnings[0].getMessage()
    assert "max_message_size" in warnings[1].getMessage()
    assert all(r.exc_info is None for r in caplog.records)


# -- Redis unreachable or going away ---------------------------------------------------


@pytest.mark.allow_log_errors
@pytest.mark.usefixtures("redis_py")
async def test_unreachable_redis(caplog):
    store = RedisStore(host="127.0.0.1", port=free_port())
    with pytest.raises(ConnectionError, match="cannot publish to Redis"):
        await asyncio.wait_for(store.submit("awaited"), 5)
    for i in range(5):
        store.submit(i)  # plain: failures are logged, once per burst
    await wait_until(lambda: records(caplog, logging.ERROR), what="the publish error log")
    await asyncio.sleep(0.05)
    (error,) = records(caplog, logging.ERROR)
    assert "could not publish" in error.getMessage() and error.exc_info is None
    (warning,) = records(caplog, logging.WARNING)
    assert "no connection" in warning.getMessage()
    await store.aclose()
    assert len(asyncio.all_tasks()) == 1, asyncio.all_tasks()


@pytest.mark.allow_log_errors
async def test_redis_restart_mid_stream(served, caplog):
    caplog.set_level(logging.INFO, logger="tornadose.redis")
    store, clients = served.store, served.clients
    for i in range(10):
        store.submit(f"before {i}")
    assert await clients.read(10) == [[f"before {i}" for i in range(10)]] * 3

    served.redis.stop()  # SIGKILL: a crash
    await wait_until(lambda: not store.subscribed, what="the store noticing the outage")
    with pytest.raises(ConnectionError):
        await store.submit("lost")
    store.submit("lost too")
    store.submit("and this")
    await wait_until(lambda: records(caplog, logging.ERROR), what="the publish error log")
    await asyncio.sleep(0.3)  # a few reconnection attempts, silently
    assert len(store.subscribers) == 3, "subscribers stay connected"

    served.redis.start()
    await asyncio.wait_for(store.start(), 10)  # resubscribed
    for i in range(9):
        store.submit(f"after {i}")
    await store.submit("after 9")  # published: redis-cli's message comes after
    served.redis.cli("PUBLISH", "tornadose", "from redis-cli")
    expected = [f"after {i}" for i in range(10)] + ["from redis-cli"]
    assert await clients.read(11) == [expected] * 3

    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tornadose.redis"]
    assert [level for level, _ in logged] == ["WARNING", "ERROR", "INFO", "INFO"], logged
    assert "no connection" in logged[0][1] and "could not publish 2 message(s)" in logged[1][1]
    assert "reconnected" in logged[2][1] and "works again" in logged[3][1]
    assert all(r.exc_info is None for r in caplog.records)


# -- lifecycle -------------------------------------------------------------------------


async def test_shutdown_stops_listening_and_closes_everything(redis_server):  # noqa: F811
    store = RedisStore(host="127.0.0.1", port=redis_server.port)
    await asyncio.wait_for(store.start(), 5)
    await store.submit("x")
    await store.shutdown()
    assert not store.subscribed
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert b"tornadose" not in redis_server.cli("PUBSUB", "CHANNELS")
    await store.shutdown()  # idempotent
    await asyncio.wait_for(store.start(), 5)  # and usable again
    assert b"tornadose" in redis_server.cli("PUBSUB", "CHANNELS")
    await store.aclose()


async def test_first_subscriber_starts_the_listener(redis_server, serve):  # noqa: F811
    store = RedisStore(host="127.0.0.1", port=redis_server.port)
    port = await serve([(r"/sse", EventSource, {"store": store})])
    assert not store.subscribed
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: store.subscribed, what="the store subscribing")
    redis_server.cli("PUBLISH", "tornadose", "hi")
    assert [e.data for e in await client.read_events(1)] == ["hi"]
    await client.aclose()
    await store.aclose()


def test_shutdown_with_the_loop_stopped(redis_server):  # noqa: F811
    store = RedisStore(host="127.0.0.1", port=redis_server.port)

    async def start():
        await asyncio.wait_for(store.start(), 5)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start())
        store.shutdown()  # runs the loop until the connections are closed
        assert not asyncio.all_tasks(loop)
    finally:
        loop.close()
    assert b"tornadose" not in redis_server.cli("PUBSUB", "CHANNELS")


# -- several processes on one Redis -----------------------------------------------------


async def test_two_server_processes_share_one_channel(redis_server):  # noqa: F811
    procs, ports = [], []
    try:
        for _ in range(2):
            sock, port = bind_unused_port()
            sock.close()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SERVER), str(port), str(redis_server.port),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            procs.append(proc)
            ports.append(port)
        for proc in procs:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line == b"ready\n", (line, await proc.stderr.read())

        http = AsyncHTTPClient()

        async def subscribers(port):
            response = await http.fetch(f"http://127.0.0.1:{port}/stats")
            return json.loads(response.body)["subscribers"]

        clients = []
        for port in ports:
            clients.append(
                Clients(
                    sse=await RawSSEClient.connect("127.0.0.1", port, "/sse"),
                    tornado=await TornadoWS.connect(port, "/ws"),
                    lib=await LibWS.connect(port, "/ws"),
                )
            )
        for port in ports:
            for _ in range(200):
                if await subscribers(port) == 3:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("subscribers never registered")

        messages = [f"tick {i} " + "x" * (i % 50) for i in range(200)]
        served_by = await asyncio.to_thread(redis_server.cli, input=publish_commands(messages))
        assert served_by.split() == [b"2"] * 200, "each message reached both processes"
        for client in clients:
            assert await client.read(200) == [messages] * 3
            await client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            _, stderr = await proc.communicate()
            assert b"Traceback" not in stderr, stderr.decode()
