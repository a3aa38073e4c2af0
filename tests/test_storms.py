"""A blip: every subscriber cut at once while messages flow, each coming back the way a
browser does (after its own retry hint, with its Last-Event-ID). Real server, real
sockets, our independent SSE parser."""

from __future__ import annotations

import asyncio
import time

from tornadose.handlers import EventSource
from tornadose.stores import GAP_EVENT, QueueStore

from .helpers import server_stream, wait_until
from .sseclient import RawSSEClient

N = 100


class BrowserLike:
    """An EventSource as a browser runs it: on a cut it waits its retry hint, then
    reconnects with the last id it saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list = []
        self.last_id: str | None = None
        self.retry_ms = 3000  # the spec's usual default, until the server says otherwise
        self.back_at: float | None = None
        self.cut = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else None
            client = await RawSSEClient.connect("127.0.0.1", self.port, "/sse", headers=headers)
            if self.last_id is not None:
                self.back_at = time.monotonic()
            try:
                while True:
                    (event,) = await client.read_events(1, timeout=30)
                    if client.parser.retry is not None:
                        self.retry_ms = client.parser.retry
                    self.events.append(event)
                    self.last_id = event.id
            except (EOFError, ConnectionError):
                self.cut.set()
            finally:
                client.close_fin()
            await asyncio.sleep(self.retry_ms / 1000)


async def test_every_subscriber_cut_at_once_comes_back_spread_out_and_exact(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})], sse_retry=400)
    clients = [BrowserLike(port) for _ in range(N)]
    await wait_until(lambda: len(store.subscribers) == N)
    running = True

    async def publish() -> None:
        n = 0
        while running:
            store.submit(str(n))
            n += 1
            await asyncio.sleep(0.005)  # ~200 msg/s

    publisher = asyncio.ensure_future(publish())
    await asyncio.sleep(0.3)
    cut_at = time.monotonic()
    for handler in list(store.subscribers):  # the blip: every connection dropped
        server_stream(handler).close()
    await wait_until(lambda: all(c.cut.is_set() for c in clients), what="every client cut")
    await wait_until(lambda: all(c.back_at for c in clients) and len(store.subscribers) == N)
    await asyncio.sleep(0.3)
    running = False
    await publisher
    last = store.stats()["messages"] - 1
    await wait_until(lambda: all(c.events and int(c.events[-1].data) == last for c in clients))
    for client in clients:
        client.task.cancel()
    for client in clients:
        assert all(e.type != GAP_EVENT for e in client.events)
        numbers = [int(e.data) for e in client.events]
        # Exactly once and in order across the cut: no gap, no duplicate.
        assert numbers == list(range(numbers[0], last + 1))
    stats = store.stats()
    assert (stats["resumed"], stats["gaps"]) == (N, 0)
    # The jittered hints (200-600 ms around 400) spread the returns out.
    delays = sorted(c.back_at - cut_at for c in clients)
    assert delays[-1] - delays[0] > 0.2, delays
