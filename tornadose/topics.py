"""Topics: stores addressed by name, created on demand within limits.

A market feed is many symbols, and each client wants a handful. A
:class:`TopicRegistry` holds one store per topic (a :class:`~tornadose.stores.DataStore`
for latest-value topics, a :class:`~tornadose.stores.QueueStore` for every-message
topics), created with ``event=<topic>`` so that every frame says which topic it belongs
to: SSE ``event: <topic>``, WebSocket ``{"id": ..., "event": "<topic>", "data": ...}``.
:class:`~tornadose.handlers.TopicEventSource` and
:class:`~tornadose.handlers.TopicWebSocketSubscriber` subscribe one connection to the
topics named in its URL.

Publishers go through :meth:`TopicRegistry.submit` (or :meth:`TopicRegistry.topic`),
which creates the topic when needed and keeps it. A topic that only subscribers asked
for is created for them (so a client may subscribe before the first message) and
removed again when its last subscriber leaves, so clients cannot fill the registry
with names nobody publishes.

Resuming with several topics on one connection. Event ids are ``<store epoch>-<seq>``
and every topic's store has its own epoch, so an id names its topic. A browser's
EventSource keeps ONE Last-Event-ID (the last event it saw, of whichever topic); a
WebSocket client may send the last id of each topic, comma-separated, in
``?last_event_id=``. On reconnection:

- a latest-value topic sends its current value (the snapshot), unless that value is
  exactly the one a given id names: nothing to resume, nothing missed;
- an every-message topic whose own id is given resumes right after it, exactly (no
  gap, no duplicate), or says why it cannot with a ``tornadose-gap`` notice;
- an every-message topic without its own id starts live after a ``tornadose-gap``
  notice: reason ``untracked`` when the ids name other topics of the connection,
  otherwise the reason the id gives (``restarted``, ``malformed``...), ``missed``
  ``null``. A gap is never silent.

Gap notices of topic handlers carry ``"topic"``: ``{"reason": ..., "last_event_id": ...,
"missed": ..., "topic": "AAPL"}``; their id is that topic's live position, so resuming
from it loses nothing more. Without any id every topic starts live (or with its
snapshot), as for a new subscriber. Order is kept within a topic, not across topics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from .stores import DataStore, _RingStore

__all__ = [
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_MAX_TOPICS_PER_SUBSCRIBER",
    "TOPIC_PATTERN",
    "TopicError",
    "TopicLimitError",
    "TopicNameError",
    "TopicRegistry",
    "UnknownTopicError",
    "check_topic_name",
]

DEFAULT_MAX_TOPICS = 10_000
DEFAULT_MAX_TOPICS_PER_SUBSCRIBER = 100

#: What a topic name looks like: 1 to 64 characters from ``A-Z a-z 0-9 . _ : -``,
#: starting with a letter or a digit. Such names need no escaping in a URL path, a
#: query string, an SSE ``event:`` field or JSON.
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Event types a browser's EventSource gives a meaning of its own ("open", "error"),
# the default type ("message"), and this package's notices ("tornadose-gap"): a topic
# of that name would be mistaken for them.
_RESERVED = frozenset({"open", "error", "message"})
_RESERVED_PREFIX = "tornadose-"
# Longest name echoed back in an error message.
_ECHO_LIMIT = 80


class TopicError(ValueError):
    """A topic request that cannot be served; the message says why, for the client."""


class TopicNameError(TopicError):
    """A topic name that does not match :data:`TOPIC_PATTERN` or is reserved."""


class TopicLimitError(TopicError):
    """Too many topics: for one subscriber, or for the registry."""


class UnknownTopicError(TopicError):
    """A subscriber asked for a topic that does not exist, in a registry that does not
    create topics for subscribers (``create_on_subscribe=False``)."""


def _echo(name: str) -> str:
    return repr(name if len(name) <= _ECHO_LIMIT else name[:_ECHO_LIMIT] + "...")


def check_topic_name(name: str) -> str:
    """Return ``name`` when it is a valid topic name; raise :class:`TopicNameError`
    (saying what is wrong) otherwise."""
    if not isinstance(name, str) or not TOPIC_PATTERN.fullmatch(name):
        raise TopicNameError(
            f"bad topic name {_echo(str(name))}: a topic name is 1 to 64 characters from "
            "A-Z a-z 0-9 . _ : - and starts with a letter or a digit"
        )
    if name in _RESERVED or name.startswith(_RESERVED_PREFIX):
        raise TopicNameError(
            f"bad topic name {_echo(name)}: 'open', 'error', 'message' and names starting "
            f"with {_RESERVED_PREFIX!r} are reserved"
        )
    return name


class TopicRegistry:
    """A set of stores addressed by topic name.

    ``TopicRegistry(DataStore)`` makes latest-value topics: a subscriber gets the current
    value of each topic it asks for at once (a snapshot), then every new value.
    ``TopicRegistry(QueueStore, capacity=1024)`` makes every-message topics. Each topic's
    store is ``store_class(event=name, **store_kwargs)``; ``store_class`` may be any
    callable returning a store of this package (a ``DataStore``, ``QueueStore`` or
    ``RedisStore``), anything else raises ``TypeError`` when the first topic is made.

    Limits: ``max_topics`` topics in the registry, ``max_topics_per_subscriber`` topics
    on one connection. With ``create_on_subscribe=False`` subscribers can only ask for
    topics a publisher created. Raises ``ValueError`` for a limit below 1.
    """

    def __init__(
        self,
        store_class: Callable[..., Any] = DataStore,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_topics_per_subscriber: int = DEFAULT_MAX_TOPICS_PER_SUBSCRIBER,
        create_on_subscribe: bool = True,
        **store_kwargs: Any,
    ) -> None:
        if max_topics < 1:
            raise ValueError(f"max_topics must be at least 1, got {max_topics}")
        if max_topics_per_subscriber < 1:
            raise ValueError(
                f"max_topics_per_subscriber must be at least 1, got {max_topics_per_subscriber}"
            )
        if "event" in store_kwargs:
            raise TypeError("a topic store's event is its topic name; do not pass event=")
        if not getattr(store_class, "_ids_name_the_store", True):
            # Resuming a topic connection routes each Last-Event-ID to the store it names;
            # with ids that name no store, a resuming client would silently start live.
            raise TypeError(
                f"{getattr(store_class, '__name__', store_class)!r} cannot back topics: its "
                "event ids do not name their store, so resuming would lose messages silently"
            )
        self.store_class = store_class
        self.store_kwargs = store_kwargs
        self.max_topics = max_topics
        self.max_topics_per_subscriber = max_topics_per_subscriber
        self.create_on_subscribe = create_on_subscribe
        self._stores: dict[str, _RingStore] = {}
        # Topics a publisher asked for: kept until removed. The others live while a
        # connection holds them; _holders counts those connections.
        self._kept: set[str] = set()
        self._holders: dict[str, int] = {}
        #: Connections subscribed through this registry's handlers right now.
        self.connections = 0

    # -- publishing ---------------------------------------------------------------

    def topic(self, name: str) -> _RingStore:
        """The store of topic ``name``, created if needed and kept until :meth:`remove`.

        Raises :class:`TopicNameError` for a bad name and :class:`TopicLimitError` when
        ``max_topics`` topics exist already.
        """
        store = self._stores.get(name)
        if store is None:
            store = self._create(check_topic_name(name))
        self._kept.add(name)
        return store

    def submit(self, name: str, message: Any) -> Any:
        """Submit ``message`` to topic ``name`` (created if needed); returns what the
        store's ``submit`` returns. Raises as :meth:`topic` does, and as the store's
        ``submit`` does for a message that cannot be sent."""
        return self.topic(name).submit(message)

    def remove(self, name: str) -> None:
        """Close topic ``name`` (its subscribers' streams end cleanly, see
        ``store.close()``) and forget it; unknown names are ignored."""
        store = self._stores.pop(name, None)
        self._kept.discard(name)
        self._holders.pop(name, None)
        if store is not None:
            store.close()

    def close(self) -> None:
        """Close every topic's store: deliver what is pending, then end every
        subscriber's stream. The topics stay, and can be used again."""
        for store in list(self._stores.values()):
            store.close()

    # -- looking ------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._stores

    def __len__(self) -> int:
        return len(self._stores)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._stores))

    def items(self) -> list[tuple[str, _RingStore]]:
        """``(name, store)`` for every topic, in creation order."""
        return list(self._stores.items())

    def stats(self) -> dict[str, int]:
        """The topics' ``store.stats()`` counters, summed (``max_lag``: the largest),
        plus ``topics`` and ``connections`` (subscribed connections; ``subscribers`` is
        the number of topic subscriptions, several per connection)."""
        total: dict[str, int] = {"topics": len(self._stores), "connections": self.connections}
        for store in self._stores.values():
            for key, value in store.stats().items():
                if key == "max_lag":
                    total[key] = max(total.get(key, 0), value)
                else:
                    total[key] = total.get(key, 0) + value
        total.setdefault("subscribers", 0)
        total.setdefault("max_lag", 0)
        return total

    # -- subscribing (used by the topic handlers) ---------------------------------

    def parse(self, specs: Iterable[str]) -> list[str]:
        """Topic names from URL pieces: each piece a comma-separated list of names.

        Returns the names in order, without duplicates or empty pieces. Raises
        :class:`TopicError` when there are none, :class:`TopicLimitError` for more
        than ``max_topics_per_subscriber``, :class:`TopicNameError` for a bad name.
        """
        names: dict[str, None] = {}
        limit = self.max_topics_per_subscriber
        for spec in specs:
            for name in spec.split(","):
                if name and name not in names:
                    names[name] = None
                    if len(names) > limit:
                        raise TopicLimitError(f"too many topics: at most {limit} per subscriber")
        if not names:
            raise TopicError(
                "no topic requested: name one or several topics in the path or as ?topics=NAME,NAME"
            )
        for name in names:
            check_topic_name(name)
        return list(names)

    def acquire(self, names: list[str]) -> list[_RingStore]:
        """The stores of ``names`` (valid, as :meth:`parse` returns them) for one
        connection, created when needed; each must be matched by one :meth:`release`.

        Raises :class:`UnknownTopicError` for a topic that does not exist when
        subscribers may not create topics, and :class:`TopicLimitError` when creating
        the missing ones would exceed ``max_topics``; nothing is held then.
        """
        missing = [name for name in names if name not in self._stores]
        if missing and not self.create_on_subscribe:
            raise UnknownTopicError(f"unknown topic {_echo(missing[0])}")
        if len(self._stores) + len(missing) > self.max_topics:
            raise TopicLimitError(
                f"too many topics: the server's limit of {self.max_topics} topics is "
                f"reached, so topic {_echo(missing[0])} cannot be created"
            )
        stores = [self._stores.get(name) or self._create(name) for name in names]
        holders = self._holders
        for name in names:
            holders[name] = holders.get(name, 0) + 1
        return stores

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
            store = self._stores.get(name)
            # A store someone registered with directly is still in use: keep it.
            if name not in self._kept and store is not None and not store.subscribers:
                del self._stores[name]

    # -- internals ----------------------------------------------------------------

    def _create(self, name: str) -> _RingStore:
        if len(self._stores) >= self.max_topics:
            raise TopicLimitError(
                f"too many topics: the limit of {self.max_topics} topics is reached, so "
                f"topic {_echo(name)} cannot be created"
            )
        store = self.store_class(event=name, **self.store_kwargs)
        if not isinstance(store, _RingStore):
            raise TypeError(
                "a topic store must be a DataStore, QueueStore or RedisStore; "
                f"{self.store_class!r} made {store!r}"
            )
        self._stores[name] = store
        return store

    def __repr__(self) -> str:
        kind = getattr(self.store_class, "__name__", repr(self.store_class))
        return f"<TopicRegistry of {kind}: {len(self._stores)} topics>"
