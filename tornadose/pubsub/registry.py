"""Topics: many named streams on one connection, as views of ONE log.

A market feed is many symbols, and each client watches a handful. A
:class:`TopicRegistry` keeps one bounded log (a :class:`~tornadose.core.ring.TopicRing`) of
pre-built frames for all its topics, in submit order, under one sequence and one id
space (``<epoch>-<seq>``). Every frame says which topic it belongs to: SSE
``event: <topic>``, WebSocket ``{"id": ..., "event": "<topic>", "data": ...}``.
:class:`~tornadose.handlers.TopicEventSource` and
:class:`~tornadose.handlers.TopicWebSocketSubscriber` subscribe one connection to
several topics; the connection holds ONE cursor and its set of topics, and each loop
turn it gets everything new of its topics in ONE write, however many topics it has.

Kinds. ``TopicRegistry(QueueStore)`` makes queue topics: every message, in order; a
connection that falls so far behind that the log lost one of ITS messages is
disconnected, never silently skipped. ``TopicRegistry(DataStore)`` makes latest-value
topics: a new connection (and a new subscription) gets each topic's current value
first, and a connection that is behind gets only the newest value of each topic.
Across the topics of one connection, order is submit order.

Resuming with one id. A browser's EventSource keeps ONE Last-Event-ID; since ids are
positions in the one log, that id resumes every topic of the connection: a client that
comes back with the last id it saw gets every message of its queue topics after it,
exactly once and in order (latest-value topics: each current value it has not seen).
Only when the log no longer holds a message of one of its topics after that id (or the
id is not from this log) does it get ONE ``tornadose-gap`` notice, ``{"reason":
"expired" | "restarted" | "unknown" | "malformed", "last_event_id": ..., "missed": null,
"topics": [<the topics that lost messages>]}``, whose id is the position from which
delivery is complete again. An id replays only the topics the connection subscribes to.

Publishers go through :meth:`TopicRegistry.submit` (or :meth:`TopicRegistry.topic`),
which creates the topic when needed and keeps it. A topic that only subscribers asked
for is created for them (so a client may subscribe before the first message) and
removed again when its last subscriber leaves, so clients cannot fill the registry
with names nobody publishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from ..core import instruments as _instruments
from ..core.engine import Fanout
from ..core.fanout import FORMAT_WS, Sink
from ..core.frames import build_frames
from ..core.ring import TopicRing, TopicState
from .names import (
    DEFAULT_MAX_TOPICS,
    DEFAULT_MAX_TOPICS_PER_SUBSCRIBER,
    TopicLimitError,
    UnknownTopicError,
    check_topic_name,
    echo,
    parse_topics,
)
from .store import (
    _GAP_EVENT,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_WRITE_TIMEOUT,
    SUBMITTED,
    DataStore,
    QueueStore,
    _new_epoch,
    _RingStore,
    check_write_delay,
)
from .topic import Topic

__all__ = ["TopicRegistry"]

# Longest Last-Event-ID echoed back in a gap notice.
_ID_ECHO_LIMIT = 128


class TopicRegistry:
    """Named topics over one log, created on demand within limits.

    ``TopicRegistry(DataStore)`` makes latest-value topics, ``TopicRegistry(QueueStore)``
    every-message topics (subclasses too); any other ``store_class`` raises
    ``TypeError``. The keyword arguments a store takes size the ONE log and apply to
    every connection: ``capacity`` (entries, all topics together), ``max_bytes``,
    ``max_message_size``, ``max_subscribers`` (connections; more get 503),
    ``write_timeout`` and ``write_delay`` (see ``QueueStore``).

    Limits: ``max_topics`` topics in the registry, ``max_topics_per_subscriber`` topics
    on one connection. With ``create_on_subscribe=False`` subscribers can only ask for
    topics a publisher created. Raises ``ValueError`` for a limit below 1 and
    ``TypeError`` for an unknown keyword argument.
    """

    def __init__(
        self,
        store_class: Callable[..., Any] = DataStore,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_topics_per_subscriber: int = DEFAULT_MAX_TOPICS_PER_SUBSCRIBER,
        create_on_subscribe: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_subscribers: int | None = None,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        write_delay: float = 0.0,
        name: str | None = None,
        **store_kwargs: Any,
    ) -> None:
        if max_topics < 1:
            raise ValueError(f"max_topics must be at least 1, got {max_topics}")
        if max_topics_per_subscriber < 1:
            raise ValueError(
                f"max_topics_per_subscriber must be at least 1, got {max_topics_per_subscriber}"
            )
        # A store class whose log lives elsewhere (RedisStreamStore: a Redis stream)
        # says how to build it; the registry knows no adapter by name.
        make_log = getattr(store_class, "_topic_log", None)
        if not isinstance(store_class, type):
            make_log = None
        streamed = make_log is not None
        if "event" in store_kwargs:
            raise TypeError("a topic's event is its topic name; do not pass event=")
        if store_kwargs and not streamed:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(store_kwargs))}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, got {max_message_size}")
        if max_subscribers is not None and max_subscribers < 1:
            raise ValueError(f"max_subscribers must be at least 1, got {max_subscribers}")
        if write_timeout < 0:
            raise ValueError(f"write_timeout must not be negative, got {write_timeout}")
        if isinstance(store_class, type) and issubclass(store_class, DataStore):
            latest = True
        elif streamed or isinstance(store_class, type) and issubclass(store_class, QueueStore):
            latest = False
        else:
            raise TypeError(
                f"{getattr(store_class, '__name__', store_class)!r} cannot back topics: a "
                "TopicRegistry keeps one log for all its topics, of the DataStore (latest "
                "value), QueueStore or RedisStreamStore (every message) kind"
            )
        self.store_class = store_class
        self.latest = latest
        self.max_topics = max_topics
        self.max_topics_per_subscriber = max_topics_per_subscriber
        self.create_on_subscribe = create_on_subscribe
        self.max_message_size = max_message_size
        self.max_subscribers = max_subscribers
        self.write_delay = check_write_delay(write_delay)
        # Sequence numbers start at 1, so that position 0 means "nothing seen yet".
        self._ring = TopicRing(capacity, max_bytes, 1, keep_latest=latest)
        self._fanout = Fanout(self._ring, latest, write_timeout)
        self._epoch = _new_epoch()
        self._id_prefix = self._epoch + b"-"
        self._topics: dict[str, Topic] = {}
        # Topics a publisher asked for: kept until removed. The others live while a
        # connection holds them; _holders counts those connections.
        self._kept: set[str] = set()
        self._holders: dict[str, int] = {}
        self._handlers: dict[Sink, Any] = {}
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._joining = 0
        self._disconnected = 0
        self._resumed = 0
        self._gaps = 0
        self._rejected = 0
        self._revoked = 0  # connections ended by disconnect()
        self._closed = 0  # connections ended by close() or remove()
        self._pass_times: _instruments.PassTimes | None = None
        #: The ``name`` label of this registry's metrics (see :mod:`tornadose.metrics`).
        self.name = _instruments.track(self, name, "topicregistry")
        # Topics of entries read from a Redis stream that no Topic object has (yet).
        self._orphans: dict[str, TopicState] = {}
        #: The Redis stream log (``TopicRegistry(RedisStreamStore, ...)``), or None.
        self._log: Any = None
        if make_log is not None:
            self._log = make_log(
                self,
                capacity=capacity,
                max_bytes=max_bytes,
                max_message_size=max_message_size,
                write_timeout=write_timeout,
                **store_kwargs,
            )

    @property
    def capacity(self) -> int:
        """How many messages the log retains, all topics together."""
        return self._ring.capacity

    @property
    def connections(self) -> int:
        """Connections subscribed through this registry's handlers right now."""
        return len(self._fanout)

    # -- publishing ---------------------------------------------------------------

    def topic(self, name: str) -> Topic:
        """Topic ``name``, created if needed and kept until :meth:`remove`.

        Raises :class:`TopicNameError` for a bad name and :class:`TopicLimitError` when
        ``max_topics`` topics exist already.
        """
        topic = self._topics.get(name)
        if topic is None:
            topic = self._create(check_topic_name(name))
        self._kept.add(name)
        return topic

    def submit(self, name: str, message: Any) -> Any:
        """Submit ``message`` to topic ``name`` (created if needed). Works called plainly
        or awaited. Raises as :meth:`topic` does, ``TypeError`` for a message that cannot
        be serialized and ``ValueError`` for invalid UTF-8 or one over
        ``max_message_size``; nothing is queued then. On a latest-value registry,
        ``None`` clears the topic's current value. Backed by a Redis stream, it returns
        what ``RedisStreamStore.submit`` does (awaited: the entry's id)."""
        return self._publish(self.topic(name), message)

    def _publish(self, topic: Topic, message: Any) -> Any:
        if self._log is not None:
            # Every process, this one included, gets it by reading the stream.
            return self._log._enqueue(message, False, topic.name)
        state = topic._state
        if message is None and self.latest:
            state.last_sse = state.last_ws = None
            topic._data = None
            return SUBMITTED
        sse, ws, size = build_frames(message, self._event_id(self._ring.head), topic._event)
        if size > self.max_message_size:
            raise ValueError(
                f"message of {size} bytes exceeds max_message_size={self.max_message_size}"
            )
        self._append_frames(state, sse, ws, message)
        return SUBMITTED

    def _append_frames(self, state: TopicState, sse: bytes, ws: bytes, message: Any) -> None:
        """Put one message's frames into the log and schedule a flush."""
        ring = self._ring
        ring.add_entry(sse, ws, state)
        topic = self._topics.get(state.name)
        if topic is not None and topic._state is state:
            topic._messages += 1
            topic._data = message
        if self._fanout:
            self._schedule()
        else:
            # Nobody to deliver to: the next connection starts from here.
            self._fanout.flushed = ring.head

    def _state_for(self, name: str) -> TopicState:
        """The log state of topic ``name``, for an entry read from a Redis stream: its
        Topic's, or one kept aside until a Topic of that name exists. Raises
        :class:`TopicNameError` for a bad name."""
        topic = self._topics.get(name)
        if topic is not None:
            return topic._state
        state = self._orphans.get(name)
        if state is None:
            check_topic_name(name)
            if len(self._orphans) >= self.max_topics:
                # Forget those of which the log holds nothing any more.
                tail = self._ring.tail
                self._orphans = {n: s for n, s in self._orphans.items() if s.last_seq >= tail}
            state = self._orphans[name] = TopicState(name)
        return state

    def _states_of(self, handler: Any) -> list[TopicState]:
        states = [topic._state for topic in handler._tornadose_topics]
        if self._log is not None:
            states.append(self._log._everyone)
        return states

    def start(self) -> Any:
        """With a Redis stream: connect and start reading (``await registry.start()``
        returns once this process reads the stream). Otherwise a no-op. Awaitable."""
        if self._log is not None:
            return self._log.start()
        return SUBMITTED

    async def aclose(self) -> None:
        """With a Redis stream: stop reading and publishing, close the connections
        (``RedisStreamStore.aclose``). Otherwise nothing to do."""
        if self._log is not None:
            await self._log.aclose()

    _schedule = _RingStore._schedule

    def _flush(self) -> None:
        self._flush_loop = None
        _instruments.run_pass(self._pass_times, self._fanout.flush)

    def publish(self) -> None:
        """Deliver everything submitted so far now, instead of at the end of this
        event-loop iteration. Delivery never needs this call."""
        self._flush()

    def remove(self, name: str) -> None:
        """Forget topic ``name``: what was submitted to it is delivered, then every
        connection subscribed to it ends cleanly (SSE responses end, WebSockets close
        with 1001), as ``store.close()`` does. Unknown names are ignored."""
        topic = self._topics.pop(name, None)
        self._kept.discard(name)
        self._holders.pop(name, None)
        if topic is None:
            return
        self._flush()
        for sink in tuple(topic._state.subs):
            self._closed += self._end(sink)

    def close(self) -> None:
        """Deliver what is pending, then end every connection's stream cleanly. The
        topics stay, and can be used again."""
        self._flush()
        for sink in tuple(self._fanout):
            self._closed += self._end(sink)

    def disconnect(self, predicate: Callable[[Any], bool]) -> int:
        """End, now, every connection whose handler satisfies ``predicate(handler)``
        (e.g. ``registry.disconnect(lambda h: h.current_user == "alice")``) and return
        how many, as :meth:`QueueStore.disconnect <tornadose.stores.QueueStore>` does:
        what was submitted before is delivered first, then SSE responses end and
        WebSockets close with 1008 ("revoked"). Exceptions from ``predicate``
        propagate; connections already ended stay ended."""
        self._flush()
        ended = 0
        for sink, handler in list(self._handlers.items()):
            if predicate(handler):
                ended += self._end(sink, revoked=True)
        self._revoked += ended
        return ended

    def _end(self, sink: Sink, revoked: bool = False) -> int:
        handler = self._handlers.get(sink)
        if handler is None:
            self._fanout.discard(sink)
            return 0
        self.deregister(handler)
        handler._tornadose_end(revoked)
        return 1

    # -- looking ------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def __len__(self) -> int:
        return len(self._topics)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._topics))

    def items(self) -> list[tuple[str, Topic]]:
        """``(name, topic)`` for every topic, in creation order."""
        return list(self._topics.items())

    def stats(self) -> dict[str, int]:
        """Counters since the registry was created, and its current state.

        ``topics``; ``connections`` subscribed now and ``subscribers``, their topic
        subscriptions (several per connection); ``messages`` submitted, all topics;
        ``retained``/``retained_bytes`` in the log now; ``delivered`` messages written
        (summed over connections) in ``writes`` writes; ``lapped`` and ``timed_out``
        connections dropped (lost messages of their topics; socket full past
        ``write_timeout``); ``disconnected`` connections that left for any reason;
        ``resumed`` from a Last-Event-ID and ``gaps`` that got a gap notice instead;
        ``rejected`` over ``max_subscribers``; ``revoked`` and ``closed`` connections
        ended by :meth:`disconnect` and by :meth:`close` / :meth:`remove`; ``max_lag``
        entries of the log the furthest-behind connection has yet to pass.
        """
        ring = self._ring
        stats = {
            "topics": len(self._topics),
            "connections": len(self._fanout),
            "subscribers": sum(len(t._state.subs) for t in self._topics.values()),
            "messages": ring.head - 1,
            "retained": len(ring),
            "retained_bytes": ring.nbytes,
        }
        stats.update(self._fanout.stats())
        if self._log is not None:
            log = self._log.stats()
            stats.update(backfilled=log["backfilled"], resuming=log["resuming"])
        stats.update(
            disconnected=self._disconnected,
            resumed=self._resumed,
            gaps=self._gaps,
            rejected=self._rejected,
            revoked=self._revoked,
            closed=self._closed,
        )
        return stats

    # -- subscribing (used by the topic handlers) ---------------------------------

    def parse(self, specs: Iterable[str], allow_empty: bool = False) -> list[str]:
        """Topic names from URL pieces: each piece a comma-separated list of names.

        Returns the names in order, without duplicates or empty pieces. Raises
        :class:`TopicError` when there are none (unless ``allow_empty``),
        :class:`TopicLimitError` for more than ``max_topics_per_subscriber``,
        :class:`TopicNameError` for a bad name.
        """
        return parse_topics(specs, self.max_topics_per_subscriber, allow_empty)

    def acquire(self, names: list[str]) -> list[Topic]:
        """The topics ``names`` (valid, as :meth:`parse` returns them) for one
        connection, created when needed; each must be matched by one :meth:`release`.

        Raises :class:`UnknownTopicError` for a topic that does not exist when
        subscribers may not create topics, and :class:`TopicLimitError` when creating
        the missing ones would exceed ``max_topics``; nothing is held then.
        """
        missing = [name for name in names if name not in self._topics]
        if missing and not self.create_on_subscribe:
            raise UnknownTopicError(f"unknown topic {echo(missing[0])}")
        if len(self._topics) + len(missing) > self.max_topics:
            raise TopicLimitError(
                f"too many topics: the server's limit of {self.max_topics} topics is "
                f"reached, so topic {echo(missing[0])} cannot be created"
            )
        topics = [self._topics.get(name) or self._create(name) for name in names]
        holders = self._holders
        for name in names:
            holders[name] = holders.get(name, 0) + 1
        return topics

    def release(self, names: list[str]) -> None:
        """A connection let go of ``names``: topics no publisher created and no other
        connection holds are removed."""
        holders = self._holders
        for name in names:
            count = holders.get(name, 0) - 1
            if count > 0:
                holders[name] = count
                continue
            holders.pop(name, None)
            topic = self._topics.get(name)
            if name not in self._kept and topic is not None and not topic._state.subs:
                del self._topics[name]
                if topic._state.last_seq >= self._ring.tail:
                    # The log still holds entries of it (read from a Redis stream): a
                    # connection that comes back for it must find them.
                    self._orphans[name] = topic._state

    def _admit(self) -> bool:
        """Reserve a place for a connection about to register; ``False`` (and a
        rejection counted) at ``max_subscribers``. Each ``True`` needs one
        :meth:`_release`."""
        limit = self.max_subscribers
        if limit is not None and len(self._fanout) + self._joining >= limit:
            self._rejected += 1
            return False
        self._joining += 1
        return True

    def _release(self) -> None:
        self._joining -= 1

    def register(self, handler: Any) -> None:
        """Start delivering to a topic handler: its ``_tornadose_sink`` gets the topics
        in ``_tornadose_topics``, from where its ``_tornadose_last_event_id`` says
        (see the module's documentation), after a gap notice when there is one."""
        sink: Sink = handler._tornadose_sink
        last_event_id = handler._tornadose_last_event_id
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        self._handlers[sink] = handler
        if self._log is not None:
            # The stream's store resolves the id (maybe asking Redis) and joins the
            # connection through _TopicStreamLog._start_sink.
            self._log.register(handler)
            return
        states = [topic._state for topic in handler._tornadose_topics]
        cursor, gap, live_from = self._start(states, last_event_id)
        if gap is not None:
            self._gaps += 1
            sse, ws, _ = build_frames(gap, self._event_id(live_from - 1), _GAP_EVENT)
            self._fanout.write_extra(sink, sse, ws)
        elif last_event_id is not None:
            self._resumed += 1
        self._fanout.add(sink, states, cursor)

    def deregister(self, handler: Any) -> None:
        """Stop delivering to ``handler``; unknown handlers are ignored."""
        sink = getattr(handler, "_tornadose_sink", None)
        if sink is None or self._handlers.pop(sink, None) is None:
            return
        self._disconnected += 1
        if self._log is not None:
            self._log.deregister(handler)
        self._fanout.discard(sink)

    def change(self, handler: Any, add: list[Topic], remove: list[Topic]) -> bool:
        """Change a connection's topics: everything of its old topics submitted so far
        goes out first, then only its new topics'. Returns ``False`` when the
        connection was dropped instead (lapped)."""
        sink = handler._tornadose_sink
        return self._fanout.change(sink, [t._state for t in add], [t._state for t in remove])

    def snapshot(self, handler: Any, topics: list[Topic]) -> None:
        """Write the current values of latest-value ``topics`` to a connection now,
        oldest first (those the next flush brings anyway are left to it)."""
        if not self.latest:
            return
        sink = handler._tornadose_sink
        frames = self._fanout.snapshot([t._state for t in topics], sink.format == FORMAT_WS)
        self._fanout.write_frames(sink, frames)

    def _write_extra(self, sink: Sink, sse: bytes, ws: bytes | None) -> None:
        self._fanout.write_extra(sink, sse, ws)

    # -- internals ----------------------------------------------------------------

    def _event_id(self, seq: int) -> bytes:
        return self._id_prefix + str(seq).encode()

    def _start(
        self, states: list[TopicState], last_event_id: str | None
    ) -> tuple[int | None, dict[str, Any] | None, int]:
        """Where a connection to ``states`` starts: ``(cursor, gap, live_from)``.

        ``cursor`` is ``None`` to start live. ``gap`` is the notice to send first, or
        ``None``; ``live_from`` the first position it then receives completely (the gap
        notice's id is the one before it).
        """
        fanout = self._fanout
        seen, reason = self._parse_id(last_event_id)
        if self.latest:
            # Every current value it has not seen: all of them without a usable id.
            return (0 if seen is None else seen + 1), None, fanout.flushed
        if last_event_id is None:
            return None, None, fanout.flushed
        if seen is None:
            return None, self._gap(reason, last_event_id, states), fanout.flushed
        cursor = seen + 1
        tail = self._ring.tail
        if cursor < tail:
            lost = fanout.lost(states, cursor)
            if lost:
                # Everything the log still holds of its topics follows the notice.
                return tail, self._gap("expired", last_event_id, lost), tail
        return cursor, None, cursor

    def _gap(
        self, reason: str | None, last_event_id: str, lost: list[TopicState]
    ) -> dict[str, Any]:
        return {
            "reason": reason,
            "last_event_id": last_event_id[:_ID_ECHO_LIMIT],
            "missed": None,
            "topics": sorted(state.name for state in lost),
        }

    def _parse_id(self, last_event_id: str | None) -> tuple[int | None, str | None]:
        """``(seq, None)`` for an id of this log that a client can have seen, else
        ``(None, reason)``. Several comma-separated ids (one per topic, as clients of
        earlier versions sent) resume from the newest of them."""
        if last_event_id is None:
            return None, None
        newest: int | None = None
        reason: str | None = None
        delivered = self._fanout.flushed - 1
        for part in last_event_id.split(",")[: self.max_topics_per_subscriber]:
            epoch, dash, number = part.rpartition("-")
            if not (dash and number.isascii() and number.isdigit() and len(number) <= 19):
                found = "malformed"
            elif epoch.encode("utf-8", "replace") != self._epoch:
                found = "restarted"
            elif int(number) > delivered:
                found = "unknown"
            else:
                newest = max(newest or 0, int(number))
                continue
            reason = reason or found
        if newest is not None:
            return newest, None
        return None, reason

    def _create(self, name: str) -> Topic:
        if len(self._topics) >= self.max_topics:
            raise TopicLimitError(
                f"too many topics: the limit of {self.max_topics} topics is reached, so "
                f"topic {echo(name)} cannot be created"
            )
        topic = self._topics[name] = Topic(self, name)
        orphan = self._orphans.pop(name, None)
        if orphan is not None:
            topic._state = orphan  # entries of it are in the log already
        return topic

    def __repr__(self) -> str:
        kind = "latest-value" if self.latest else "queue"
        return f"<TopicRegistry ({kind}) {self._epoch.decode()}: {len(self._topics)} topics>"
