"""Topic handlers: one connection subscribed to several topics of a registry.

:class:`TopicEventSource` names its topics in the URL; :class:`TopicWebSocketSubscriber`
also changes them with ``{"subscribe": [...]}`` / ``{"unsubscribe": [...]}`` requests.
Entitlements (``authorize_topics``) decide what a connection may receive.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import orjson
from tornado.websocket import WebSocketClosedError

from ..core.fanout import Sink
from ..core.frames import ws_text_frame
from ..pubsub.names import TopicError, TopicNameError, UnknownTopicError, check_topic_name
from ..pubsub.registry import TopicRegistry
from ..pubsub.topic import Topic
from ..transport import refusals
from .sse import EventSource
from .websocket import WebSocketSubscriber, _ws_header_size

__all__ = [
    "DEFAULT_WS_REQUESTS_PER_SECOND",
    "ERROR_EVENT",
    "SUBSCRIBED_EVENT",
    "TopicEventSource",
    "TopicWebSocketSubscriber",
]

logger = logging.getLogger("tornadose.handlers")

# Subscribe/unsubscribe requests a topic WebSocket may send per second (and in a burst);
# more get a tornadose-error and are ignored. Application setting
# ``tornadose_ws_requests_per_second`` (0 disables).
DEFAULT_WS_REQUESTS_PER_SECOND = 20


class _TopicHandler:
    """What the topic handlers add to EventSource and WebSocketSubscriber: the topics
    of the request, and one connection of a :class:`~tornadose.topics.TopicRegistry`
    (one cursor and a set of topics) instead of one store's subscriber."""

    registry: TopicRegistry
    topics: list[str]
    _targets: Sequence[tuple[Any, Any]]

    def _bind_registry(self, registry: TopicRegistry) -> None:
        if not isinstance(registry, TopicRegistry):
            raise TypeError(f"registry must be a tornadose.topics.TopicRegistry, got {registry!r}")
        self.registry = registry
        self.topics = []
        self._tornadose_topics: list[Topic] = []
        self._tornadose_last_event_id: str | None = None

    def _resolve_topics(self, allow_empty: bool = False) -> bool:
        """Find the topics the URL names (every path argument, and each ``topics``
        query argument, as comma-separated lists) and hold them. Answers 400 (bad name,
        too many topics) or 404 (unknown topic) and returns False when that fails."""
        handler: Any = self
        specs = [arg for arg in handler.path_args if arg]
        specs += [arg for arg in handler.path_kwargs.values() if arg]
        specs += handler.get_query_arguments("topics")
        registry = self.registry
        try:
            names = registry.parse(specs, allow_empty)
            topics = registry.acquire(names)
        except TopicError as exc:
            handler.set_status(404 if isinstance(exc, UnknownTopicError) else 400)
            handler.set_header("Content-Type", "text/plain; charset=utf-8")
            handler.finish(f"{exc}\n")
            return False
        self.topics = names
        self._tornadose_topics = topics
        # The registry is this connection's one target: it registers the handler.
        self._targets = [(registry, self)]
        return True

    def _fast_path(self, base: type) -> bool:
        return True

    def authorize_topics(self, topics: list[str]) -> list[str] | Awaitable[list[str]]:
        """Return which of ``topics`` this connection may subscribe to: a list, or an
        awaitable of one. Called after ``prepare()`` (so ``self.current_user`` is
        known) and before anything is subscribed: for the topics of the URL, and for
        each ``{"subscribe": [...]}`` of a WebSocket. By default every topic is allowed.

        When any requested topic is not in the answer, none of that request is
        subscribed: the URL's topics get 403 with a body naming the denied ones, a
        subscribe message gets ``{"event": "tornadose-error", "data": {"reason":
        "forbidden", "topics": [<denied>]}}`` and the connection keeps its topics.
        """
        return topics

    def _denied(self, topics: list[str], allowed: Iterable[str]) -> list[str]:
        allowed = set(allowed)
        return [topic for topic in topics if topic not in allowed]

    def _entitled(self) -> bool:
        # Only a subclass decides: the default allows everything at no cost.
        return type(self).authorize_topics is not _TopicHandler.authorize_topics

    def _forbid(self, denied: list[str]) -> None:
        handler: Any = self
        handler.set_status(403)
        handler.set_header("Content-Type", "text/plain; charset=utf-8")
        handler.finish(f"forbidden topics: {','.join(denied)}\n")

    async def _authorize_url_topics(self) -> bool:
        """Ask :meth:`authorize_topics` about the URL's topics; answer 403 and return
        False when any is denied."""
        allowed = self.authorize_topics(list(self.topics))
        if inspect.isawaitable(allowed):
            allowed = await allowed
        denied = self._denied(self.topics, allowed)  # type: ignore[arg-type]
        if denied:
            self._forbid(denied)
            return False
        return True

    def _attach(self, stream: Any, format: int, deliver: Any = None, codec: Any = None) -> None:
        self._tornadose_sink = Sink(stream, format, self._lapped, deliver, codec)

    def _unsubscribe(self) -> None:
        super()._unsubscribe()  # type: ignore[misc]
        held, self._tornadose_topics = self._tornadose_topics, []
        if held:
            self.registry.release([topic.name for topic in held])


