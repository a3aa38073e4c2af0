"""Resuming several queue topics with one id, proved by clients nobody here wrote.

Each test serves ``TopicEventSource`` / ``TopicWebSocketSubscriber`` over ONE
``TopicRegistry(QueueStore)``, publishes ~200 messages a second round-robin over T0..T5
(payload: a global counter) and subscribes a client to T0..T4 only. While publishing
goes on, the connection is cut twice (once with a TCP reset, once with a plain close or
a client abort; each right after one message of every topic was submitted in the same
loop turn, so the old connection never got those), and the client comes back by itself
with the last id it saw. Then:
every message of T0..T4 arrived exactly once and in submit order, nothing of T5, no
``tornadose-gap`` notice, and the server really saw two reconnections, each carrying
the id of the last event the client had before it lost the connection.

The clients: Chromium's native ``EventSource`` (Debian's ``chromium`` driven through
Playwright's Python package, as in ``test_browser.py``: skipped without it unless
``TORNADOSE_REQUIRE_BROWSER=1``), the ``requests-sse`` library (reconnects by itself and
sends ``Last-Event-Id``), and the ``websockets`` library over WebSocket with
``?last_event_id=``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornadose.handlers import TopicEventSource, TopicWebSocketSubscriber
from tornadose.stores import GAP_EVENT, QueueStore
from tornadose.topics import TopicRegistry

from .helpers import LoopThread
from .test_browser import launched_chromium

SUBSCRIBED = ["T0", "T1", "T2", "T3", "T4"]
OTHER = "T5"  # published to, never subscribed
TOPICS = [*SUBSCRIBED, OTHER]
RATE = 200  # messages per second, all topics together
RETRY_MS = 200  # the retry: hint, so that clients come back quickly
PHASE = 1.5  # seconds of publishing between the cuts
QUERY = "topics=" + ",".join(SUBSCRIBED)

# What a client records of each event or frame: (event type, data, id), in arrival order.
Got = tuple[str, str, str]


# -- the server side ---------------------------------------------------------------------


class Feed:
    """A queue-topic registry, its SSE and WebSocket routes, and a publisher.

    Every connection is recorded with the id it came back with (``came_back_with``,
    ``None`` for the first) and how many messages were published when it arrived; the
    ones open now can be cut (``cut(rst=...)``) as a crash or a network fault would.
    All methods run on the server's event loop.
    """

    def __init__(self) -> None:
        self.registry = TopicRegistry(QueueStore)
        self.published: dict[str, list[int]] = {name: [] for name in TOPICS}
        self.count = 0
        self.came_back_with: list[str | None] = []
        self.published_at_connect: list[int] = []
        self.open: set[Any] = set()
        self._stop = False
        self._publisher: asyncio.Task[None] | None = None

    def routes(self) -> list[Any]:
        return [
            (r"/sse", CuttableEventSource, {"feed": self, "retry": RETRY_MS}),
            (r"/ws", CuttableWebSocket, {"feed": self}),
        ]

    def arrived(self, handler: Any, last_event_id: str | None) -> None:
        self.came_back_with.append(last_event_id)
        self.published_at_connect.append(self.count)
        self.open.add(handler)

    def left(self, handler: Any) -> None:
        self.open.discard(handler)

    def cut(self, rst: bool) -> int:
        """Cut every open connection at the TCP level, whatever is in flight; with
        ``rst`` the kernel drops what it still had to send and answers with a reset.

        One message of each topic is submitted first, in the same loop turn: those are
        in the log but never reach the old connection, so the resume must bring them.
        """
        self.burst()
        handlers = list(self.open)
        for handler in handlers:
            stream = handler.raw_stream()
            if rst:
                linger = struct.pack("ii", 1, 0)
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            stream.close()
        return len(handlers)

    def start_publishing(self) -> None:
        self._publisher = asyncio.get_running_loop().create_task(self._publish())

    async def stop_publishing(self) -> None:
        """Stop the publisher; nothing is published once this returns."""
        self._stop = True
        if self._publisher is not None:
            await self._publisher

    async def _publish(self) -> None:
        # Paced by the clock, so the rate holds however late the loop wakes us (a burst
        # only runs ahead of it).
        start = time.monotonic()
        while not self._stop:
            due = int((time.monotonic() - start) * RATE)
            while self.count < due:
                self._submit_next()
            await asyncio.sleep(0.005)

    def _submit_next(self) -> None:
        name = TOPICS[self.count % len(TOPICS)]
        self.registry.submit(name, self.count)
        self.published[name].append(self.count)
        self.count += 1

    def burst(self) -> None:
        """One message of each topic, now."""
        for _ in TOPICS:
            self._submit_next()

    def expected(self) -> list[int]:
        """Every message of the subscribed topics, in submit order."""
        return sorted(n for name in SUBSCRIBED for n in self.published[name])


class CuttableEventSource(TopicEventSource):
    def initialize(self, feed: Feed, retry: int) -> None:  # type: ignore[override]
        self.feed = feed
        super().initialize(feed.registry, retry=retry)

    def prepare(self) -> None:
        self.feed.arrived(self, self.request.headers.get("Last-Event-ID"))
        super().prepare()

    def on_connection_close(self) -> None:
        self.feed.left(self)
        super().on_connection_close()

    def on_finish(self) -> None:
        self.feed.left(self)
        super().on_finish()

    def raw_stream(self) -> Any:
        return self.request.connection.stream  # type: ignore[union-attr]


class CuttableWebSocket(TopicWebSocketSubscriber):
    def initialize(self, feed: Feed) -> None:  # type: ignore[override]
        self.feed = feed
        super().initialize(feed.registry)

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.feed.arrived(self, self.get_query_argument("last_event_id", None))
        super().open(*args, **kwargs)

    def on_close(self) -> None:
        self.feed.left(self)
        super().on_close()

    def raw_stream(self) -> Any:
        return self.ws_connection.stream  # type: ignore[union-attr]


def reconnected(n: int) -> Callable[[Feed], bool]:
    """The n-th connection is in and subscribed (and no other)."""
    return lambda feed: len(feed.came_back_with) == n and feed.registry.connections == 1


def connected(feed: Feed, n: int) -> Callable[[], bool]:
    return lambda: reconnected(n)(feed)


async def received_all(feed: Feed, got: list) -> None:
    """Stop publishing, then give the client time to receive everything (and anything
    extra, a duplicate, time to arrive); the checks afterwards say what is missing."""
    await feed.stop_publishing()
    expected = len(feed.expected())
    try:
        await wait_until(lambda: len(got) >= expected, "every message", timeout=10)
    except AssertionError:
        pass
    await asyncio.sleep(0.3)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- the checks, the same for every client ------------------------------------------------


def differences(expected: list[int], received: list[int]) -> str:
    """What is wrong with ``received``, readably (the lists are long)."""
    want, have = Counter(expected), Counter(received)
    missing = sorted((want - have).elements())
    extra = sorted((have - want).elements())
    duplicated = sorted(n for n, k in have.items() if k > 1)
    out_of_order = [(a, b) for a, b in zip(received, received[1:]) if a > b]
    return (
        f"{len(expected)} expected, {len(received)} received; missing {missing[:20]}"
        f"{'...' if len(missing) > 20 else ''} ({len(missing)}); unexpected {extra[:20]}; "
        f"duplicated {duplicated[:20]} ({len(duplicated)}); out of order {out_of_order[:10]}"
    )


def check_delivery(
    feed: Feed, got: list[Got], lost_with: list[str | None], reconnections: int = 2
) -> None:
    """``got``: what the client received, in order; ``lost_with``: the id of the last
    event it had each time it lost its connection (``None``: it had none yet)."""
    gaps = [event for event in got if event[0] == GAP_EVENT]
    assert not gaps, f"gap notices where the log still held everything: {gaps}"
    foreign = [event for event in got if event[0] not in SUBSCRIBED]
    assert not foreign, f"{len(foreign)} events of other topics or types, first: {foreign[:5]}"

    for name in SUBSCRIBED:
        received = [int(data) for kind, data, _ in got if kind == name]
        assert received == feed.published[name], f"topic {name}: " + differences(
            feed.published[name], received
        )
    # Across topics too, the order is submit order: all of them, each once.
    everything = [int(data) for _, data, _ in got]
    expected = feed.expected()
    assert everything == expected, "all topics: " + differences(expected, everything)
    assert len(expected) > 0.8 * RATE * 3 * PHASE * len(SUBSCRIBED) / len(TOPICS)

    # Ids are positions in one log: one epoch, strictly increasing positions.
    ids = [event_id for _, _, event_id in got]
    epochs = {event_id.rpartition("-")[0] for event_id in ids}
    assert len(epochs) == 1, epochs
    positions = [int(event_id.rpartition("-")[2]) for event_id in ids]
    assert all(a < b for a, b in zip(positions, positions[1:])), "ids not increasing"

    # It really came back, twice, each time with the id of the last event it had
    # (and so needed what was published meanwhile replayed).
    assert feed.came_back_with[0] is None
    assert feed.came_back_with[1:] == lost_with, (feed.came_back_with, lost_with)
    assert len(lost_with) == reconnections
    data_of = {event_id: int(data) for _, data, event_id in got}
    for last_id, published in zip(lost_with, feed.published_at_connect[1:]):
        assert last_id is not None
        replayed = [n for n in expected if data_of[last_id] < n < published]
        assert replayed, f"nothing had to be replayed after {last_id}: not a real resume"
    stats = feed.registry.stats()
    assert (stats["resumed"], stats["gaps"]) == (reconnections, 0), stats


# -- 1. Chromium's native EventSource ------------------------------------------------------

PAGE = """<!doctype html>
<meta charset="utf-8"><link rel="icon" href="data:,"><title>topic resume</title>
<script>
  // Every event of every topic (T5 too: the server must send none), any default
  // "message" and any gap notice, as [type, data, lastEventId]; and at each error the
  // state and the id of the last event the page had.
  window.feed = {events: [], opens: 0, errors: []};
  const es = new EventSource("/sse?%(query)s");
  let lastId = null;
  for (const type of [%(types)s, "message", "%(gap)s"]) {
    es.addEventListener(type, (e) => {
      feed.events.push([e.type, e.data, e.lastEventId]);
      lastId = e.lastEventId;
    });
  }
  es.onopen = () => { feed.opens += 1; };
  es.onerror = () => { feed.errors.push([es.readyState, lastId]); };
