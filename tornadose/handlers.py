"""Request handlers that push a store's messages to connected clients.

API-compatible with the original ``tornadose.handlers``. :class:`EventSource` and
:class:`WebSocketSubscriber` registered with a :class:`~tornadose.stores.DataStore` or
:class:`~tornadose.stores.QueueStore` take the fast path: the store writes pre-built
frames straight to their connection. Everywhere else (a custom store, a subclass that
overrides ``publish`` or ``submit``) they take the generic path the original documents:
the store calls ``submit(message)``, which calls ``publish(message)`` in order.

:class:`TopicEventSource` and :class:`TopicWebSocketSubscriber` subscribe one connection
to several stores of a :class:`~tornadose.topics.TopicRegistry`, named in the URL. All
four share the per-connection machinery here: a connection subscribes a list of
``(store, subscriber)`` targets (a plain handler is the one-target case, itself
subscribed to its store), each target with its own cursor on the same socket.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import resource
import socket
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import orjson
from tornado import httputil
from tornado.escape import json_encode
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from . import _heartbeat, _http, stores
from ._rawstream import RawStream, can_take_over, take_over
from ._websocket import Handshake
from ._wsproto import data_frame
from .fanout import FORMAT_SSE, FORMAT_SSE_CHUNKED, FORMAT_WS, Sink
from .frames import encode_message, sse_event, ws_data_body, ws_text_frame
from .topics import (
    Topic,
    TopicError,
    TopicNameError,
    TopicRegistry,
    UnknownTopicError,
    check_topic_name,
)

__all__ = [
    "BaseHandler",
    "EventSource",
    "TopicEventSource",
    "TopicWebSocketSubscriber",
    "WebSocketSubscriber",
]

logger = logging.getLogger("tornadose.handlers")

# Generic-path subscribers hold at most this many undelivered messages (or the store's
# capacity, when it has one) before they are disconnected: memory stays bounded.
DEFAULT_OUTBOX_LIMIT = 4096
_DISCONNECTED = (StreamClosedError, WebSocketClosedError)

#: Defaults of the Application settings these handlers read (handler keyword arguments
#: of the same name without the ``sse_`` prefix override them per URL).
DEFAULT_SSE_HEARTBEAT_INTERVAL = 15.0  # seconds of silence before a ``:`` comment line
DEFAULT_SSE_RETRY = 2000  # milliseconds, sent as the ``retry:`` reconnection hint
# Each stream's hint is drawn uniformly from retry x (1 - jitter) .. retry x (1 + jitter),
# so that clients cut at the same moment (a server restart, a network blip) do not all
# come back at the same moment.
DEFAULT_SSE_RETRY_JITTER = 0.5
# Descriptors kept free below RLIMIT_NOFILE: new subscribers are refused (503) within
# max(this, 2% of the limit) of it, so the process never accepts itself into EMFILE.
DEFAULT_FD_HEADROOM = 32
# Subscribe-only sockets need no large incoming messages; a bigger one closes the
# connection (code 1009) unless ``websocket_max_message_size`` says otherwise.
DEFAULT_WS_MAX_INCOMING = 64 * 1024
# Subscribe/unsubscribe requests a topic WebSocket may send per second (and in a burst);
# more get a tornadose-error and are ignored. Application setting
# ``tornadose_ws_requests_per_second`` (0 disables).
DEFAULT_WS_REQUESTS_PER_SECOND = 20
_HEARTBEAT = b":\n"
# Tornado's response state of a handler (RequestHandler and WebSocketHandler, 6.x), and
# ours that only opening the stream needs: dropped once a stream is detached (see
# BaseHandler._shed). Everything else stays: the request, the application's attributes.
_RESPONSE_STATE = (
    "ui", "_headers", "_write_buffer", "_transforms", "_headers_written", "_reason",
    "_xsrf_token", "_locale", "_active_modules", "_new_cookie", "open_args",
    "open_kwargs", "_outbox", "_draining", "_retry", "_heartbeat_interval",
    "_tornadose_last_event_id", "_reserved",
)
# (handler class, base, method names) -> whether the class overrides one of them.
_OVERRIDES: dict[tuple[type, type, tuple[str, ...]], bool] = {}


class BaseHandler(RequestHandler):
    """Base class for subscriber handlers.

    Custom handlers subclass this and implement :meth:`publish`; :meth:`initialize`
    registers them with the store, and the store's messages reach ``publish`` one at a
    time, in order (awaited when ``publish`` returns an awaitable).
    """

    store: stores.BaseStore
    _tornadose_sink: Sink | None = None
    # What this connection subscribes: (store, subscriber) pairs. A plain handler is
    # itself the subscriber of its one store; topic handlers subscribe one
    # _Subscription per topic store. Empty until known, so that closing early is safe.
    _targets: Sequence[tuple[stores.BaseStore, Any]] = ()
    _reserved: Sequence[Any] = ()
    # The socket, once the stream is detached from Tornado (see _shed); None otherwise.
    _raw: RawStream | None = None
    # Methods that, overridden by a subclass, need Tornado's connection for the life of
    # the stream: such handlers are not detached.
    _DETACH_HOOKS: tuple[str, ...] = ("on_connection_close", "on_finish")

    def clear(self) -> None:
        """Reset the response as ``RequestHandler.clear()`` does (the same headers in the
        same order, status 200, an empty buffer; ``set_default_headers()`` called), with
        the ``Date`` header formatted once a second instead of for every request."""
        self._headers = _http.default_headers()
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = httputil.responses[200]

    def initialize(self, store: stores.BaseStore) -> None:
        """Bind to ``store`` and register with it. Raises ``TypeError`` when ``store``
        is not a :class:`~tornadose.stores.BaseStore`."""
        self._bind(store)
        store.register(self)

    def _bind(self, store: stores.BaseStore) -> None:
        if not isinstance(store, stores.BaseStore):
            raise TypeError(f"store must be a tornadose.stores.BaseStore, got {store!r}")
        self.store = store
        self._targets = [(store, self)]
        # Only the generic path queues messages here: created on first use, since an
        # empty deque is ~760 bytes per idle fast-path subscriber.
        self._outbox: deque[Any] | None = None
        self._draining = False

    def submit(self, message: Any) -> stores._Submitted:
        """Queue ``message`` for :meth:`publish`; messages are published in order.

        When more than the store's capacity is waiting, the subscriber is too slow to
        keep: it is deregistered and its connection closed.
        """
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        outbox.append(message)
        if len(outbox) > getattr(self.store, "capacity", DEFAULT_OUTBOX_LIMIT):
            outbox.clear()
            self._drop()
        elif not self._draining:
            self._drain()
        return stores.SUBMITTED

    def _drain(self) -> None:
        outbox = self._outbox
        assert outbox is not None  # only called from submit()
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
            assert outbox is not None
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
        self._unsubscribe()

    def on_finish(self) -> None:
        # A finished response can receive nothing more.
        self._release_reservation()
        self._unsubscribe()

    def _subscribe(self) -> None:
        """Register every target; the places reserved for them become theirs."""
        self._release_reservation()
        for store, subscriber in self._targets:
            store.register(subscriber)

    def _unsubscribe(self) -> None:
        """Deregister every target, for good: a connection never subscribes again.

        Also lets go of the targets and their sinks, whose callbacks point back at this
        handler: without those cycles a finished connection is freed by reference
        counting at once, instead of waiting, with its request, stream and buffers, for
        the cyclic garbage collector (54 objects per connection otherwise, which a
        reconnect storm makes the collector walk again and again)."""
        targets, self._targets = self._targets, ()
        for store, subscriber in targets:
            store.deregister(subscriber)
        for _, subscriber in targets:
            if subscriber._tornadose_sink is not None:
                subscriber._tornadose_sink = None

    def _reserve(self) -> bool:
        """Take a place in every target store before the stream opens, or answer 503.

        Stores with ``max_subscribers`` refuse extra clients with 503 and a jittered
        ``Retry-After``, so a reconnect storm spreads out instead of coming back at once.
        A connection to several stores gets a place in all of them or in none.
        """
        if self._near_descriptor_limit():
            for store, _ in self._targets:
                if hasattr(store, "_rejected"):
                    store._rejected += 1
            self._refuse_busy("server busy: too close to its open-files limit\n")
            return False
        reserved: list[Any] = []
        for store, _ in self._targets:
            admit = getattr(store, "_admit", None)
            if admit is None:
                continue
            if not admit():
                for taken in reserved:
                    taken._release()
                self._refuse_busy("subscriber limit reached\n")
                return False
            reserved.append(store)
        self._reserved = reserved
        return True

    def _refuse_busy(self, reason: str) -> None:
        self.set_status(503)
        self.set_header("Retry-After", str(random.randint(2, 10)))
        self.finish(reason)

    def _near_descriptor_limit(self) -> bool:
        """Whether this connection's descriptor is within the headroom of the process's
        open-files limit (``RLIMIT_NOFILE``): the kernel hands out the lowest free
        number, so a descriptor numbered n means n descriptors are open already.
        Admitting more subscribers there would leave nothing for anything else."""
        stream = getattr(self.request.connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is None:
            return False
        soft = _open_files_limit()
        if soft == resource.RLIM_INFINITY:
            return False
        headroom = self.settings.get("tornadose_fd_headroom")
        if headroom is None:
            headroom = max(DEFAULT_FD_HEADROOM, soft // 50)
        return sock.fileno() >= soft - headroom

    def _release_reservation(self) -> None:
        reserved, self._reserved = self._reserved, ()
        for store in reserved:
            store._release()

    def _last_event_id(self) -> str | None:
        # The header wins: a browser reconnecting to a URL that carries an old
        # ``last_event_id`` query parameter sends its newer id in the header. An empty
        # id means "none", as in the SSE spec.
        # get_list(): no KeyError raised and caught inside HTTPHeaders.get() when the
        # header is absent, the usual case, on every admission.
        values = self.request.headers.get_list("Last-Event-ID")
        header = ",".join(values) if values else None
        if header is None and "last_event_id" in self.request.query_arguments:
            header = self.get_query_argument("last_event_id", None, strip=False)
        return header or None

    def _fast_path(self, base: type) -> bool:
        """Whether the stores may write frames straight to this connection: not when a
        subclass of ``base`` overrides how messages are published."""
        return not self._overrides(base, "publish", "submit")

    def _attach(self, stream: Any, format: int, deliver: Any = None) -> None:
        """Give every target a cursor (a Sink) on ``stream``: the fast path."""
        for _, subscriber in self._targets:
            subscriber._tornadose_sink = Sink(stream, format, self._lapped, deliver)

    def _resume_from(self, last_event_id: str | None) -> None:
        """Set where each target starts; the store decides from the id (see
        ``register``). Topic handlers refine this for several stores."""
        for _, subscriber in self._targets:
            subscriber._tornadose_last_event_id = last_event_id

    def _lapped(self) -> None:
        # Fell off a store's ring: cut the connection (the client may reconnect); its
        # close callback deregisters it.
        logger.debug("%r lapped; disconnecting", self)
        self._close_stream()

    def _close_stream(self) -> None:
        if self._raw is not None:
            self._raw.close()
            return
        stream = self.request.connection.stream  # type: ignore[union-attr]
        if stream is not None and not stream.closed():
            stream.close()

    def _detachable(self, base: type) -> bool:
        """Whether this connection's stream may leave Tornado once open: a fast-path
        handler whose class overrides none of ``base``'s lifecycle hooks, on a plain-TCP
        HTTP/1 connection, unless the Application setting ``tornadose_detach_streams``
        is False."""
        if not self.settings.get("tornadose_detach_streams", True):
            return False
        if self._overrides(base, "publish", "submit", *self._DETACH_HOOKS):
            return False
        connection = self.request.connection
        if not hasattr(connection, "detach") or not can_take_over(
            getattr(connection, "stream", None)
        ):
            return False
        # Stores of this package write frames to the socket themselves; any other
        # store calls publish(), which needs Tornado's connection.
        for store, _ in self._targets:
            if not hasattr(store, "_write_extra"):
                return False
        return True

    def _track(self, stream: Any) -> None:
        # A tornadose server (listen/make_server) ends detached streams in its
        # close_all_connections(), as Tornado ends the connections it still serves.
        server = getattr(stream, "_tornadose_server", None)
        if server is not None:
            server._tornadose_detached.add(self)

    def _shed(self) -> None:
        """Let go of what only answering the request needed once the stream is
        detached: Tornado's HTTP connection objects (and with them its IOStream and
        the task serving the connection), the response state, the UI namespace. What
        Tornado's ``_execute`` still reads once ``get()`` returns stays
        (``_auto_finish``, ``_finished``, ``_prepared_future``), and so does the
        request (``self.request``, ``get_argument()``, ``current_user`` work as
        before, for ``disconnect()`` predicates) and every attribute the application
        set; ``request.connection`` is None from here on."""
        request = self.request
        request.connection = None
        request.server_connection = None
        pop = self.__dict__.pop
        for name in _RESPONSE_STATE:
            pop(name, None)

    def _log_opened(self) -> None:
        # Tornado logs a request when it finishes; a detached stream is logged as it
        # opens, as Tornado logs a WebSocket's upgrade. Formatting the line is skipped
        # when nothing would write it (the usual production setting).
        if type(self)._log is not RequestHandler._log or _http.logs_success(self.application):
            self._log()

    def _drop(self) -> None:
        """Deregister and close the connection (a subscriber that cannot be served)."""
        self._unsubscribe()
        self._close_stream()

    def _set_nodelay(self, stream: Any) -> None:
        # Writes are coalesced here, one per connection per loop turn: Nagle's
        # algorithm would only hold them back for the client's delayed ACK.
        # A tornadose server's connections may have it already, from their listener.
        server = getattr(stream, "_tornadose_server", None)
        if server is not None and server._tornadose_nodelay:
            return
        if self.settings.get("tornadose_tcp_nodelay", True) and stream.socket is not None:
            try:
                # Straight to the socket: IOStream.set_nodelay first asks for the
                # socket's family, which costs more than this call.
                stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the client is gone, or not a TCP socket (a Unix socket)

    _origins: frozenset[str] | str | None = None

    def _set_origins(self, allowed_origins: Sequence[str] | str | None) -> None:
        if allowed_origins is not None:
            self._origins = _check_origins(allowed_origins)

    def _allowed_origins(self) -> frozenset[str] | str | None:
        """The handler's ``allowed_origins``, else the Application's
        ``tornadose_allowed_origins``; None when neither is set."""
        if self._origins is not None:
            return self._origins
        setting = self.settings.get("tornadose_allowed_origins")
        if setting is None:
            return None
        # Checked once per Application, not per request.
        app: Any = self.application
        checked = getattr(app, "_tornadose_origins", None)
        if checked is None or checked[0] is not setting:
            checked = app._tornadose_origins = (setting, _check_origins(setting))
        return checked[1]

    @staticmethod
    def _origin_in(origin: str, origins: frozenset[str] | str) -> bool:
        return origins == "*" or origin.lower() in origins

    def _grant_cors(self, preflight: bool = False) -> None:
        """CORS for a cross-origin EventSource (``withCredentials`` too): the request's
        Origin echoed back when it is allowed, nothing otherwise."""
        origins = self._allowed_origins()
        if origins is None:
            return
        self.add_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if not origin or not self._origin_in(origin, origins):
            return
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Access-Control-Allow-Credentials", "true")
        if preflight:
            self.set_header("Access-Control-Allow-Methods", "GET")
            asked = self.request.headers.get("Access-Control-Request-Headers")
            if asked:
                self.set_header("Access-Control-Allow-Headers", asked)
            self.set_header("Access-Control-Max-Age", "600")

    def _overrides(self, base: type, *names: str) -> bool:
        cls = type(self)
        key = (cls, base, names)
        found = _OVERRIDES.get(key)
        if found is None:
            found = _OVERRIDES[key] = any(
                getattr(cls, name) is not getattr(base, name) for name in names
            )
        return found


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
    (``sse_retry`` setting or ``retry`` argument, milliseconds, drawn per stream within
    ``sse_retry_jitter`` (default 0.5: from half to one and a half times it) so that
    clients cut together come back spread out) and carries a ``:`` comment line once
    it has been silent for ``heartbeat_interval`` seconds, at the latest after twice that
    (``sse_heartbeat_interval`` setting, default 15; 0 disables), so proxies do not
    close idle streams. All streams of a loop share one heartbeat timer.
    """

    def initialize(
        self,
        store: stores.BaseStore,
        heartbeat_interval: float | None = None,
        retry: int | None = None,
        allowed_origins: Sequence[str] | str | None = None,
    ) -> None:
        """Bind to ``store``; registration happens once the stream is open. Raises
        ``TypeError`` for ``allowed_origins`` that are not ``"*"`` or origins."""
        self._bind(store)
        self._init_stream(heartbeat_interval, retry)
        self._set_origins(allowed_origins)

    _chunked = False  # a detached stream's body is chunked (HTTP/1.1)

    def _init_stream(self, heartbeat_interval: float | None, retry: int | None) -> None:
        self._streaming = False  # subscribed and not yet ended
        self._heartbeat_interval = heartbeat_interval
        self._retry = retry
        self._heartbeat_wheel: _heartbeat.HeartbeatWheel | None = None
        self._heartbeat_slot = 0

    def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            self._reserve()

    def options(self, *args: Any, **kwargs: Any) -> None:
        """Answer a CORS preflight (204): the grant when the Origin is allowed (see
        ``tornadose_allowed_origins``), nothing otherwise. Nothing is subscribed."""
        self._grant_cors(preflight=True)
        self.set_status(204)
        self.finish()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self._grant_cors()
        # As set_header() would, without checking constant values per subscriber.
        headers = self._headers
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        # Output transforms (gzip) cannot apply to frames written straight to the
        # socket, and compressing a live stream only adds latency.
        self._transforms = []
        retry = (
            self._retry
            if self._retry is not None
            else self.settings.get("sse_retry", DEFAULT_SSE_RETRY)
        )
        hint = b""
        if retry:
            jitter = self.settings.get("sse_retry_jitter", DEFAULT_SSE_RETRY_JITTER)
            if jitter:
                retry *= random.uniform(1 - jitter, 1 + jitter)
            hint = b"retry: %d\n\n" % max(1, round(retry))
        detach = self._detachable(EventSource) and self._plain_response()
        if detach:
            stream = self._open_detached(hint)
            if stream is None:
                return  # the client is already gone
            chunked = self._chunked
        else:
            if hint:
                self.write(hint)
            try:
                await self.flush()
            except StreamClosedError:
                return
            connection = self.request.connection
            stream = connection.stream  # type: ignore[union-attr]
            if stream.closed():
                return
            self._set_nodelay(stream)
            chunked = getattr(connection, "_chunking_output", self.request.version == "HTTP/1.1")
        if detach or self._fast_path(EventSource):  # detachable implies the fast path
            self._attach(stream, FORMAT_SSE_CHUNKED if chunked else FORMAT_SSE)
            self._resume_from(self._last_event_id())
            self._schedule_heartbeat()
        self._subscribe()
        self._streaming = True
        # The response stays open after get() returns: Tornado finishes it only when
        # told to (_end_stream). No task, coroutine or future waits per subscriber for
        # the life of the stream (about 1.5 KB and a dozen objects the garbage
        # collector would walk), and nothing is left to cancel when the loop ends.
        self._auto_finish = False
        if detach:
            self._log_opened()
            self._shed()

    def _plain_response(self) -> bool:
        """Whether the response head is one :meth:`_open_detached` writes as Tornado
        would: status 200, no cookie to set, HTTP/1.x."""
        return (
            self._status_code == 200
            and "_new_cookie" not in self.__dict__  # set by set_cookie()
            and self.request.version in ("HTTP/1.1", "HTTP/1.0")
        )

    def _open_detached(self, hint: bytes) -> RawStream | None:
        """Take the socket from Tornado and start the response on it: the status line
        and headers Tornado would send (``HTTP1Connection.write_headers``), then the
        ``retry:`` hint, in one ``send()``. Writing them through Tornado costs a
        future, its callbacks and a loop iteration per subscriber, about a sixth of
        what admitting one costs. Returns the stream, or None when the client is
        already gone."""
        request = self.request
        chunked = request.version == "HTTP/1.1"
        headers = self._headers
        connection_header = ",".join(request.headers.get_list("Connection")).lower()
        if chunked:
            if connection_header == "close":
                headers["Connection"] = "close"
            headers["Transfer-Encoding"] = "chunked"
        elif connection_header == "keep-alive":
            headers["Connection"] = "Keep-Alive"
        # Tornado refused CR and LF in header values when they were set.
        head = "\r\n".join(
            [f"HTTP/1.1 200 {self._reason}"] + [f"{n}: {v}" for n, v in headers.get_all()]
        ).encode("latin1")
        if hint and chunked:
            hint = b"%x\r\n%b\r\n" % (len(hint), hint)
        stream = request.connection.stream  # type: ignore[union-attr]
        self._track(stream)
        self.detach()
        self._headers_written = True
        self._set_nodelay(stream)
        raw, _ = take_over(stream)  # type: ignore[misc]
        raw.set_close_callback(self.on_connection_close)
        raw.start_reading()
        self._raw = raw
        self._chunked = chunked
        raw.send(head + b"\r\n\r\n" + hint)
        return None if raw.closed() else raw

    def _end_stream(self) -> None:
        """End the response (the terminating chunk), once; quietly when the client is
        already gone."""
        self._resolve()
        raw = self._raw
        if raw is not None:
            self.on_finish()  # as Tornado's finish() would
            raw.end(b"0\r\n\r\n" if self._chunked else b"")  # the terminating chunk
            return
        if not self._finished:
            try:
                self.finish()
            except Exception:  # the connection is already gone: nothing to end
                logger.debug("%r: could not finish", self, exc_info=True)

    def publish(self, message: Any) -> Any:
        """Write one message as an SSE event (the generic path)."""
        payload, _ = encode_message(message)
        self.write(sse_event(payload))
        return self.flush()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._auto_finish:
            self._resolve()  # get() has not returned yet: Tornado finishes it
        else:
            self._end_stream()  # on_finish() runs, as for any finished request

    def _tornadose_end(self, revoked: bool = False, reason: str = "store closed") -> None:
        self._end_stream()

    def _resolve(self) -> None:
        if self._heartbeat_wheel is not None:
            self._heartbeat_wheel.discard(self, self._heartbeat_slot)
            self._heartbeat_wheel = None
        self._streaming = False

    def _schedule_heartbeat(self) -> None:
        interval = self._heartbeat_interval
        if interval is None:
            interval = self.settings.get("sse_heartbeat_interval", DEFAULT_SSE_HEARTBEAT_INTERVAL)
        if interval:
            # Counts as written: the first beat comes after a whole interval of silence.
            for _, subscriber in self._targets:
                subscriber._tornadose_sink.written = True
            self._heartbeat_wheel = _heartbeat.wheel(interval)
            self._heartbeat_slot = self._heartbeat_wheel.add(self)

    def _heartbeat_visit(self) -> None:
        if not self._targets or not self._streaming:
            return
        sinks = [subscriber._tornadose_sink for _, subscriber in self._targets]
        # Only idle streams need it: anything written since the last visit, or still
        # queued, already tells the proxy the stream is alive. Every target writes to
        # the same stream, so one beat through the first serves them all.
        if not any(sink.written for sink in sinks) and not sinks[0].stream.writing():
            self._targets[0][0]._write_extra(sinks[0], _HEARTBEAT, None)  # type: ignore[attr-defined]
        for sink in sinks:
            sink.written = False


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

    def initialize(
        self, store: stores.BaseStore, allowed_origins: Sequence[str] | str | None = None
    ) -> None:
        """Bind to ``store``; registration happens once the WebSocket is open."""
        self._bind(store)
        self._set_origins(allowed_origins)

    def prepare(self) -> None:
        self._reserve()

    def check_origin(self, origin: str) -> bool:
        """Whether a cross-origin WebSocket from ``origin`` may connect: with
        ``tornadose_allowed_origins`` (or ``allowed_origins``), exactly the origins
        listed (``"*"``: any); without, Tornado's rule (none). Same-origin requests
        never get here: Tornado always lets them in."""
        origins = self._allowed_origins()
        if origins is None:
            return super().check_origin(origin)
        return self._origin_in(origin, origins)

    @property
    def max_message_size(self) -> int:
        return self.settings.get("websocket_max_message_size", DEFAULT_WS_MAX_INCOMING)

    _DETACH_HOOKS = (
        "on_message", "on_close", "on_connection_close", "on_ws_connection_close",
        "on_ping", "on_pong", "on_finish", "select_subprotocol", "get_compression_options",
        "write_message", "close", "ping",
    )

    @property
    def _detach_base(self) -> type:
        # The class whose hooks are ours: a topic socket's on_message is the protocol.
        if isinstance(self, TopicWebSocketSubscriber):
            return TopicWebSocketSubscriber
        return WebSocketSubscriber

    def get_websocket_protocol(self) -> Any:
        # The detached path answers the upgrade itself when nothing needs Tornado's
        # protocol object for the life of the socket (compression, a subprotocol, a
        # subclass hook); Tornado has checked the request already.
        if (
            self.request.headers.get("Sec-WebSocket-Version") == "13"
            and self.get_compression_options() is None
            and self._detachable(self._detach_base)
        ):
            return Handshake()
        return super().get_websocket_protocol()

    def open(self, *args: Any, **kwargs: Any) -> None:
        connection = self.ws_connection
        stream: Any = self._raw
        if stream is None:
            if connection is None:
                return  # the client left during the handshake: nothing to subscribe
            stream = connection.stream  # type: ignore[attr-defined]
        if stream.closed():
            return
        self._set_nodelay(stream)
        if self._fast_path(WebSocketSubscriber):
            compressed = getattr(connection, "_compressor", None) is not None
            self._attach(stream, FORMAT_WS, self._write_frames if compressed else None)
            self._resume_from(self.get_query_argument("last_event_id", None, strip=False) or None)
        self._subscribe()
        if self._raw is not None:
            self._start_pinging()

    def on_message(self, message: str | bytes) -> None:
        """Ignore client messages: this socket only publishes."""

    def on_close(self) -> None:
        self._release_reservation()
        self._unsubscribe()

    def on_finish(self) -> None:
        # Status 101: the upgrade response is finished, the WebSocket lives on, and
        # open() subscribes. Anything else (a refused upgrade) is the end.
        if self.get_status() != 101:
            super().on_finish()

    def on_connection_close(self) -> None:
        # BaseHandler's comes first in the MRO; Tornado's must run too, so that
        # on_close() is called (subclasses of the original rely on it).
        self._release_reservation()
        self._unsubscribe()
        WebSocketHandler.on_connection_close(self)

    def publish(self, message: Any) -> Any:
        """Send one message as ``{"data": message}`` (the generic path)."""
        _, json_value = encode_message(message)
        return self.write_message(ws_data_body(json_value))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Stop raw writes before the close frame: nothing may follow it.
        self._unsubscribe()
        if self._raw is not None:
            self._raw.close_handshake(code, reason)  # type: ignore[attr-defined]
            return
        super().close(code, reason)

    def write_message(
        self, message: bytes | str | dict[str, Any], binary: bool = False
    ) -> Any:
        """As Tornado's; on a detached socket the frame goes after everything queued."""
        raw: Any = self._raw
        if raw is None:
            return super().write_message(message, binary)
        if raw.is_closing():
            raise WebSocketClosedError()
        if isinstance(message, dict):
            message = json_encode(message)
        payload = message.encode("utf-8") if isinstance(message, str) else message
        return raw.send_frame(data_frame(payload, binary))

    def ping(self, data: str | bytes = b"") -> None:
        """As Tornado's (at most 125 bytes)."""
        raw: Any = self._raw
        if raw is None:
            super().ping(data)
            return
        if raw.is_closing():
            raise WebSocketClosedError()
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if len(payload) > 125:
            raise ValueError("ping data must be at most 125 bytes")
        raw.ping(payload)

    _ping_wheel: _heartbeat.HeartbeatWheel | None = None
    _ping_slot = 0

    def _start_pinging(self) -> None:
        """``websocket_ping_interval`` on a detached socket: the loop's wheel visits it
        once per interval (see :mod:`tornadose._heartbeat`)."""
        interval = self.ping_interval
        if interval:
            self._ping_wheel = _heartbeat.wheel(interval)
            self._ping_slot = self._ping_wheel.add(self)

    def _heartbeat_visit(self) -> None:
        # A ping per visit; an unanswered one older than websocket_ping_timeout (default
        # the interval) at a visit ends the connection, as Tornado does.
        raw: Any = self._raw
        if raw is None or raw.is_closing():
            return
        now = raw.io_loop.time()
        timeout = self.ping_timeout
        if timeout is None:
            timeout = self.ping_interval
        if timeout and raw.ping_sent is not None and now - raw.ping_sent >= timeout:
            logger.debug("%r: no pong within %s s; closing", self, timeout)
            raw.close()
            return
        raw.ping()
        if raw.ping_sent is None:
            raw.ping_sent = now

    def _ws_closed(self, code: int | None, reason: str | None) -> None:
        """The detached socket closed (for any reason): as Tornado's on_close path."""
        if self._ping_wheel is not None:
            self._ping_wheel.discard(self, self._ping_slot)
            self._ping_wheel = None
        self.close_code = code
        self.close_reason = reason
        self.on_close()

    def _write_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                self.write_message(frame[_ws_header_size(frame):])
            except WebSocketClosedError:
                return

    def _close_stream(self) -> None:
        if self._raw is not None:
            self._raw.close()
            return
        connection = self.ws_connection
        if connection is not None:
            connection.stream.close()  # type: ignore[union-attr]

    def _tornadose_end(self, revoked: bool = False, reason: str = "store closed") -> None:
        if revoked:
            self.close(1008, "revoked")  # policy violation: the server withdrew access
        else:
            self.close(1001, reason)


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

    def _attach(self, stream: Any, format: int, deliver: Any = None) -> None:
        self._tornadose_sink = Sink(stream, format, self._lapped, deliver)

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
    ) -> None:
        """Bind to ``registry``; the topics are read from the request."""
        self._bind_registry(registry)
        self._init_stream(heartbeat_interval, retry)
        self._set_origins(allowed_origins)

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

    def initialize(  # type: ignore[override]
        self, registry: TopicRegistry, allowed_origins: Sequence[str] | str | None = None
    ) -> None:
        """Bind to ``registry``; the topics are read from the request."""
        self._bind_registry(registry)
        self._set_origins(allowed_origins)

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


def _check_origins(origins: Sequence[str] | str) -> frozenset[str] | str:
    """``"*"``, or the origins (``scheme://host[:port]``) in lower case. Raises
    ``TypeError`` for anything else."""
    if origins == "*":
        return "*"
    if isinstance(origins, str) or not all(isinstance(o, str) and "://" in o for o in origins):
        raise TypeError(
            f'allowed origins must be "*" or a list of origins like "https://example.com", '
            f"got {origins!r}"
        )
    return frozenset(origin.lower().rstrip("/") for origin in origins)


_limit_cache = [0.0, 0]  # [when read, RLIMIT_NOFILE soft limit]


def _open_files_limit() -> int:
    """The soft ``RLIMIT_NOFILE``, read from the kernel at most once a second: every
    new subscriber checks it, and a change (``setrlimit``) is rare and need not be seen
    at once."""
    now = time.monotonic()
    if now - _limit_cache[0] >= 1.0:
        _limit_cache[0] = now
        _limit_cache[1] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _limit_cache[1]


def _valid(name: str) -> bool:
    try:
        check_topic_name(name)
    except TopicNameError:
        return False
    return True


def _ws_header_size(frame: bytes) -> int:
    length = frame[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10

