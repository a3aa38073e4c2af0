"""Data stores: where messages are submitted and from where they reach subscribers.

Re-exported by :mod:`tornadose.stores`, API-compatible with the original one.
:class:`DataStore` and :class:`QueueStore` serialize each message once into
ready-to-write frames, keep them in the log as its one topic, and deliver them through
the same engine as a topic registry (:mod:`tornadose.core.engine`): one write per
subscriber per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any

from tornado.log import app_log

from ..core import instruments as _instruments
from ..core.engine import Fanout
from ..core.fanout import Sink
from ..core.frames import build_frames
from ..core.ring import TopicRing, TopicState

__all__ = ["GAP_EVENT", "BaseStore", "DataStore", "QueueStore"]

logger = logging.getLogger("tornadose.stores")

# History a subscriber may lag behind or resume across: ~16 s at 1,000 msg/s, enough for
# a reconnect storm (retry hint up to 3 s by default, then admission); ~4 MiB of frames
# for ~100-byte messages, and never more than max_bytes.
DEFAULT_CAPACITY = 16384
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_WRITE_TIMEOUT = 30.0

#: The ``event:`` type of the notice a resuming subscriber gets when messages after its
#: Last-Event-ID can no longer be replayed. Its data is a JSON object:
#: ``{"reason": "expired" | "restarted" | "unknown" | "malformed", "last_event_id": ...,
#: "missed": <count, or null when unknown>}``; its ``id`` is the live position.
GAP_EVENT = "tornadose-gap"
_GAP_EVENT = GAP_EVENT.encode()
# Longest Last-Event-ID echoed back in a gap notice; longer ones are cut.
_ECHO_LIMIT = 128


#: The longest ``write_delay`` accepted, in seconds.
MAX_WRITE_DELAY = 1.0


def check_write_delay(delay: float) -> float:
    """Return ``delay`` when it is a valid ``write_delay``; raise ``ValueError``
    otherwise (negative, or over :data:`MAX_WRITE_DELAY`)."""
    if not 0 <= delay <= MAX_WRITE_DELAY:
        raise ValueError(f"write_delay must be between 0 and {MAX_WRITE_DELAY} s, got {delay}")
    return delay


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


def _queued_bytes(stream: Any) -> int:
    """Bytes a subscriber's connection holds that its socket has not taken yet: a
    detached stream's (``tornadose.transport.rawstream``) or an ``IOStream``'s write buffer."""
    if getattr(stream, "tornadose_raw", False):
        return stream._size  # type: ignore[no-any-return]
    queued = getattr(stream, "_write_buffer", None)
    return len(queued) if queued else 0


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
    # Listed for metrics; not the internal store a topic registry reads a stream with.
    _instrumented = True
    # Event ids are "<epoch>-<seq>", so an id says which store instance it came from.
    # Topic connections rely on that to route one Last-Event-ID to its topic.
    _ids_name_the_store = True

    def __init__(
        self,
        *args: Any,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_subscribers: int | None = None,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        write_delay: float = 0.0,
        event: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if event is not None and (not event or any(c in event for c in "\r\n\0")):
            raise ValueError(f"event must be a non-empty name without CR, LF or NUL, got {event!r}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, got {max_message_size}")
        if max_subscribers is not None and max_subscribers < 1:
            raise ValueError(f"max_subscribers must be at least 1, got {max_subscribers}")
        if write_timeout < 0:
            raise ValueError(f"write_timeout must not be negative, got {write_timeout}")
        self.write_delay = check_write_delay(write_delay)
        # Sequence numbers start at 1, so that position 0 means "nothing seen yet".
        # A store is the one-topic case of the topic log: one engine delivers both.
        self._ring = TopicRing(1 if self._conflate else capacity, max_bytes, 1, self._conflate)
        self._fanout = Fanout(self._ring, self._conflate, write_timeout)
        self._topic = TopicState("")
        # Every connection of the store is on its one topic: the topic's index of
        # connections is the fan-out's set (one dict, not two, per store).
        self._topic.subs = self._fanout._sinks
        # Shared by every connection (``Fanout.add`` keeps a tuple as it is).
        self._topics = (self._topic,)
        self.max_message_size = max_message_size
        self.max_subscribers = max_subscribers
        self.event = event
        self._event = event.encode() if event is not None else None
        self._epoch = _new_epoch()
        self._id_prefix = self._epoch + b"-"
        self._generic: dict[Any, None] = {}
        self._generic_pending: list[Any] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._joining = 0
        self._disconnected = 0
        self._resumed = 0
        self._gaps = 0
        self._rejected = 0
        self._revoked = 0  # subscribers ended by disconnect()
        self._closed = 0  # subscribers ended by close()
        self._pass_times: _instruments.PassTimes | None = None
        #: The ``name`` label of this store's metrics (see :mod:`tornadose.metrics`).
        self.name = (
            _instruments.track(self, name, type(self).__name__.lower())
            if self._instrumented
            else name or ""
        )
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

    def _append(self, message: Any, event_id: bytes | None = None) -> None:
        """Serialize ``message`` into the ring and schedule a flush.

        ``event_id`` is the message's event id; by default the store's own
        (:meth:`_event_id` of its sequence number). Subclasses whose ids come from
        elsewhere (a Redis stream) pass them here. Raises ``TypeError``/``ValueError``
        for a message that cannot be sent, before anything changes.
        """
        ring = self._ring
        if event_id is None:
            event_id = self._event_id(ring.head)
        sse, ws, size = build_frames(message, event_id, self._event)
        if size > self.max_message_size:
            raise ValueError(
                f"message of {size} bytes exceeds max_message_size={self.max_message_size}"
            )
        ring.add_entry(sse, ws, self._topic)
        if self._generic:
            if self._conflate:
                self._generic_pending[:] = [message]
            else:
                self._generic_pending.append(message)
        if self._fanout or self._generic:
            self._schedule()
        if not self._fanout:
            # Nobody to deliver to: the next connection starts from here.
            self._fanout.flushed = ring.head

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
        if self.write_delay:
            loop.call_later(self.write_delay, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_loop = None
        _instruments.run_pass(self._pass_times, self._fanout.flush)
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

        A handler of this package gets frames written straight from the ring, starting
        after the Last-Event-ID it carries, if any (see :meth:`_resume_point`). Any other
        object with a ``submit(message)`` method gets that method called with every
        message. Raises ``TypeError`` for an object without ``submit``.
        """
        super().register(subscriber)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        sink: Sink | None = getattr(subscriber, "_tornadose_sink", None)
        if sink is None:
            self._generic[subscriber] = None
            self._welcome_generic(subscriber)
            return
        self._add_sink(subscriber, sink, getattr(subscriber, "_tornadose_last_event_id", None))
        logger.debug("subscriber added to %r (%d now)", self, len(self.subscribers))

    def _add_sink(self, subscriber: Any, sink: Sink, last_event_id: str | None) -> None:
        """Start delivering to a fast-path subscriber's ``sink``, from where
        :meth:`_resume_point` says, after a gap notice when there is one.

        Hook: a subclass that must look further than the ring to resume (a Redis
        stream's history) overrides this, and may add the sink to the fan-out later.
        """
        cursor, gap = self._resume_point(last_event_id)
        if gap is not None:
            self._gaps += 1
            sse, ws, _ = build_frames(gap, self._event_id(self._ring.head - 1), _GAP_EVENT)
            self._fanout.write_extra(sink, sse, ws)
        elif last_event_id is not None:
            self._resumed += 1
        self._fanout.add(sink, self._topics, cursor)

    def deregister(self, subscriber: Any) -> None:
        """Stop publishing to ``subscriber``; unknown subscribers are ignored."""
        if subscriber in self.subscribers:
            self._disconnected += 1
        super().deregister(subscriber)
        sink = getattr(subscriber, "_tornadose_sink", None)
        if sink is not None:
            self._fanout.discard(sink)
        self._generic.pop(subscriber, None)

    def _event_id(self, seq: int) -> bytes:
        return self._id_prefix + str(seq).encode()

    def _resume_point(self, last_event_id: str | None) -> tuple[int, dict[str, Any] | None]:
        """Return ``(cursor, gap)`` for a subscriber that last saw ``last_event_id``.

        Without an id the subscriber starts live. An id of this store whose successors
        are all still in the ring resumes right after it: no gap, no duplicate. Any other
        id (too old, from another run of the store, from the future, malformed) starts
        live with a gap notice describing why.
        """
        ring = self._ring
        if last_event_id is None:
            return ring.head, None
        epoch, dash, number = last_event_id.rpartition("-")
        missed = None
        if not (dash and number.isascii() and number.isdigit() and len(number) <= 19):
            reason = "malformed"
        elif epoch.encode("utf-8", "replace") != self._epoch:
            reason = "restarted"
        elif int(number) > ring.head - 1:
            reason = "unknown"
        elif int(number) < ring.tail - 1:
            reason = "expired"
            missed = ring.tail - 1 - int(number)
        else:
            return int(number) + 1, None
        gap = {"reason": reason, "last_event_id": last_event_id[:_ECHO_LIMIT], "missed": missed}
        return ring.head, gap

    def _admit(self) -> bool:
        """Reserve a place for a subscriber that is about to register.

        Returns ``False`` (and counts a rejection) when ``max_subscribers`` are already
        subscribed or joining. Each ``True`` must be matched by one :meth:`_release`.
        """
        limit = self.max_subscribers
        if limit is not None and len(self.subscribers) + self._joining >= limit:
            self._rejected += 1
            return False
        self._joining += 1
        return True

    def _release(self) -> None:
        self._joining -= 1

    def _write_extra(self, sink: Sink, sse: bytes, ws: bytes | None) -> None:
        self._fanout.write_extra(sink, sse, ws)

    def _welcome_generic(self, subscriber: Any) -> None:
        """Hook: what a new generic subscriber receives at once."""

    def close(self) -> None:
        """Deliver what is pending, then end every subscriber's stream cleanly and drop
        the history.

        Handlers of this package finish their response (SSE) or close the WebSocket
        normally (code 1001). Call it before stopping the server, so that messages
        submitted in the same event-loop iteration still go out. The store can be used
        again afterwards.
        """
        self._flush()
        self._closed += _end_subscribers(self, tuple(self.subscribers))
        self._ring.clear()

    def disconnect(self, predicate: Callable[[Any], bool]) -> int:
        """End, now, the connection of every subscriber for which ``predicate(subscriber)``
        is true (``subscriber`` is the request handler, e.g.
        ``store.disconnect(lambda h: h.current_user == "alice")``) and return how many.

        What was submitted before the call is delivered first; then SSE responses end
        and WebSockets close with code 1008 ("revoked"). Nothing is delivered to them
        afterwards. A subscriber of this package's handlers that reconnects goes through
        ``prepare()`` and authentication again. Exceptions from ``predicate`` propagate;
        subscribers already ended stay ended.
        """
        self._flush()
        ended = _end_subscribers(self, [s for s in tuple(self.subscribers) if predicate(s)],
                                 revoked=True)
        self._revoked += ended
        return ended

    def stats(self) -> dict[str, int]:
        """Counters since the store was created, and its current state.

        ``messages`` submitted; ``retained``/``retained_bytes`` in the ring now;
        ``delivered`` messages written (summed over subscribers) in ``writes`` writes;
        ``lapped`` and ``timed_out`` subscribers the store disconnected (fell off the
        ring; socket full past ``write_timeout``); ``conflated`` messages a DataStore
        subscriber skipped; ``disconnected`` subscribers that left for any reason;
        ``resumed`` subscribers that resumed from a Last-Event-ID and ``gaps`` that got a
        gap notice instead; ``rejected`` over ``max_subscribers``; ``revoked`` and
        ``closed`` subscribers ended by :meth:`disconnect` and :meth:`close`; ``max_lag``
        messages the furthest-behind subscriber still has to receive.
        """
        fanout = self._fanout
        head = self._ring.head
        return {
            "subscribers": len(self.subscribers),
            "messages": head - 1,
            "retained": len(self._ring),
            "retained_bytes": self._ring.nbytes,
            "delivered": fanout.delivered,
            "writes": fanout.writes,
            "lapped": fanout.lapped,
            "timed_out": fanout.timed_out,
            "conflated": fanout.conflated,
            "disconnected": self._disconnected,
            "resumed": self._resumed,
            "gaps": self._gaps,
            "rejected": self._rejected,
            "revoked": self._revoked,
            "closed": self._closed,
            "max_lag": max((head - fanout.position(sink) for sink in fanout), default=0),
        }

    def lag(self) -> list[dict[str, Any]]:
        """Per fast-path subscriber: how far behind it is.

        Each entry has ``subscriber`` (the handler), ``messages`` (in the ring, not yet
        written to it) and ``bytes`` (those messages' frames plus what its connection
        still has queued).
        """
        fanout = self._fanout
        head = self._ring.head
        out = []
        for subscriber in tuple(self.subscribers):
            sink = getattr(subscriber, "_tornadose_sink", None)
            if sink is None or sink not in fanout:
                continue
            frames = fanout.pending(sink)
            out.append(
                {
                    "subscriber": subscriber,
                    "messages": head - fanout.position(sink),
                    "bytes": sum(map(len, frames)) + _queued_bytes(sink.stream),
                }
            )
        return out

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
            self._topic.last_sse = self._topic.last_ws = None
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

    def _resume_point(self, last_event_id: str | None) -> tuple[int, dict[str, Any] | None]:
        # Latest-value semantics: a subscriber always gets the current value, unless it
        # says it has seen exactly that value already. There is never a gap to report.
        ring = self._ring
        if last_event_id is not None and ring.head > ring.tail:
            if last_event_id.encode("utf-8", "replace") == self._event_id(ring.head - 1):
                return ring.head, None
        return ring.tail, None

    def _welcome_generic(self, subscriber: Any) -> None:
        if self._data is not None:
            self._submit_generic(subscriber, self._data)


