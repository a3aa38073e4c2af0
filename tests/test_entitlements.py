"""Who may subscribe to what: Tornado authentication on all four handlers, per-topic
entitlements (authorize_topics), and revocation (disconnect). Real server, real clients
(the independent SSE parser over raw sockets, Tornado's WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.web import HTTPError, authenticated
from tornado.websocket import websocket_connect

from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import DataStore, QueueStore
from tornadose.topics import TopicRegistry

from .helpers import wait_until
from .sseclient import RawSSEClient

# Tornado's access log records every 4xx at WARNING: refusals are what these tests do;
# refusals of ours are summarized per cause (tornadose.refusals). Anything else at
# WARNING or above still fails them (quiet_but_access below).
pytestmark = pytest.mark.allow_log_errors


@pytest.fixture(autouse=True)
def quiet_but_access(caplog: pytest.LogCaptureFixture):
    yield
    bad = [f"{r.name} {r.levelname}: {r.getMessage()}"
           for when in ("setup", "call", "teardown") for r in caplog.get_records(when)
           if r.levelno >= logging.WARNING
           and r.name not in ("tornado.access", "tornadose.refusals")]
    assert not bad, bad


TOKENS = {"t-alice": "alice", "t-bob": "bob"}
# What each user may see: alice is entitled to A and B, not to S; bob to everything.
ENTITLED = {"alice": {"A", "B"}, "bob": {"A", "B", "S"}}


class _Bearer:
    """Authentication as Tornado apps do it: get_current_user from a bearer token,
    prepare() refusing anonymous requests with 401 before anything else."""

    def get_current_user(self) -> str | None:
        header = self.request.headers.get("Authorization", "")  # type: ignore[attr-defined]
        token = header[7:] if header.startswith("Bearer ") else None
        if token is None:  # browsers' EventSource and WebSocket cannot set headers
            token = self.get_query_argument("token", None)  # type: ignore[attr-defined]
        return TOKENS.get(token or "")

    def prepare(self) -> Any:
        if not self.current_user:  # type: ignore[attr-defined]
            raise HTTPError(401)
        return super().prepare()  # type: ignore[misc]


class AuthSSE(_Bearer, EventSource):
    pass


class AuthWS(_Bearer, WebSocketSubscriber):
    pass


class LoginSSE(EventSource):
    """@authenticated: an anonymous GET is redirected to the login_url."""

    def get_current_user(self) -> str | None:
        return TOKENS.get(self.get_query_argument("token", ""))

    @authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)


class EntitledSSE(_Bearer, TopicEventSource):
    def authorize_topics(self, topics: list[str]) -> list[str]:
        return [t for t in topics if t in ENTITLED[self.current_user]]


class EntitledWS(_Bearer, TopicWebSocketSubscriber):
    async def authorize_topics(self, topics: list[str]) -> list[str]:
        await asyncio.sleep(0.01)  # an entitlement service answers later
        return [t for t in topics if t in ENTITLED[self.current_user]]


def _routes(store: Any, registry: TopicRegistry) -> list[Any]:
    return [
        (r"/sse", AuthSSE, {"store": store}),
        (r"/ws", AuthWS, {"store": store}),
        (r"/login-sse", LoginSSE, {"store": store}),
        (r"/feed/sse(?:/([^/]+))?", EntitledSSE, {"registry": registry}),
        (r"/feed/ws(?:/([^/]+))?", EntitledWS, {"registry": registry}),
    ]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _ws(port: int, path: str, token: str | None = None) -> Any:
    headers = _auth(token) if token else {}
    from tornado.httpclient import HTTPRequest

    return await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}{path}", headers=headers))


async def _ws_read(conn: Any, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(conn.read_message(), timeout)
    assert raw is not None, "closed"
    return json.loads(raw)


async def test_refused_requests_never_subscribe_or_stream(serve):
    """401 from prepare() on SSE and WebSocket, a login redirect from @authenticated:
    no subscriber, no place taken (max_subscribers), no byte of the stream."""
    store = QueueStore(max_subscribers=1)
    port = await serve(_routes(store, TopicRegistry(QueueStore)), login_url="/login")
    store.submit("before")
    for _ in range(3):
        refused = await RawSSEClient.connect("127.0.0.1", port, "/sse")
        assert refused.status == 401
        assert b"data:" not in await refused.read_body()
        wrong = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=_auth("t-eve"))
        assert wrong.status == 401
        redirected = await RawSSEClient.connect("127.0.0.1", port, "/login-sse")
        assert redirected.status == 302 and redirected.headers["location"].startswith("/login")
        with pytest.raises(HTTPClientError) as refused_ws:
            await _ws(port, "/ws")
        assert refused_ws.value.code == 401
    assert store.subscribers == set() and store.stats()["subscribers"] == 0
    # The topic handlers too: refused before any topic is held or any byte streamed.
    registry = TopicRegistry(QueueStore, max_subscribers=1)
    port2 = await serve(_routes(QueueStore(), registry))
    registry.submit("A", "a0")
    for _ in range(3):
        refused = await RawSSEClient.connect("127.0.0.1", port2, "/feed/sse/A")
        assert refused.status == 401 and b"a0" not in await refused.read_body()
        with pytest.raises(HTTPClientError) as refused_ws:
            await _ws(port2, "/feed/ws/A")
        assert refused_ws.value.code == 401
    assert registry.connections == 0 and registry.stats()["subscribers"] == 0
    feed = await RawSSEClient.connect("127.0.0.1", port2, "/feed/sse/A", headers=_auth("t-bob"))
    assert feed.status == 200  # the one place is free
    feed.close_fin()
    # The one place was never taken by a refused request.
    alice = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=_auth("t-alice"))
    assert alice.status == 200
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("after")
    assert [e.data for e in await alice.read_events(1)] == ["after"]
    (handler,) = store.subscribers
    assert handler.current_user == "alice"
    alice.close_fin()
    ws = await _ws(port, "/ws", "t-bob")
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("to bob")
    assert (await _ws_read(ws))["data"] == "to bob"
    ws.close()


@pytest.mark.parametrize("path", ["/feed/sse/A,S", "/feed/sse?topics=A,S",
                                  "/feed/sse/A?topics=S"])
async def test_denied_url_topics_get_403_naming_them(serve, path):
    registry = TopicRegistry(QueueStore)
    port = await serve(_routes(QueueStore(), registry))
    refused = await RawSSEClient.connect("127.0.0.1", port, path, headers=_auth("t-alice"))
    assert refused.status == 403
    assert (await refused.read_body()).decode() == "forbidden topics: S\n"
    assert registry.connections == 0 and registry.stats()["subscribers"] == 0
    allowed = await RawSSEClient.connect("127.0.0.1", port, path, headers=_auth("t-bob"))
    assert allowed.status == 200
    await wait_until(lambda: registry.connections == 1)
    registry.submit("S", "s1")
    assert [(e.type, e.data) for e in await allowed.read_events(1)] == [("S", "s1")]
    allowed.close_fin()


async def test_websocket_topics_are_authorized_in_the_url_and_in_messages(serve):
    registry = TopicRegistry(DataStore)
    port = await serve(_routes(QueueStore(), registry))
    with pytest.raises(HTTPClientError) as refused:
        await _ws(port, "/feed/ws/A,S", "t-alice")
    assert refused.value.code == 403
    assert registry.connections == 0
    registry.submit("S", "secret")
    registry.submit("A", "a1")
    ws = await _ws(port, "/feed/ws/A", "t-alice")
    assert (await _ws_read(ws))["data"] == "a1"  # A's current value
    ws.write_message(json.dumps({"subscribe": ["B", "S"]}))
    assert await _ws_read(ws) == {"event": "tornadose-error",
                                  "data": {"reason": "forbidden", "topics": ["S"]}}
    ws.write_message(json.dumps({"subscribe": ["B"]}))
    assert await _ws_read(ws) == {"event": "tornadose-subscribed", "data": {"topics": ["A", "B"]}}
    registry.submit("S", "secret 2")
    registry.submit("B", "b1")
    frame = await _ws_read(ws)
    assert (frame["event"], frame["data"]) == ("B", "b1")  # nothing of S came first
    ws.close()


async def test_nothing_of_a_denied_topic_leaks_by_any_path(serve):
    """alice is entitled to A, not S. She tries S through the URL path, the query, a
    subscribe message, and resumes with Last-Event-IDs taken from bob's stream of S
    (one still in the log, one long evicted): nothing of S reaches her, not even in a
    gap notice."""
    registry = TopicRegistry(QueueStore, capacity=8)
    port = await serve(_routes(QueueStore(), registry))
    bob = await RawSSEClient.connect("127.0.0.1", port, "/feed/sse/S,A", headers=_auth("t-bob"))
    await wait_until(lambda: registry.connections == 1)
    registry.submit("S", "old secret")
    old_id = (await bob.read_events(1))[0].id
    for i in range(20):  # evicts old_id from the 8-entry log; bob keeps up
        registry.submit("S", f"secret {i}")
        recent_id = (await bob.read_events(1))[0].id
    for path in ("/feed/sse/S", "/feed/sse?topics=S", "/feed/sse/A?topics=S"):
        refused = await RawSSEClient.connect("127.0.0.1", port, path, headers=_auth("t-alice"))
        assert refused.status == 403 and b"secret" not in await refused.read_body()
    streams = []
    for last_id in (old_id, recent_id):
        alice = await RawSSEClient.connect("127.0.0.1", port, "/feed/sse/A",
                                           headers={**_auth("t-alice"), "Last-Event-ID": last_id})
        assert alice.status == 200
        streams.append(alice)
    ws = await _ws(port, "/feed/ws/A", "t-alice")
    ws.write_message(json.dumps({"subscribe": ["S"]}))
    assert (await _ws_read(ws))["data"]["reason"] == "forbidden"
    await wait_until(lambda: registry.connections == 4)
    for i in range(5):  # a pair per loop turn: the 8-entry log keeps every A for alice
        registry.submit("S", f"new secret {i}")
        registry.submit("A", f"a{i}")
        await asyncio.sleep(0.01)
    for alice in streams:
        events = await alice.read_events(5)
        assert [e.type for e in events if e.type != "tornadose-gap"] == ["A"] * 5
        gaps = [json.loads(e.data) for e in events if e.type == "tornadose-gap"]
        assert all(gap.get("topics") in (None, ["A"]) for gap in gaps), gaps
        assert all("secret" not in e.data for e in events)
        alice.close_fin()
    frames = [await _ws_read(ws) for _ in range(5)]
    assert [f["event"] for f in frames] == ["A"] * 5
    ws.close()
    bob.close_fin()


async def test_disconnect_ends_exactly_the_matching_connections(serve):
    store = QueueStore()
    registry = TopicRegistry(QueueStore)
    port = await serve(_routes(store, registry))
    alice_sse = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=_auth("t-alice"))
    alice_ws = await _ws(port, "/ws", "t-alice")
    bob_sse = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers=_auth("t-bob"))
    alice_feed = await RawSSEClient.connect("127.0.0.1", port, "/feed/sse/A",
                                            headers=_auth("t-alice"))
    alice_feed_ws = await _ws(port, "/feed/ws/A", "t-alice")
    bob_feed = await RawSSEClient.connect("127.0.0.1", port, "/feed/sse/A", headers=_auth("t-bob"))
    await wait_until(lambda: len(store.subscribers) == 3 and registry.connections == 3)
    store.submit("before")
    registry.submit("A", "before")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert store.disconnect(lambda h: h.current_user == "alice") == 2
    assert registry.disconnect(lambda h: h.current_user == "alice") == 2
    # What was submitted before the call still reached them; then their streams end.
    assert [e.data for e in await alice_sse.read_until_closed(timeout=1)] == ["before"]
    assert [e.data for e in await alice_feed.read_until_closed(timeout=1)] == ["before"]
    for conn in (alice_ws, alice_feed_ws):
        assert json.loads(await conn.read_message())["data"] == "before"
        assert await asyncio.wait_for(conn.read_message(), 1) is None
        assert conn.close_code == 1008
    assert loop.time() - started < 1
    store.submit("after")
    registry.submit("A", "after")
    assert [e.data for e in await bob_sse.read_events(2)] == ["before", "after"]
    assert [e.data for e in await bob_feed.read_events(2)] == ["before", "after"]
    assert store.stats()["revoked"] == 2 and registry.stats()["revoked"] == 2
    assert len(store.subscribers) == 1 and registry.connections == 1
    bob_sse.close_fin()
    bob_feed.close_fin()


async def test_subscribe_requests_are_rate_limited(serve, caplog):
    """A client flooding subscribe requests gets a clear refusal past the limit (a
    burst of tornadose_ws_requests_per_second), keeps its connection and topics; the
    log gets one record for the cause, not one per refused request."""
    registry = TopicRegistry(QueueStore)
    port = await serve(_routes(QueueStore(), registry), tornadose_ws_requests_per_second=5)
    ws = await _ws(port, "/feed/ws/A", "t-bob")
    await wait_until(lambda: registry.connections == 1)
    for _ in range(8):
        ws.write_message(json.dumps({"subscribe": ["B"]}))
    answers = [await _ws_read(ws) for _ in range(8)]
    refused = [a for a in answers if a["event"] == "tornadose-error"]
    assert len(refused) >= 3 and refused[0]["data"] == {
        "reason": "too many requests: at most 5 per second", "limit": 5}
    assert answers[0] == {"event": "tornadose-subscribed", "data": {"topics": ["A", "B"]}}
    await asyncio.sleep(0.3)  # the bucket refills
    ws.write_message(json.dumps({"unsubscribe": ["B"]}))
    assert await _ws_read(ws) == {"event": "tornadose-subscribed", "data": {"topics": ["A"]}}
    registry.submit("A", "still here")
    assert (await _ws_read(ws))["data"] == "still here"
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in records] == ["tornadose.refusals"], records
    assert "request rate" in records[0].getMessage()
    ws.close()
