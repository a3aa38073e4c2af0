"""BaseHandler: what every subscriber handler shares.

A connection subscribes a list of ``(store, subscriber)`` targets (a plain handler is
the one-target case, itself subscribed to its store), each with its own cursor (a
``Sink``) on the same socket. Stores of this package write frames straight to it (the
fast path); any other store calls ``submit(message)``, which calls ``publish(message)``
in order (the generic path the original documents). Admission, origins and detaching
are mixins of their own modules.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler
from tornado.websocket import WebSocketClosedError

from ..core.fanout import Sink
from ..pubsub import store as stores
from ..transport import http as _http
from ..transport.rawstream import RawStream
from .admission import Admission
from .compress import Compressing
from .detach import Detaching
from .origins import Origins

__all__ = ["BaseHandler", "DEFAULT_OUTBOX_LIMIT"]

logger = logging.getLogger("tornadose.handlers")

# Generic-path subscribers hold at most this many undelivered messages (or the store's
# capacity, when it has one) before they are disconnected: memory stays bounded.
DEFAULT_OUTBOX_LIMIT = 4096
_DISCONNECTED = (StreamClosedError, WebSocketClosedError)
# (handler class, base, method names) -> whether the class overrides one of them.
_OVERRIDES: dict[tuple[type, type, tuple[str, ...]], bool] = {}


class BaseHandler(Admission, Origins, Detaching, Compressing, RequestHandler):
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

    def _attach(self, stream: Any, format: int, deliver: Any = None, codec: Any = None) -> None:
        """Give every target a cursor (a Sink) on ``stream``: the fast path. A
        ``codec`` (the connection's compressed stream) is shared by all of them."""
        for _, subscriber in self._targets:
            subscriber._tornadose_sink = Sink(stream, format, self._lapped, deliver, codec)

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

    def _drop(self) -> None:
        """Deregister and close the connection (a subscriber that cannot be served)."""
        self._unsubscribe()
        self._close_stream()

    def _overrides(self, base: type, *names: str) -> bool:
        cls = type(self)
        key = (cls, base, names)
        found = _OVERRIDES.get(key)
        if found is None:
            found = _OVERRIDES[key] = any(
                getattr(cls, name) is not getattr(base, name) for name in names
            )
        return found
