"""RedisStreamStore against a real redis-server, real Tornado servers and real clients.

"Process A" and "process B" are two stores in this process, each with its own ring,
reader and HTTP port: what matters for resuming is that they share nothing but Redis.
One test runs the multi-process recipe for real (tests/servers/redis_stream_server.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import GAP_EVENT, RedisStreamStore

from . import redis_server as fixtures
from .helpers import LibWS, TornadoWS, server_stream, wait_until
from .redis_server import RedisServer, connect_to_worker, free_port, stream_workers
from .sseclient import RawSSEClient

# The fixtures this module uses, from tests/redis_server.py.
redis_py, redis_server = fixtures.redis_py, fixtures.redis_server



def routes(store):
    return [
        (r"/sse", EventSource, {"store": store}),
        (r"/ws", WebSocketSubscriber, {"store": store}),
    ]


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r
        for when in ("setup", "call")
        for r in caplog.get_records(when)
        if r.name == "tornadose.redis" and r.levelno == level
    ]


async def new_store(redis: RedisServer, serve, **kwargs) -> SimpleNamespace:
    """A started RedisStreamStore on the test's Redis, served on its own port."""
    names = ("backfill_page", "read_count", "reconnect_delay_min")
    attrs = {k: kwargs.pop(k) for k in names if k in kwargs}
    store = RedisStreamStore(host="127.0.0.1", port=redis.port, **kwargs)
    for name, value in attrs.items():
        setattr(store, name, value)
    port = await serve(routes(store))
    await asyncio.wait_for(store.start(), 5)
    return SimpleNamespace(store=store, port=port)


def redis_version(redis: RedisServer) -> tuple[int, ...]:
    info = redis.cli("INFO", "server").decode()
    version = next(line for line in info.splitlines() if line.startswith("redis_version:"))
    return tuple(int(part) for part in version.partition(":")[2].strip().split("."))


def xadd_commands(messages: list[str], stream: str = "tornadose") -> bytes:
    quoted = (json.dumps(m, ensure_ascii=False) for m in messages)
    return "".join(f"XADD {stream} * data {q}\n" for q in quoted).encode()


# -- clients that see ids: SSE events, WebSocket {"id", "data"} frames ------------------


class Client:
    """One subscriber, SSE or WebSocket; ``read(n)`` returns ``(id, event, data)``s."""

    def __init__(self, kind: str, conn) -> None:
        self.kind, self.conn = kind, conn

    @classmethod
    async def connect(cls, kind: str, port: int, last_event_id: str | None = None) -> Client:
        if kind == "sse":
            headers = {"Last-Event-ID": last_event_id} if last_event_id else None
            return cls(kind, await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=headers))
        path = "/ws" + (f"?last_event_id={quote(last_event_id)}" if last_event_id else "")
        client_cls = TornadoWS if kind == "tornado" else LibWS
        return cls(kind, await client_cls.connect(port, path))

    async def read(self, n: int, timeout: float = 10.0) -> list[tuple[str, str, object]]:
        if self.kind == "sse":
            return [(e.id, e.type, e.data) for e in await self.conn.read_events(n, timeout=timeout)]
        out = []
        for _ in range(n):
            if self.kind == "tornado":
                raw = await asyncio.wait_for(self.conn.conn.read_message(), timeout)
            else:
                raw = await asyncio.wait_for(self.conn.conn.recv(), timeout)
            frame = json.loads(raw)
            out.append((frame["id"], frame.get("event", "message"), frame["data"]))
        return out

    async def close(self) -> None:
        # An abrupt drop (a clean close would wait for a server still sending).
        if self.kind == "sse":
            self.conn.close_rst()
        elif self.kind == "tornado":
            self.conn.conn.close()
        else:
            self.conn.conn.transport.abort()


KINDS = ["sse", "tornado", "websockets"]


def gap_of(item) -> dict:
    event_id, event, data = item
    assert event == GAP_EVENT, item
    return json.loads(data) if isinstance(data, str) else data