class TopicEventSource(_TopicHandler, EventSource):
    """SSE subscriber to one or several topics of a :class:`~tornadose.topics.TopicRegistry`.

    The topics come from the URL: every path argument of the route (e.g.
    ``r"/quotes/([^/]+)"``) and every ``topics`` query argument, each a comma-separated
    list: ``/quotes/AAPL,MSFT``, ``/quotes?topics=AAPL,MSFT``. Each event's ``event:``
    field is its topic (``es.addEventListener("AAPL", ...)``); events of all its topics
    come in submit order, everything new in one write per loop turn. A latest-value
    topic sends its current value at once, then each new value; a queue topic every
    message. One Last-Event-ID resumes every topic (see :mod:`tornadose.topics`).

    Refused with a plain-text reason: 400 for a bad topic name (see
    :func:`~tornadose.topics.check_topic_name`), no topic, more than
    ``max_topics_per_subscriber`` topics, or a new topic past ``max_topics``; 404 for an
    unknown topic when the registry does not create topics for subscribers; 503 as
    :class:`EventSource` at the registry's ``max_subscribers``. Retry hint, heartbeats
    and closing as :class:`EventSource`; ``publish`` is not used.
    """

    def initialize(  # type: ignore[override]
        self,
        registry: TopicRegistry,
        heartbeat_interval: float | None = None,
        retry: int | None = None,
        allowed_origins: Sequence[str] | str | None = None,
        compression: Any = None,
    ) -> None:
        """Bind to ``registry``; the topics are read from the request. ``compression``
        as for :class:`EventSource`."""
        self._bind_registry(registry)
        self._init_stream(heartbeat_interval, retry)
        self._set_origins(allowed_origins)
        self._set_compression(compression)

    def prepare(self) -> None:
        if self.request.method != "OPTIONS" and self._resolve_topics():
            self._reserve()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self._entitled() and not await self._authorize_url_topics():
            return
        await super().get(*args, **kwargs)


#: The event of the WebSocket notice confirming a subscription change.
SUBSCRIBED_EVENT = "tornadose-subscribed"
#: The event of the WebSocket notice refusing a client's request.
ERROR_EVENT = "tornadose-error"


