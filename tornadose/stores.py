"""Data stores: where messages are submitted and from where they reach subscribers.

API-compatible with the original ``tornadose.stores``. :class:`DataStore` and
:class:`QueueStore` serialize each message once into ready-to-write frames, keep them in
a bounded ring and fan them out with one write per subscriber per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Generator
from typing import Any

from tornado.log import app_log

from .fanout import Fanout, Sink
from .frames import build_frames
from .ring import Ring

__all__ = ["BaseStore", "DataStore", "QueueStore"]

logger = logging.getLogger("tornadose.stores")

DEFAULT_CAPACITY = 4096
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class _Submitted:
    """What ``submit()`` returns: usable as a plain call, awaitable, and yieldable from
    ``tornado.gen`` coroutines. The work is already done when it is returned."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator; never reached

    def __repr__(self) -> str:
        return "<tornadose submitted>"


SUBMITTED = _Submitted()


class BaseStore:
    """Base class for all data store types.

    At a minimum, derived classes should implement ``submit`` and ``publish``.
    ``subscribers`` is the live set of registered subscribers (request handlers).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.subscribers: set[Any] = set()
        self.initialize(*args, **kwargs)

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """Hook for custom initialization; override this instead of ``__init__``."""

    def register(self, subscriber: Any) -> None:
        """Start publishing to ``subscriber``, an object with a ``submit(message)`` method
        (normally a request handler). Raises ``TypeError`` for anything else."""
        if not callable(getattr(subscriber, "submit", None)):
            raise TypeError(f"a subscriber needs a submit(message) method, got {subscriber!r}")
        self.subscribers.add(subscriber)

    def deregister(self, subscriber: Any) -> None:
        """Stop publishing to ``subscriber``; unknown subscribers are ignored."""
        self.subscribers.discard(subscriber)

    def submit(self, message: Any) -> Awaitable[None] | None:
        """Add a new message to be pushed to subscribers. Must be implemented by subclasses."""
        raise NotImplementedError("submit must be implemented!")

    def publish(self) -> Any:
        """Push messages to all subscribers. Must be implemented by subclasses."""
        raise NotImplementedError("publish must be implemented!")


def _new_epoch() -> bytes:
    # Distinguishes this store instance from a restarted one in event ids.
    return os.urandom(4).hex().encode()


class _RingStore(BaseStore):
    """The shared core of DataStore and QueueStore: ring, fan-out and flush scheduling.

    Subscribers come in two kinds. Handlers of this package expose a ``_tornadose_sink``
    and take the fast path (frames from the ring, one write per flush). Any other object
    with ``submit(message)`` takes the generic path: its ``submit`` is called with each
    message, in order, when the store flushes.
    """

    _conflate = False

    def __init__(
        self,
        *args: Any,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **kwargs: Any,
    ) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, got {max_message_size}")
        self._ring = Ring(1 if self._conflate else capacity, max_bytes)
        self._fanout = Fanout(self._ring, self._conflate)
        self.max_message_size = max_message_size
        self._epoch = _new_epoch()
        self._id_prefix = self._epoch + b"-"
        self._generic: dict[Any, None] = {}
        self._generic_pending: list[Any] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        super().__init__(*args, **kwargs)

    @property
    def capacity(self) -> int:
        """How many messages the ring retains."""
        return self._ring.capacity

    @property
    def max_bytes(self) -> int:
        """How many bytes of frames the ring retains at most."""
        return self._ring.max_bytes

    # -- submitting -----------------------------------------------------------------

    def _append(self, message: Any) -> None:
        """Serialize ``message`` into the ring and schedule a flush.

        Raises ``TypeError``/``ValueError`` for a message that cannot be sent, before
        anything changes.
        """
        ring = self._ring
        event_id = self._id_prefix + str(ring.head).encode()
        sse, ws, size = build_frames(message, event_id)
        if size > self.max_message_size:
            raise ValueError(
                f"message of {size} bytes exceeds max_message_size={self.max_message_size}"
            )
        ring.append(sse, ws)
        if self._generic:
            if self._conflate:
                self._generic_pending[:] = [message]
            else:
                self._generic_pending.append(message)
        if self._fanout or self._generic:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop runs in this thread. Before the server starts that is fine (no one
            # is subscribed yet); while the subscribers' loop runs in another thread it
            # would lose messages, so say so.
            if self._loop is not None and self._loop.is_running():
                raise RuntimeError(
                    "submit() was called outside the event loop's thread; from another "
                    "thread use IOLoop.add_callback(store.submit, message)"
                ) from None
            return
        if self._flush_loop is loop:
            return
        self._flush_loop = loop
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_loop = None
        self._fanout.flush()
        if self._generic_pending:
            pending, self._generic_pending = self._generic_pending, []
            for subscriber in tuple(self._generic):
                for message in pending:
                    if not self._submit_generic(subscriber, message):
                        break

    def _submit_generic(self, subscriber: Any, message: Any) -> bool:
        try:
            subscriber.submit(message)
        except Exception:
            # A bug in a custom subscriber must not stop delivery to the others.
            app_log.error("tornadose: %r.submit() failed; subscriber removed", subscriber, exc_info=True)
            self.deregister(subscriber)
            return False
        return True

    def publish(self) -> None:
        """Deliver everything submitted so far now, instead of at the end of this
        event-loop iteration. Delivery never needs this call."""
        self._flush()

    # -- subscribers ------------------------------------------------------------------

    def register(self, subscriber: Any) -> None:
        """Start publishing to ``subscriber``.

        A handler of this package gets frames written straight from the ring. Any other
        object with a ``submit(message)`` method gets that method called with every
        message. Raises ``TypeError`` for an object without ``submit``.
        """
        super().register(subscriber)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        sink: Sink | None = getattr(subscriber, "_tornadose_sink", None)
        if sink is not None:
            self._fanout.add(sink, self._start_cursor())
            self._fanout.flush_one(sink)
        else:
            self._generic[subscriber] = None
            self._welcome_generic(subscriber)
        logger.debug("subscriber added to %r (%d now)", self, len(self.subscribers))

    def deregister(self, subscriber: Any) -> None:
        """Stop publishing to ``subscriber``; unknown subscribers are ignored."""
        super().deregister(subscriber)
        sink = getattr(subscriber, "_tornadose_sink", None)
        if sink is not None:
            self._fanout.discard(sink)
        self._generic.pop(subscriber, None)

    def _start_cursor(self) -> int:
        return self._ring.head

    def _welcome_generic(self, subscriber: Any) -> None:
        """Hook: what a new generic subscriber receives at once."""

    def close(self) -> None:
        """End every subscriber's stream cleanly and drop the history.

        Handlers of this package finish their response (SSE) or close the WebSocket
        normally. The store can be used again afterwards.
        """
        for subscriber in tuple(self.subscribers):
            end = getattr(subscriber, "_tornadose_end", None)
            self.deregister(subscriber)
            if end is not None:
                end()
        self._ring.clear()

    def stats(self) -> dict[str, int]:
        """Counters since the store was created, and the ring's current occupancy."""
        fanout = self._fanout
        return {
            "subscribers": len(self.subscribers),
            "messages": self._ring.head,
            "retained": len(self._ring),
            "retained_bytes": self._ring.nbytes,
            "delivered": fanout.delivered,
            "writes": fanout.writes,
            "lapped": fanout.lapped,
            "conflated": fanout.conflated,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._epoch.decode()}>"