class Feed:
    """Submits ``msg <n>`` for n in range(total) through ``store``, a few per loop turn."""

    def __init__(self, store, total: int, start: int = 0, per_iteration: int = 10) -> None:
        self.store, self.total, self.start, self.per_iteration = store, total, start, per_iteration
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        n = self.start
        end = self.start + self.total
        while n < end:
            for _ in range(min(self.per_iteration, end - n)):
                self.store.submit(f"msg {n}")
                n += 1
            await asyncio.sleep(0.001)
        await self.store.submit("fence")  # every plain submit before it is in Redis
        # (the fence itself is never read by the tests: they count only "msg" items)


def numbers(items) -> list[int]:
    return [int(data.split()[1]) for _, event, data in items if event == "message"]


# -- without a running loop --------------------------------------------------------------


@pytest.mark.usefixtures("redis_py")
def test_created_before_any_loop_and_bad_arguments():
    store = RedisStreamStore("prices", maxlen=10, port=free_port())
    assert (store.stream, store.maxlen, store.subscribed) == ("prices", 10, False)
    with pytest.raises(RuntimeError, match="event loop running"):
        store.submit("no loop")
    with pytest.raises(TypeError):
        store.submit(object())
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamStore(maxlen=0)
    with pytest.raises(TypeError):
        RedisStreamStore(no_such_redis_option=1)
    store.shutdown()