</script>
""" % {
    "query": QUERY,
    "types": ", ".join(f'"{name}"' for name in TOPICS),
    "gap": GAP_EVENT,
}


class PageHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE)


class ServerThread(LoopThread):
    """The feed's server on a loop of its own (see LoopThread)."""

    def __init__(self) -> None:
        super().__init__()
        self.feed: Feed = self.call(Feed)
        self.port, self.server = self.call(self._listen)

    def _listen(self) -> tuple[int, HTTPServer]:
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(Application([(r"/", PageHandler), *self.feed.routes()]))
        server.add_sockets(sockets)
        return sockets[0].getsockname()[1], server

    def wait_for(self, condition: Callable[[Feed], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(condition, self.feed):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def stop(self) -> None:
        async def close() -> None:
            self.server.stop()
            await self.server.close_all_connections()

        self.call(self.feed.stop_publishing)
        self.call(close)
        self.close()


@pytest.fixture
def chromium() -> Iterator[Any]:
    # Function-scoped: while Playwright's sync API is started, the thread has a running
    # event loop, and the async tests of this module could not run their own.
    yield from launched_chromium()


@pytest.fixture
def server_thread() -> Iterator[ServerThread]:
    server = ServerThread()
    yield server
    server.stop()


def test_chromium_eventsource_resumes_five_topics_after_two_cuts(chromium, server_thread):
    server, feed = server_thread, server_thread.feed
    context = chromium.new_context()
    try:
        page = context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{server.port}/")
        # Publishing starts once the page is subscribed: it must then get everything.
        server.wait_for(reconnected(1), "the page's EventSource to subscribe")
        server.call(feed.start_publishing)
        for n, rst in ((2, True), (3, False)):
            time.sleep(PHASE)
            assert server.call(feed.cut, rst) == 1
            server.wait_for(reconnected(n), f"the browser to reconnect by itself ({n - 1})")
        time.sleep(PHASE)
        server.call(feed.stop_publishing)
        expected = len(server.call(feed.expected))
        try:
            page.wait_for_function(
                "(n) => window.feed.events.length >= n", arg=expected, timeout=10_000
            )
        except Exception:
            pass  # the checks below say what is missing
        time.sleep(0.3)  # anything extra (a duplicate) would have arrived by now
        state = page.evaluate("window.feed")
        assert not page_errors, page_errors
    finally:
        context.close()

    got = [(kind, data, event_id) for kind, data, event_id in state["events"]]
    # Each loss was an error with the EventSource still CONNECTING (0): it retried.
    assert [ready for ready, _ in state["errors"]] == [0, 0], state["errors"]
    assert state["opens"] == 3
    check_delivery(feed, got, [last_id for _, last_id in state["errors"]])


# -- 2. a third-party SSE client library: requests-sse ---------------------------------------


class _Stop(Exception):
    """Raised from the client's error callback to end it once the test is done."""


async def test_requests_sse_resumes_five_topics_after_two_cuts(serve):
    from requests_sse import EventSource as RequestsEventSource

    feed = Feed()
    port = await serve(feed.routes())
    got: list[Got] = []
    lost_with: list[str | None] = []
    done = threading.Event()

    def on_error() -> None:
        # The library calls this when the stream breaks, then reconnects by itself
        # with Last-Event-Id after the server's retry: hint (doubled).
        lost_with.append(got[-1][2] if got else None)
        if done.is_set():
            raise _Stop

    def consume() -> None:
        try:
            with RequestsEventSource(
                f"http://127.0.0.1:{port}/sse?{QUERY}",
                reconnection_time=timedelta(milliseconds=RETRY_MS),
                max_connect_retry=0,
                timeout=10,
                on_error=on_error,
            ) as source:
                for event in source:
                    got.append((event.type, event.data, event.last_event_id))
        except _Stop:
            pass

    client = asyncio.get_running_loop().run_in_executor(None, consume)
    try:
        await wait_until(connected(feed, 1), "the client to subscribe")
        feed.start_publishing()
        for n, rst in ((2, True), (3, False)):
            await asyncio.sleep(PHASE)
            assert feed.cut(rst) == 1
            await wait_until(connected(feed, n), f"the client to reconnect by itself ({n - 1})")
        await asyncio.sleep(PHASE)
        await received_all(feed, got)
    finally:
        await feed.stop_publishing()
        done.set()
        feed.registry.close()  # ends the stream: the client's error callback stops it
        await asyncio.wait_for(client, 15)

    assert lost_with[-1] == (got[-1][2] if got else None)  # the end, not a loss
    check_delivery(feed, got, lost_with[:-1])


# -- 3. WebSocket with ?last_event_id=, the websockets library --------------------------------


async def test_websockets_client_resumes_five_topics_after_two_cuts(serve):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    feed = Feed()
    port = await serve(feed.routes())
    got: list[Got] = []
    lost_with: list[str | None] = []
    current: list[Any] = [None]  # the client's connection now
    opened = [0]
    done = asyncio.Event()

    async def consume() -> None:
        # websockets reconnects only to the same URL: this loop comes back with the id
        # of the last frame it saw, as an application would.
        while not done.is_set():
            last = got[-1][2] if got else None
            url = f"ws://127.0.0.1:{port}/ws?{QUERY}"
            if last is not None:
                url += f"&last_event_id={quote(last)}"
            async with connect(url) as ws:
                current[0] = ws
                opened[0] += 1
                try:
                    async for raw in ws:
                        frame = json.loads(raw)
                        got.append((frame["event"], str(frame["data"]), frame["id"]))
                except ConnectionClosed:
                    pass
            if done.is_set():
                return
            lost_with.append(got[-1][2] if got else None)
            await asyncio.sleep(RETRY_MS / 1000)

    def server_reset() -> None:
        assert feed.cut(rst=True) == 1

    def client_abort() -> None:
        # In the same loop turn as the burst: what it submitted never reaches this socket.
        feed.burst()
        current[0].transport.abort()

    client = asyncio.ensure_future(consume())
    try:
        await wait_until(connected(feed, 1), "the client to subscribe")
        await wait_until(lambda: opened[0] == 1, "the client to see it open")
        feed.start_publishing()
        # First the server resets the TCP connection; then the client drops it without
        # a closing handshake.
        for n, cut in ((2, server_reset), (3, client_abort)):
            await asyncio.sleep(PHASE)
            cut()
            await wait_until(connected(feed, n), f"the client to reconnect ({n - 1})")
            await wait_until(lambda n=n: opened[0] == n, "the client to see it open")
        await asyncio.sleep(PHASE)
        await received_all(feed, got)
    finally:
        await feed.stop_publishing()
        done.set()
        if current[0] is not None:
            await current[0].close()
        await asyncio.wait_for(client, 15)

    check_delivery(feed, got, lost_with)