class TopicWebSocketSubscriber(_TopicHandler, WebSocketSubscriber):
    """WebSocket subscriber to topics: those named in the URL as for
    :class:`TopicEventSource` (none is fine), changed over the open socket.

    Each frame is ``{"id": ..., "event": "<topic>", "data": ...}``; a client that
    reconnects with ``?last_event_id=<the last id it saw>`` resumes every topic as
    :class:`TopicEventSource` does. The client may send text frames
    ``{"subscribe": ["AAPL", "MSFT"]}`` and ``{"unsubscribe": ["AAPL"]}``; once the
    change is in effect the server sends
    ``{"event": "tornadose-subscribed", "data": {"topics": [<all its topics, sorted>]}}``:
    nothing of an unsubscribed topic follows it, and a newly subscribed latest-value
    topic's current value does. A request that is not such JSON, names a bad or
    unknown topic, a topic that :meth:`authorize_topics` denies, would exceed
    ``max_topics_per_subscriber``, or comes faster than
    ``tornadose_ws_requests_per_second`` (default 20, as many in a burst) gets
    ``{"event": "tornadose-error", "data": {"reason": "<what is wrong>", ...}}``; the
    connection stays open with its topics unchanged. Otherwise as
    :class:`WebSocketSubscriber`.
    """

    @property
    def _detach_base(self) -> type:
        return TopicWebSocketSubscriber

    def initialize(  # type: ignore[override]
        self,
        registry: TopicRegistry,
        allowed_origins: Sequence[str] | str | None = None,
        compression: Any = None,
    ) -> None:
        """Bind to ``registry``; the topics are read from the request. ``compression``
        as for :class:`WebSocketSubscriber`."""
        self._bind_registry(registry)
        self._set_origins(allowed_origins)
        self._set_compression(compression)

    def prepare(self) -> None:
        if self._resolve_topics(allow_empty=True):
            self._reserve()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.topics and self._entitled() and not await self._authorize_url_topics():
            return  # refused before the upgrade: a plain 403
        await super().get(*args, **kwargs)

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Apply a ``subscribe`` / ``unsubscribe`` request (see the class)."""
        rate = self.settings.get("tornadose_ws_requests_per_second",
                                 DEFAULT_WS_REQUESTS_PER_SECOND)
        if rate and not self._within_rate(rate):
            refusals.refused(
                "request rate", "WebSocket request", f"at most {rate:g} per second",
                self.settings.get("tornadose_refusal_log_interval", refusals.DEFAULT_INTERVAL),
            )
            self._refuse(f"too many requests: at most {rate:g} per second", limit=rate)
            return None
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._refuse("not JSON: send {\"subscribe\": [...]} or {\"unsubscribe\": [...]}")
            return None
        if (
            not isinstance(request, dict)
            or not request
            or not set(request) <= {"subscribe", "unsubscribe"}
        ):
            self._refuse('expected {"subscribe": [...]} or {"unsubscribe": [...]}')
            return None
        for key, names in request.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                self._refuse(f"{key!r} takes a list of topic names")
                return None
        registry = self.registry
        current = {topic.name: topic for topic in self._tornadose_topics}
        wanted = [n for n in dict.fromkeys(request.get("subscribe", ())) if n not in current]
        dropped = [n for n in dict.fromkeys(request.get("unsubscribe", ())) if n in current]
        try:
            for name in wanted:
                check_topic_name(name)
        except TopicNameError as exc:
            self._refuse(str(exc), topics=[n for n in wanted if not _valid(n)])
            return None
        limit = registry.max_topics_per_subscriber
        if len(current) - len(dropped) + len(wanted) > limit:
            self._refuse(f"too many topics: at most {limit} per subscriber", limit=limit)
            return None
        if wanted and self._entitled():
            allowed = self.authorize_topics(list(wanted))
            if inspect.isawaitable(allowed):
                # Tornado reads the next message only once this one is handled, so
                # requests still apply in order.
                return self._change_when_allowed(allowed, wanted, dropped)
            if not self._allowed(wanted, allowed):
                return None
        self._change(wanted, dropped)
        return None

    async def _change_when_allowed(
        self, allowed: Awaitable[list[str]], wanted: list[str], dropped: list[str]
    ) -> None:
        if self._allowed(wanted, await allowed):
            current = {topic.name for topic in self._tornadose_topics}
            # The connection may have changed meanwhile (a close): re-read its topics.
            self._change([n for n in wanted if n not in current],
                         [n for n in dropped if n in current])

    def _allowed(self, wanted: list[str], allowed: Iterable[str]) -> bool:
        denied = self._denied(wanted, allowed)
        if denied:
            self._refuse("forbidden", topics=denied)
            return False
        return True

    def _change(self, wanted: list[str], dropped: list[str]) -> None:
        registry = self.registry
        current = {topic.name: topic for topic in self._tornadose_topics}
        try:
            added = registry.acquire(wanted)
        except TopicError as exc:
            self._refuse(str(exc))
            return
        removed = [current[name] for name in dropped]
        if self._tornadose_sink is None or not registry.change(self, added, removed):
            registry.release(wanted)
            return
        kept = [t for t in self._tornadose_topics if t.name not in dropped]
        self._tornadose_topics = kept + added
        self.topics = [topic.name for topic in self._tornadose_topics]
        registry.release(dropped)
        self._notify(SUBSCRIBED_EVENT, {"topics": sorted(self.topics)})
        registry.snapshot(self, added)

    _bucket: tuple[float, float] | None = None  # (tokens, when)

    def _within_rate(self, rate: float) -> bool:
        """A token bucket of ``rate`` requests per second, as many in a burst."""
        now = time.monotonic()
        tokens, last = self._bucket or (rate, now)
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1:
            self._bucket = (tokens, now)
            return False
        self._bucket = (tokens - 1, now)
        return True

    def _refuse(self, reason: str, **details: Any) -> None:
        self._notify(ERROR_EVENT, {"reason": reason, **details})

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        sink = self._tornadose_sink
        frame = ws_text_frame(orjson.dumps({"event": event, "data": data}))
        if sink is not None:
            # Through the connection's own queue, so it keeps its place among frames.
            self.registry._write_extra(sink, b"", frame)
        else:
            try:
                self.write_message(frame[_ws_header_size(frame):])
            except WebSocketClosedError:
                pass


def _valid(name: str) -> bool:
    try:
        check_topic_name(name)
    except TopicNameError:
        return False
    return True