def test_importing_the_stores_does_not_import_redis():
    code = (
        "import sys, tornadose.stores, tornadose.redis.streams; assert 'redis' not in sys.modules;"
        "from tornadose.stores import RedisStreamStore"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_stream_ids_parse_strictly():
    from tornadose.redis.streams import format_stream_id, parse_stream_id

    assert parse_stream_id("1718000000000-5") == 1718000000000 << 64 | 5
    assert format_stream_id(parse_stream_id("1718000000000-5")) == b"1718000000000-5"
    assert parse_stream_id("0-0") == 0
    assert parse_stream_id("1-18446744073709551615") + 1 == parse_stream_id("2-0")
    for bad in [
        "",
        "5",
        "-5",
        "5-",
        "a-1",
        "1-b",
        " 1-1",
        "1-1 ",
        "١-١",
        "1-18446744073709551616",
        "1-2-3",
    ]:
        assert parse_stream_id(bad) is None, bad


def info(first=None, last="9-0", added=None, length=None) -> dict:
    """An XINFO STREAM reply as redis-py parses it (Redis 6 has no entries-added)."""
    reply = {
        "last-generated-id": last.encode(),
        "first-entry": (first.encode(), {}) if first else None,
    }
    if added is not None:
        reply.update({"entries-added": added, "length": length})
    return reply


@pytest.mark.parametrize(
    "reply, after, expected",
    [
        (None, 0, None),  # no stream yet, nothing read yet
        (None, 5 << 64, "restarted"),  # the stream is gone
        (info("3-0", added=7, length=7), 5 << 64, None),  # `after` still there
        (info("6-0", added=7, length=3), 5 << 64, "expired"),  # trimmed past `after`
        (info("6-0", added=3, length=3), 5 << 64, "restarted"),  # nothing removed: new
        (info("6-0", added=3, length=3), 0, None),  # read from the very beginning
        (info("6-0", added=9, length=3), 0, "expired"),
        (info(None, last="4-0", added=0, length=0), 5 << 64, "restarted"),  # ids went back
        (info(None, last="5-0", added=4, length=0), 5 << 64, None),  # all read, then deleted
        (info("6-0"), 5 << 64, "expired"),  # Redis 6: a trim or a new stream, can't tell
        (info("6-0"), 0, None),
    ],
)
def test_history_problems(reply, after, expected):
    from tornadose.redis.ids import history_problem as _history_problem

    assert _history_problem(reply, after) == expected


# -- delivery ------------------------------------------------------------------------------


async def test_every_producer_reaches_sse_and_websocket_with_stream_ids(redis_server, serve):
    a = await new_store(redis_server, serve)
    clients = [await Client.connect(kind, a.port) for kind in KINDS]
    received = []

    class Custom:  # a generic-path subscriber, as the original API allows
        def submit(self, message):
            received.append(message)

    a.store.register(Custom())
    await wait_until(lambda: len(a.store.subscribers) == 4)
    first = await a.store.submit("one")  # awaited: the entry's id
    redis_server.cli(input=xadd_commands(["two\nlines", "ünïcode ✓"]))  # another producer
    await a.store.submit({"k": [1]})
    expected = ["one", "two\nlines", "ünïcode ✓", '{"k":[1]}']
    stream = redis_server.cli("XRANGE", "tornadose", "-", "+").split(b"\n")
    for client in clients:
        items = await client.read(4)
        assert [data for _, _, data in items] == expected
        assert items[0][0] == first
        ids = [i for i, _, _ in items]
        assert all(i.encode() in stream for i in ids) and ids == sorted(
            ids, key=lambda i: tuple(map(int, i.split("-")))
        )
        await client.close()
    assert received == expected
    await a.store.aclose()


# -- resuming on another process -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_drop_on_a_resume_on_b_every_message_once_in_order(redis_server, serve, kind):
    a = await new_store(redis_server, serve)
    b = await new_store(redis_server, serve)
    client = await Client.connect(kind, a.port)
    await wait_until(lambda: len(a.store.subscribers) == 1)
    feed = Feed(a.store, 1500)
    items = await client.read(400)
    await client.close()
    await asyncio.sleep(0.02)  # messages keep flowing while it is away
    again = await Client.connect(kind, b.port, last_event_id=items[-1][0])
    await feed.task
    items += await again.read(1500 - 400)
    assert numbers(items) == list(range(1500))
    ids = [parse(i) for i, _, _ in items]
    assert ids == sorted(set(ids))
    assert b.store.stats()["gaps"] == 0 and b.store.stats()["resumed"] == 1
    await again.close()
    await a.store.aclose()
    await b.store.aclose()


def parse(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@pytest.mark.parametrize("kind", ["sse", "websockets"])
async def test_id_older_than_the_ring_but_in_redis_resumes_exactly_while_messages_flow(
    redis_server, serve, kind
):
    a = await new_store(redis_server, serve)
    # B keeps 16 messages; history comes back from Redis 7 at a time while A publishes,
    # so B's ring moves on under the backfill several times before it catches up. B
    # reads at most 8 entries per XREAD: one read of more than its ring holds (B's
    # reader behind under load) would lap every subscriber, this one included.
    b = await new_store(redis_server, serve, capacity=16, backfill_page=7, read_count=8)
    ids = [await a.store.submit(f"msg {n}") for n in range(100)]
    await wait_until(lambda: b.store.stats()["messages"] == 100)
    feed = Feed(a.store, 400, start=100, per_iteration=3)
    client = await Client.connect(kind, b.port, last_event_id=ids[9])
    # The client reads as the messages come, as a real one does: a client that read
    # nothing until the feed ended would depend on the kernel's socket buffers holding
    # all 490 events, or be lapped on B's 16-message ring (seen once in CI under load).
    reading = asyncio.ensure_future(client.read(490, timeout=20))
    await feed.task
    items = await reading
    assert numbers(items) == list(range(10, 500))
    assert [i for i, _, _ in items[:90]] == ids[10:]
    stats = b.store.stats()
    assert (stats["resumed"], stats["gaps"], stats["resuming"]) == (1, 0, 0)
    assert stats["backfilled"] >= 84
    await client.close()
    await a.store.aclose()
    await b.store.aclose()


async def test_resume_from_a_process_that_is_ahead(redis_server, serve):
    """B has not read yet what the client saw on A: B waits for it instead of sending
    it twice."""
    a = await new_store(redis_server, serve)
    b = await new_store(redis_server, serve)
    first = await a.store.submit("msg 0")
    await wait_until(lambda: b.store.stats()["messages"] == 1)
    b.store._last_key -= 1  # as if B's reader lagged behind A's: an id from its future
    b.store._ids[1 % len(b.store._ids)] -= 1
    client = await Client.connect("sse", b.port, last_event_id=first)
    await wait_until(lambda: b.store.stats()["resuming"] == 1)
    await a.store.submit("msg 1")
    assert numbers(await client.read(1)) == [1]
    assert b.store.stats()["resumed"] == 1
    await client.close()
    await a.store.aclose()
    await b.store.aclose()


@pytest.mark.parametrize("kind", ["sse", "tornado"])
async def test_trimmed_malformed_and_unknown_ids_get_a_gap_notice_then_live_data(
    redis_server, serve, kind
):
    a = await new_store(redis_server, serve, capacity=8)
    ids = [await a.store.submit(f"msg {n}") for n in range(50)]
    await wait_until(lambda: a.store.stats()["messages"] == 50)
    redis_server.cli("XTRIM", "tornadose", "MAXLEN", "20")  # exact: 0..29 are gone
    cases = {
        ids[5]: ("expired", "expired"),  # older than the ring, trimmed from Redis
        "garbage": ("malformed", None),
        "99999999999999-0": ("unknown", None),  # no stream has that id yet
    }
    clients = {}
    for last_id in cases:
        clients[last_id] = await Client.connect(kind, a.port, last_event_id=last_id)
    await wait_until(lambda: a.store.stats()["gaps"] == 3, what="three gap notices")
    live = await a.store.submit("msg 50")
    for last_id, (reason, _) in cases.items():
        gap, item = await clients[last_id].read(2)
        assert gap_of(gap) == {"reason": reason, "last_event_id": last_id, "missed": None}
        assert gap[0] == ids[-1], "the notice's id is the live position"
        assert item == (live, "message", "msg 50")
        await clients[last_id].close()
    # Still in Redis (though not in the ring): exact, no notice.
    exact = await Client.connect(kind, a.port, last_event_id=ids[35])
    assert numbers(await exact.read(15)) == list(range(36, 51))
    await exact.close()
    await a.store.aclose()


async def test_clients_leaving_or_frozen_during_their_backfill_leave_nothing_behind(
    redis_server, serve
):
    a = await new_store(redis_server, serve, capacity=8, backfill_page=20, write_timeout=0.3)
    for _ in range(1500):
        a.store.submit("x" * 3000)  # 4.5 MB of history: more than socket buffers hold
    await a.store.submit("fence")  # every plain submit before it is in Redis
    await wait_until(lambda: a.store.stats()["messages"] == 1501)
    clients = []
    for _ in range(2):
        clients.append(
            await RawSSEClient.connect(
                "127.0.0.1",
                a.port,
                "/sse",
                headers={"Last-Event-ID": "0-0"},
                rcvbuf=1024,
                limit=256,
            )
        )
        await wait_until(lambda: len(a.store.subscribers) == len(clients))
        for handler in a.store.subscribers:  # no send-buffer autotuning: they fill up
            server_stream(handler).socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
    frozen, leaving = clients
    await asyncio.sleep(0.1)
    assert a.store.stats()["resuming"] == 2
    leaving.close_rst()  # leaves mid-backfill; the frozen one is dropped after 0.3 s
    await wait_until(lambda: a.store.stats()["subscribers"] == 0, what="both gone")
    stats = a.store.stats()
    assert (stats["resuming"], stats["timed_out"], stats["resumed"]) == (0, 1, 0)
    assert len(a.store._fanout) == 0 and not a.store._backfills
    assert 0 < stats["backfilled"] < 2 * 1500
    frozen.close_fin()
    await a.store.aclose()


# -- Redis going away ----------------------------------------------------------------------


@pytest.mark.allow_log_errors
async def test_dropped_connections_resume_from_the_last_id_read_without_loss(
    redis_server, serve, caplog
):
    caplog.set_level(logging.INFO, logger="tornadose.redis")
    a = await new_store(redis_server, serve, reconnect_delay_min=0.3)
    clients = [await Client.connect(kind, a.port) for kind in KINDS]
    await wait_until(lambda: len(a.store.subscribers) == 3)
    for n in range(5):
        a.store.submit(f"msg {n}")
    for client in clients:
        assert numbers(await client.read(5)) == list(range(5))
    redis_server.cli("CLIENT", "KILL", "TYPE", "normal")  # Redis keeps its data
    await wait_until(lambda: not a.store.subscribed, what="the outage noticed")
    redis_server.cli(input=xadd_commands([f"msg {n}" for n in range(5, 10)]))  # meanwhile
    await asyncio.wait_for(a.store.start(), 10)
    await a.store.submit("msg 10")
    for client in clients:
        assert numbers(await client.read(6)) == list(range(5, 11))
        await client.close()
    assert a.store.stats()["gaps"] == 0
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tornadose.redis"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    assert "no connection" in logged[0][1] and "resumes after" in logged[0][1]
    assert all(r.exc_info is None for r in caplog.records)
    await a.store.aclose()


@pytest.mark.allow_log_errors
async def test_trimmed_while_disconnected_gives_every_subscriber_an_expired_notice(
    redis_server, serve, caplog
):
    a = await new_store(redis_server, serve, reconnect_delay_min=0.5)
    clients = [await Client.connect(kind, a.port) for kind in ("sse", "websockets")]
    await wait_until(lambda: len(a.store.subscribers) == 2)
    last = await a.store.submit("msg 0")
    await wait_until(lambda: a.store.stats()["messages"] == 1)
    redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
    # Before the reader is back: 30 more, of which only the newest 10 survive.
    redis_server.cli(input=xadd_commands([f"msg {n}" for n in range(1, 31)]))
    redis_server.cli("XTRIM", "tornadose", "MAXLEN", "10")
    for client in clients:
        first, gap, *rest = await client.read(12)
        assert numbers([first]) == [0]
        assert gap_of(gap) == {"reason": "expired", "last_event_id": last, "missed": None}
        assert numbers(rest) == list(range(21, 31))
        ids = [parse(i) for i, _, _ in [first, gap, *rest]]
        assert ids == sorted(ids)
        await client.close()
    (lost,) = [r for r in records(caplog, logging.WARNING) if "lost" in r.getMessage()]
    assert "trimmed" in lost.getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    await a.store.aclose()


@pytest.mark.allow_log_errors
async def test_redis_killed_and_restarted_empty_mid_stream(redis_server, serve, caplog):
    caplog.set_level(logging.INFO, logger="tornadose.redis")
    a = await new_store(redis_server, serve)
    b = await new_store(redis_server, serve, capacity=4)
    clients = [await Client.connect(kind, a.port) for kind in KINDS]
    await wait_until(lambda: len(a.store.subscribers) == 3)
    ids = [await a.store.submit(f"msg {n}") for n in range(10)]
    for client in clients:
        assert numbers(await client.read(10)) == list(range(10))

    redis_server.stop()  # SIGKILL: a crash; no persistence, so the stream is gone
    await wait_until(lambda: not a.store.subscribed, what="the store noticing the outage")
    with pytest.raises(ConnectionError):
        await a.store.submit("lost")
    a.store.submit("lost too")
    await asyncio.sleep(0.3)  # a few reconnection attempts, silently
    assert len(a.store.subscribers) == 3, "subscribers stay connected"

    redis_server.start()
    await asyncio.wait_for(a.store.start(), 10)
    await asyncio.wait_for(b.store.start(), 10)
    after = [await a.store.submit(f"msg {n}") for n in range(10, 15)]
    for client in clients:
        gap, *rest = await client.read(6)
        assert gap_of(gap) == {"reason": "restarted", "last_event_id": ids[-1], "missed": None}
        assert numbers(rest) == list(range(10, 15)) and [i for i, _, _ in rest] == after
        await client.close()
    # Resuming with an id from before the restart: from A's ring (exact up to the
    # notice), or, where no ring holds it, from Redis, which says the stream is new.
    from_ring = await Client.connect("sse", a.port, last_event_id=ids[7])
    items = await from_ring.read(8)
    assert numbers(items[:2]) == [8, 9] and gap_of(items[2])["reason"] == "restarted"
    assert numbers(items[3:]) == list(range(10, 15))
    await wait_until(lambda: b.store._last_key == a.store._last_key)
    from_redis = await Client.connect("sse", b.port, last_event_id=ids[7])
    gap = (await from_redis.read(1))[0]
    # Redis < 7 does not count entries ever added, so it cannot tell a new stream from
    # a trimmed one.
    reasons = {"restarted"} if redis_version(redis_server) >= (7,) else {"restarted", "expired"}
    assert gap_of(gap)["reason"] in reasons and gap[0] == after[-1]
    for client in (from_ring, from_redis):
        await client.close()

    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tornadose.redis"]
    a_logs = [(level, m) for level, m in logged if "could not publish" in m or "works again" in m]
    assert [level for level, _ in a_logs] == ["ERROR", "INFO"], logged
    warnings = [m for level, m in logged if level == "WARNING"]
    assert len(warnings) == 4, warnings  # per store: the outage, then the lost stream
    assert sum("no connection" in m for m in warnings) == 2
    assert sum("restarted without persistence" in m for m in warnings) == 2
    assert sum("reconnected" in m for _, m in logged) == 2
    assert all(r.exc_info is None for r in caplog.records)
    await a.store.aclose()
    await b.store.aclose()


# -- lifecycle ---------------------------------------------------------------------------


async def test_shutdown_then_start_again_resumes_from_the_last_id(redis_server):  # noqa: F811
    store = RedisStreamStore(host="127.0.0.1", port=redis_server.port)
    received = []

    class Custom:
        def submit(self, message):
            received.append(message)

    store.register(Custom())
    await asyncio.wait_for(store.start(), 5)
    await store.submit("before")
    await wait_until(lambda: received == ["before"])
    await store.shutdown()
    assert not store.subscribed
    assert asyncio.all_tasks() == {asyncio.current_task()}
    redis_server.cli(input=xadd_commands(["while shut down"]))
    await asyncio.wait_for(store.start(), 5)
    await store.submit("after")
    await wait_until(lambda: len(received) == 3)
    assert received == ["before", "while shut down", "after"]
    await store.aclose()


# -- the multi-process recipe ---------------------------------------------------------------


async def test_n_processes_on_one_port_resume_on_any_of_them(redis_server):  # noqa: F811
    async with stream_workers(redis_server.port) as workers:
        port, pids = workers.port, workers.pids

        async def connect(last_event_id=None, other_than=None) -> RawSSEClient:
            return await connect_to_worker(port, "/sse", last_event_id, other_than)

        first = await connect()
        first_pid = int(first.headers["x-worker-pid"])
        second = await connect(other_than=first_pid)
        assert {first_pid, int(second.headers["x-worker-pid"])} == pids

        http = AsyncHTTPClient()

        async def stats():
            return [
                json.loads((await http.fetch(f"http://127.0.0.1:{port}/stats")).body)
                for _ in range(8)
            ]

        for _ in range(200):  # both subscribed (each /stats lands on either worker)
            if {s["pid"] for s in await stats() if s["subscribers"] == 1} == pids:
                break
            await asyncio.sleep(0.01)
        messages = [f"msg {n}" for n in range(100)]
        await asyncio.to_thread(redis_server.cli, input=xadd_commands(messages))
        assert [e.data for e in await second.read_events(100)] == messages
        seen = await first.read_events(40)
        first.close_rst()
        resumed = await connect(last_event_id=seen[-1].id, other_than=first_pid)
        seen += await resumed.read_events(60)
        assert [e.data for e in seen] == messages
        # WebSocket, on whichever worker: the same ids, the same resume.
        ws = await LibWS.connect(port, f"/ws?last_event_id={seen[89].id}")
        assert await ws.read(10) == messages[90:]
        await ws.close()
        for client in (second, resumed):
            client.close_fin()