class DataStore(_RingStore):
    """Latest-value store: subscribers always converge on the newest data.

    Set :attr:`data` (or call :meth:`set_data` / :meth:`submit`) whenever new data is
    available. A new subscriber receives the current value at once (unless it is
    ``None``); a subscriber that cannot keep up skips to the newest value instead of
    receiving a backlog.
    """

    _conflate = True

    def initialize(self, initial_data: Any = None) -> None:
        self._data: Any = None
        self.set_data(initial_data)

    def set_data(self, new_data: Any) -> None:
        """Replace the current value and send it to every subscriber.

        ``None`` clears the value: nothing is sent, and new subscribers get nothing
        until the next value. Raises ``TypeError``/``ValueError`` for data that cannot be
        sent; the previous value then stays current.
        """
        if new_data is None:
            self._data = None
            self._ring.clear()
            return
        self._append(new_data)
        self._data = new_data

    @property
    def data(self) -> Any:
        """The current value, as it was given."""
        return self._data

    @data.setter
    def data(self, new_data: Any) -> None:
        self.set_data(new_data)

    def submit(self, message: Any) -> _Submitted:
        """Make ``message`` the current value. Works called plainly or awaited."""
        self.set_data(message)
        return SUBMITTED

    def _start_cursor(self) -> int:
        # One behind the head: the newest value, if the ring still holds it.
        return max(self._ring.tail, self._ring.head - 1)

    def _welcome_generic(self, subscriber: Any) -> None:
        if self._data is not None:
            self._submit_generic(subscriber, self._data)


class QueueStore(_RingStore):
    """Every message, in submit order, to every subscriber registered at submit time.

    ``capacity`` (messages) and ``max_bytes`` (bytes of frames) bound the history that
    subscribers may lag behind; server memory stays within them whatever clients do. A
    subscriber that falls further behind is disconnected, never silently skipped.
    ``max_message_size`` bounds one message's payload.
    """

    def initialize(self) -> None:
        pass

    def submit(self, message: Any) -> _Submitted:
        """Queue ``message`` for every subscriber. Works called plainly or awaited.

        Raises ``TypeError`` for an object that cannot be serialized and ``ValueError``
        for invalid UTF-8 or a payload over ``max_message_size``; nothing is queued then.
        """
        self._append(message)
        return SUBMITTED
