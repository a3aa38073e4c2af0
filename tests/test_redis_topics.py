"""TopicRegistry(RedisStreamStore): topics as views of ONE Redis stream, resumable on any
process with the one id a client keeps. Real redis-server, real Tornado servers, real
clients.

"Process A" and "process B" are two registries in this process, each with its own log,
reader and HTTP port, sharing nothing but Redis; one test runs two real worker
processes on one port (tests/servers/redis_stream_server.py --topics).
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from tornadose.handlers import TopicEventSource, TopicWebSocketSubscriber
from tornadose.stores import GAP_EVENT, RedisStreamStore
from tornadose.topics import TopicRegistry

from . import redis_server as fixtures
from .helpers import LibWS, wait_until
from .redis_server import RedisServer, connect_to_worker, stream_workers
from .sseclient import RawSSEClient

redis_py, redis_server = fixtures.redis_py, fixtures.redis_server

TOPICS = ["T0", "T1", "T2", "T3", "T4"]
MINE = "T0,T2,T3"


async def new_registry(redis: RedisServer, serve, **kwargs) -> SimpleNamespace:
    page = kwargs.pop("backfill_page", None)
    registry = TopicRegistry(RedisStreamStore, host="127.0.0.1", port=redis.port, **kwargs)
    if page is not None:
        registry._log.backfill_page = page
    port = await serve(
        [
            (r"/sse", TopicEventSource, {"registry": registry}),
            (r"/ws", TopicWebSocketSubscriber, {"registry": registry}),
        ]
    )
    await asyncio.wait_for(registry.start(), 5)
    return SimpleNamespace(registry=registry, port=port)


class Client:
    """An SSE or `websockets` subscriber to MINE; ``read(n)`` gives (id, topic, data)."""

    def __init__(self, kind: str, conn) -> None:
        self.kind, self.conn = kind, conn

    @classmethod
    async def connect(cls, kind: str, port: int, last_event_id: str | None = None) -> Client:
        if kind == "sse":
            headers = {"Last-Event-ID": last_event_id} if last_event_id else None
            path = f"/sse?topics={MINE}"
            return cls(kind, await RawSSEClient.connect("127.0.0.1", port, path, headers=headers))
        query = f"&last_event_id={quote(last_event_id)}" if last_event_id else ""
        return cls(kind, await LibWS.connect(port, f"/ws?topics={MINE}{query}"))

    async def read(self, n: int, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        if self.kind == "sse":
            return [(e.id, e.type, e.data) for e in await self.conn.read_events(n, timeout=timeout)]
        frames = [
            json.loads(await asyncio.wait_for(self.conn.conn.recv(), timeout)) for _ in range(n)
        ]
        return [(f["id"], f["event"], f["data"]) for f in frames]

    async def drop(self) -> None:
        if self.kind == "sse":
            self.conn.close_rst()
        else:
            self.conn.conn.transport.abort()


def expected(total: int) -> list[tuple[str, str]]:
    mine = MINE.split(",")
    return [(TOPICS[n % 5], f"msg {n}") for n in range(total) if TOPICS[n % 5] in mine]


async def feed(registry: TopicRegistry, total: int, per_turn: int = 5) -> list[str]:
    """Submit ``msg n`` to topic T(n % 5); returns the stream ids, in order."""
    pending = []
    for n in range(total):
        pending.append(registry.submit(TOPICS[n % 5], f"msg {n}"))
        if n % per_turn == per_turn - 1:
            await asyncio.sleep(0.001)
    return [await p for p in pending]


def stream_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@pytest.mark.parametrize("kind", ["sse", "websockets"])
async def test_drop_on_a_resume_on_b_every_tick_of_every_topic_once(redis_server, serve, kind):
    a = await new_registry(redis_server, serve)
    b = await new_registry(redis_server, serve)
    client = await Client.connect(kind, a.port)
    await wait_until(lambda: a.registry.connections == 1)
    publishing = asyncio.ensure_future(feed(a.registry, 1000))
    items = await client.read(200)
    await client.drop()
    await asyncio.sleep(0.05)  # ticks keep flowing while it is away
    again = await Client.connect(kind, b.port, last_event_id=items[-1][0])
    ids = await publishing
    items += await again.read(600 - 200)
    assert [(topic, data) for _, topic, data in items] == expected(1000)
    # Ids are the stream's, the same on both processes, increasing.
    assert [i for i, _, _ in items] == [ids[n] for n in range(1000) if n % 5 in (0, 2, 3)]
    assert sorted(items, key=lambda item: stream_key(item[0])) == items
    stats = b.registry.stats()
    assert (stats["resumed"], stats["gaps"]) == (1, 0)
    await again.drop()
    await a.registry.aclose()
    await b.registry.aclose()


async def test_a_client_that_comes_back_to_the_same_process_resumes_exactly(
    redis_server, serve
):
    """Its topics exist in that process only while someone holds them; what the log
    read of them meanwhile is still found when the client comes back."""
    a = await new_registry(redis_server, serve)
    b = await new_registry(redis_server, serve)
    client = await Client.connect("sse", b.port)
    await wait_until(lambda: b.registry.connections == 1)
    await feed(a.registry, 50)
    items = await client.read(len(expected(50)))
    await client.drop()
    await wait_until(lambda: b.registry.connections == 0)
    assert "T0" not in b.registry  # released: no publisher here, nobody subscribed
    await feed(a.registry, 50)
    await wait_until(lambda: b.registry.stats()["messages"] == 100)
    again = await Client.connect("sse", b.port, last_event_id=items[-1][0])
    rest = await again.read(len(expected(100)) - len(items))
    assert [(t, d) for _, t, d in items + rest] == expected(50) + expected(50)
    assert b.registry.stats()["gaps"] == 0
    await again.drop()
    await a.registry.aclose()
    await b.registry.aclose()


async def test_an_id_older_than_the_local_log_resumes_from_redis_filtered_to_its_topics(
    redis_server, serve
):
    a = await new_registry(redis_server, serve)
    # B keeps 16 entries (all topics together); the rest comes back from Redis 7 at a
    # time, filtered to the connection's topics, while A goes on publishing.
    b = await new_registry(redis_server, serve, capacity=16, backfill_page=7)
    ids = await feed(a.registry, 200)
    await wait_until(lambda: b.registry.stats()["messages"] == 200)
    client = await Client.connect("sse", b.port, last_event_id=ids[9])
    await more(a.registry, 200, 400)
    items = await client.read(len(expected(600)) - len(expected(10)), timeout=20)
    assert [(t, d) for _, t, d in items] == expected(600)[len(expected(10)) :]
    stats = b.registry.stats()
    assert (stats["resumed"], stats["gaps"], stats["resuming"]) == (1, 0, 0)
    assert stats["backfilled"] > 0
    await client.drop()
    await a.registry.aclose()
    await b.registry.aclose()


async def more(registry: TopicRegistry, start: int, total: int) -> None:
    for n in range(start, start + total):
        registry.submit(TOPICS[n % 5], f"msg {n}")
        if n % 3 == 0:
            await asyncio.sleep(0.001)
    await registry.submit("T1", "fence")  # (T1 is not subscribed: never read)


@pytest.mark.allow_log_errors
async def test_entries_from_other_producers_need_a_topic(redis_server, serve, caplog):
    a = await new_registry(redis_server, serve, stream="other")
    client = await Client.connect("sse", a.port)
    await wait_until(lambda: a.registry.connections == 1)
    commands = (
        b"XADD other * data no-topic\n"
        b"XADD other * topic bad/name data x\n"
        b"XADD other * topic T0 data from-cli\n"
    )
    await asyncio.to_thread(redis_server.cli, input=commands)
    ((event_id, topic, data),) = await client.read(1)
    assert (topic, data) == ("T0", "from-cli")
    skipped = [r.getMessage() for r in caplog.records if r.name == "tornadose.redis"]
    assert len(skipped) == 2 and all("skipped entry" in m for m in skipped)
    caplog.clear()
    await client.drop()
    await a.registry.aclose()


async def test_an_id_redis_no_longer_holds_gets_one_gap_notice_naming_the_topics(
    redis_server, serve
):
    a = await new_registry(redis_server, serve, stream="short", capacity=8)
    ids = await feed(a.registry, 50)
    await wait_until(lambda: a.registry.stats()["messages"] == 50)
    await asyncio.to_thread(redis_server.cli, "XTRIM", "short", "MAXLEN", "5")
    client = await Client.connect("sse", a.port, last_event_id=ids[0])
    (gap_id, event, data) = (await client.read(1))[0]
    assert event == GAP_EVENT
    notice = json.loads(data)
    assert (notice["reason"], notice["topics"]) == ("expired", MINE.split(","))
    await client.drop()
    await a.registry.aclose()


async def test_two_worker_processes_on_one_port_resume_on_either(redis_server):  # noqa: F811
    async with stream_workers(redis_server.port, "--topics", "--stream", "workers") as workers:
        port, pids = workers.port, workers.pids

        async def connect(last_event_id=None, other_than=None) -> RawSSEClient:
            return await connect_to_worker(port, f"/sse?topics={MINE}", last_event_id, other_than)

        first = await connect()
        first_pid = int(first.headers["x-worker-pid"])
        await asyncio.sleep(0.2)  # subscribed (the stream is read from its end)
        commands = "".join(f"XADD workers * topic {TOPICS[n % 5]} data {n}\n" for n in range(500))
        await asyncio.to_thread(redis_server.cli, input=commands.encode())
        mine = [str(n) for n in range(500) if n % 5 in (0, 2, 3)]
        seen = await first.read_events(100)
        first.close_rst()
        resumed = await connect(last_event_id=seen[-1].id, other_than=first_pid)
        assert int(resumed.headers["x-worker-pid"]) in pids - {first_pid}
        seen += await resumed.read_events(len(mine) - 100)
        assert [e.data for e in seen] == mine
        assert all(e.type != GAP_EVENT for e in seen)
        resumed.close_fin()