class QueueStore(_RingStore):
    """Every message, in submit order, to every subscriber registered at submit time.

    ``capacity`` (messages) and ``max_bytes`` (bytes of frames) bound the history that
    subscribers may lag behind; server memory stays within them whatever clients do. A
    subscriber that falls further behind is disconnected, never silently skipped.
    ``max_message_size`` bounds one message's payload. Keyword arguments shared by all
    stores of this package: ``max_subscribers`` (extra clients get 503),
    ``write_timeout`` (seconds a subscriber's socket may stay full before it is
    dropped), ``write_delay`` (seconds, default 0: messages are written at the end of
    the loop turn that submitted them; up to 1 s: written at most that late, so that
    more of them share one write, for less CPU per message at the cost of latency) and
    ``event`` (the SSE ``event:`` type of every message, also sent as ``"event"`` in
    WebSocket frames; by default none, i.e. ``message`` events).
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


def _end_subscribers(store: Any, subscribers: Iterable[Any], revoked: bool = False) -> int:
    """Deregister ``subscribers`` from ``store`` and end their connections cleanly;
    return how many were registered."""
    ended = 0
    for subscriber in subscribers:
        if subscriber not in store.subscribers:
            continue
        ended += 1
        store.deregister(subscriber)
        end = getattr(subscriber, "_tornadose_end", None)
        if end is not None:
            end(revoked)
        elif revoked and callable(getattr(subscriber, "_drop", None)):
            subscriber._drop()  # a custom handler on the generic path: cut it
    return ended
