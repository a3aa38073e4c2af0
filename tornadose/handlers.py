"""Request handlers that push a store's messages to connected clients.

API-compatible with the original ``tornadose.handlers``. :class:`EventSource` and
:class:`WebSocketSubscriber` registered with a :class:`~tornadose.stores.DataStore` or
:class:`~tornadose.stores.QueueStore` take the fast path: the store writes pre-built
frames straight to their connection. Everywhere else (a custom store, a subclass that
overrides ``publish`` or ``submit``) they take the generic path the original documents:
the store calls ``submit(message)``, which calls ``publish(message)`` in order.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import deque
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from . import stores
from .fanout import FORMAT_SSE, FORMAT_SSE_CHUNKED, FORMAT_WS, Sink
from .frames import encode_message, sse_event, ws_data_body

__all__ = ["BaseHandler", "EventSource", "WebSocketSubscriber"]

logger = logging.getLogger("tornadose.handlers")

# Generic-path subscribers hold at most this many undelivered messages (or the store's
# capacity, when it has one) before they are disconnected: memory stays bounded.
DEFAULT_OUTBOX_LIMIT = 4096
_DISCONNECTED = (StreamClosedError, WebSocketClosedError)

#: Defaults of the Application settings these handlers read (handler keyword arguments
#: of the same name without the ``sse_`` prefix override them per URL).
DEFAULT_SSE_HEARTBEAT_INTERVAL = 15.0  # seconds of silence before a ``:`` comment line
DEFAULT_SSE_RETRY = 2000  # milliseconds, sent as the ``retry:`` reconnection hint
# Subscribe-only sockets need no large incoming messages; a bigger one closes the
# connection (code 1009) unless ``websocket_max_message_size`` says otherwise.
DEFAULT_WS_MAX_INCOMING = 64 * 1024
_HEARTBEAT = b":\n"


class BaseHandler(RequestHandler):
    """Base class for subscriber handlers.

    Custom handlers subclass this and implement :meth:`publish`; :meth:`initialize`
    registers them with the store, and the store's messages reach ``publish`` one at a
    time, in order (awaited when ``publish`` returns an awaitable).
    """

    store: stores.BaseStore
    _tornadose_sink: Sink | None = None

    def initialize(self, store: stores.BaseStore) -> None:
        """Bind to ``store`` and register with it. Raises ``TypeError`` when ``store``
        is not a :class:`~tornadose.stores.BaseStore`."""
        self._bind(store)
        store.register(self)

    def _bind(self, store: stores.BaseStore) -> None:
        if not isinstance(store, stores.BaseStore):
            raise TypeError(f"store must be a tornadose.stores.BaseStore, got {store!r}")
        self.store = store
        self._outbox: deque[Any] = deque()
        self._draining = False

    def submit(self, message: Any) -> stores._Submitted:
        """Queue ``message`` for :meth:`publish`; messages are published in order.

        When more than the store's capacity is waiting, the subscriber is too slow to
        keep: it is deregistered and its connection closed.
        """
        outbox = self._outbox
        outbox.append(message)
        if len(outbox) > getattr(self.store, "capacity", DEFAULT_OUTBOX_LIMIT):
            outbox.clear()
            self._drop()
        elif not self._draining:
            self._drain()
        return stores.SUBMITTED

    def _drain(self) -> None:
        outbox = self._outbox
        while outbox:
            try:
                result = self.publish(outbox.popleft())
            except _DISCONNECTED:
                self._drop()
                return
            if inspect.isawaitable(result):
                self._draining = True
                asyncio.ensure_future(self._drain_async(result))
                return

    async def _drain_async(self, pending: Any) -> None:
        try:
            await pending
            outbox = self._outbox
            while outbox:
                result = self.publish(outbox.popleft())
                if inspect.isawaitable(result):
                    await result
        except _DISCONNECTED:
            self._drop()
        except Exception:
            logger.error("%r.publish() failed; subscriber removed", self, exc_info=True)
            self._drop()
        finally:
            self._draining = False

    def publish(self, message: Any) -> Any:
        """Push one message to the client. Must be implemented by subclasses."""
        raise NotImplementedError("publish must be implemented!")

    def on_connection_close(self) -> None:
        # The client went away: a normal end, nothing to log.
        self._release_reservation()
        self.store.deregister(self)

    def on_finish(self) -> None:
        # A finished response can receive nothing more.
        self._release_reservation()
        self.store.deregister(self)

    def _reserve(self) -> bool:
        """Take a place in the store before the stream opens, or answer 503.

        Stores with ``max_subscribers`` refuse extra clients with 503 and a jittered
        ``Retry-After``, so a reconnect storm spreads out instead of coming back at once.
        """
        admit = getattr(self.store, "_admit", None)
        if admit is None or admit():
            self._reserved = admit is not None
            return True
        self.set_status(503)
        self.set_header("Retry-After", str(random.randint(2, 10)))
        self.finish("subscriber limit reached\n")
        return False

    def _release_reservation(self) -> None:
        if getattr(self, "_reserved", False):
            self._reserved = False
            self.store._release()  # type: ignore[attr-defined]

    def _last_event_id(self) -> str | None:
        # The header wins: a browser reconnecting to a URL that carries an old
        # ``last_event_id`` query parameter sends its newer id in the header. An empty
        # id means "none", as in the SSE spec.
        header = self.request.headers.get("Last-Event-ID")
        if header is None:
            header = self.get_query_argument("last_event_id", None, strip=False)
        return header or None

    def _drop(self) -> None:
        """Deregister and close the connection (a subscriber that cannot be served)."""
        self.store.deregister(self)
        stream = self.request.connection.stream  # type: ignore[attr-defined]
        if stream is not None and not stream.closed():
            stream.close()

    def _overrides(self, base: type, *names: str) -> bool:
        cls = type(self)
        return any(getattr(cls, name) is not getattr(base, name) for name in names)


class EventSource(BaseHandler):
    """Server-Sent Events (``text/event-stream``) subscriber.

    Each message is one SSE event with an ``id:`` field and one ``data:`` line per line
    of the message, so no message can break framing or inject fields. The response is
    never compressed or buffered by nginx (``X-Accel-Buffering: no``). The client going
    away is a normal end: the handler deregisters at once and logs nothing above DEBUG.

    A client that reconnects with ``Last-Event-ID`` (the header, or a ``last_event_id``
    query parameter) resumes right after that event when the store still holds what
    followed it, and otherwise gets a ``tornadose-gap`` event first (see
    :data:`tornadose.stores.GAP_EVENT`). The stream starts with a ``retry:`` hint
    (``sse_retry`` setting or ``retry`` argument, milliseconds) and carries a ``:``
    comment line after ``heartbeat_interval`` seconds of silence (``sse_heartbeat_interval``
    setting, default 15; 0 disables) so proxies do not close idle streams.
    """

    def initialize(
        self,
        store: stores.BaseStore,
        heartbeat_interval: float | None = None,
        retry: int | None = None,
    ) -> None:
        """Bind to ``store``; registration happens once the stream is open."""
        self._bind(store)
        self._done: asyncio.Future[None] | None = None
        self._heartbeat_interval = heartbeat_interval
        self._retry = retry
        self._heartbeat_timer: object | None = None

    def prepare(self) -> None:
        self._reserve()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        # Output transforms (gzip) cannot apply to frames written straight to the
        # socket, and compressing a live stream only adds latency.
        self._transforms = []
        retry = self._retry if self._retry is not None else self.settings.get("sse_retry", DEFAULT_SSE_RETRY)
        if retry:
            self.write(b"retry: %d\n\n" % int(retry))
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self.flush()
        except StreamClosedError:
            return
        if self.request.connection.stream.closed():  # type: ignore[attr-defined]
            return
        if not self._overrides(EventSource, "publish", "submit"):
            connection = self.request.connection
            chunked = getattr(connection, "_chunking_output", self.request.version == "HTTP/1.1")
            self._tornadose_sink = Sink(
                connection.stream,  # type: ignore[attr-defined]
                FORMAT_SSE_CHUNKED if chunked else FORMAT_SSE,
                self._lapped,
            )
            self._tornadose_last_event_id = self._last_event_id()
            self._schedule_heartbeat()
        self._release_reservation()
        self.store.register(self)
        await self._done

    def publish(self, message: Any) -> Any:
        """Write one message as an SSE event (the generic path)."""
        payload, _ = encode_message(message)
        self.write(sse_event(payload))
        return self.flush()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._resolve()

    def _lapped(self) -> None:
        # Fell off the ring: cut the connection (the client may reconnect); its close
        # callback deregisters it.
        logger.debug("%r lapped by %r; disconnecting", self, self.store)
        self.request.connection.stream.close()  # type: ignore[attr-defined]

    def _tornadose_end(self) -> None:
        self._resolve()

    def _resolve(self) -> None:
        if self._heartbeat_timer is not None:
            IOLoop.current().remove_timeout(self._heartbeat_timer)
            self._heartbeat_timer = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _schedule_heartbeat(self) -> None:
        interval = self._heartbeat_interval
        if interval is None:
            interval = self.settings.get("sse_heartbeat_interval", DEFAULT_SSE_HEARTBEAT_INTERVAL)
        if interval:
            self._heartbeat_timer = IOLoop.current().call_later(interval, self._heartbeat, interval)

    def _heartbeat(self, interval: float) -> None:
        sink = self._tornadose_sink
        if sink is None or self._done is None or self._done.done():
            return
        # Only idle streams need it: anything written since the last beat, or still
        # queued, already tells the proxy the stream is alive.
        if not sink.written and not sink.stream.writing():
            self.store._write_extra(sink, _HEARTBEAT, None)  # type: ignore[attr-defined]
        sink.written = False
        self._heartbeat_timer = IOLoop.current().call_later(interval, self._heartbeat, interval)


class WebSocketSubscriber(BaseHandler, WebSocketHandler):
    """WebSocket subscriber: each message is one text frame, the JSON ``{"data": ...}``.

    Each frame also carries the event ``id`` (the same ids SSE subscribers of the store
    see); a client that reconnects with ``?last_event_id=<id>`` resumes like an SSE
    client, or first gets ``{"id": ..., "event": "tornadose-gap", "data": {...}}``.
    Messages sent by the client are ignored (the socket is subscribe-only); one larger
    than ``websocket_max_message_size`` (default here 64 KiB) closes the connection.
    Pings follow Tornado's ``websocket_ping_interval`` setting. With per-message
    compression negotiated, frames go out through Tornado's ``write_message``
    (compressed per connection); otherwise pre-built frames are written as they are.
    """

    def initialize(self, store: stores.BaseStore) -> None:
        """Bind to ``store``; registration happens once the WebSocket is open."""
        self._bind(store)

    def prepare(self) -> None:
        self._reserve()

    @property
    def max_message_size(self) -> int:
        return self.settings.get("websocket_max_message_size", DEFAULT_WS_MAX_INCOMING)

    def open(self, *args: Any, **kwargs: Any) -> None:
        connection = self.ws_connection
        if connection is None:
            return
        if not self._overrides(WebSocketSubscriber, "publish", "submit"):
            compressed = getattr(connection, "_compressor", None) is not None
            self._tornadose_sink = Sink(
                connection.stream,  # type: ignore[attr-defined]
                FORMAT_WS,
                self._lapped,
                self._write_frames if compressed else None,
            )
            self._tornadose_last_event_id = (
                self.get_query_argument("last_event_id", None, strip=False) or None
            )
        self._release_reservation()
        self.store.register(self)

    def on_message(self, message: str | bytes) -> None:
        """Ignore client messages: this socket only publishes."""

    def on_close(self) -> None:
        self._release_reservation()
        self.store.deregister(self)

    def publish(self, message: Any) -> Any:
        """Send one message as ``{"data": message}`` (the generic path)."""
        _, json_value = encode_message(message)
        return self.write_message(ws_data_body(json_value))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Stop raw writes before Tornado sends its close frame: nothing may follow it.
        self.store.deregister(self)
        super().close(code, reason)

    def _write_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            length = frame[1] & 0x7F
            header = 2 if length < 126 else 4 if length == 126 else 10
            try:
                self.write_message(frame[header:])
            except WebSocketClosedError:
                return

    def _lapped(self) -> None:
        logger.debug("%r lapped by %r; disconnecting", self, self.store)
        connection = self.ws_connection
        if connection is not None:
            connection.stream.close()  # type: ignore[attr-defined]

    def _tornadose_end(self) -> None:
        self.close(1001, "store closed")

    def _drop(self) -> None:
        self.store.deregister(self)
        if self.ws_connection is not None:
            self.ws_connection.stream.close()  # type: ignore[attr-defined]
