"""RedisStore: a QueueStore whose messages travel through a Redis pub/sub channel.

Any number of processes (and any other program that PUBLISHes to the channel) share one
stream: every message published to the channel reaches the subscribers of every
process, in the order Redis delivers it, through the same log and fan-out as
:class:`~tornadose.stores.QueueStore`. Connections, reconnecting and the publishing
queue are :class:`~tornadose.redis.client._RedisBase`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from .client import _Publication, _RedisBase

__all__ = ["RedisStore"]

logger = logging.getLogger("tornadose.redis")


class RedisStore(_RedisBase):
    """Every message published to a Redis channel, in order, to every subscriber.

    ``RedisStore(channel="tornadose", **redis_kwargs)``: ``redis_kwargs`` go to
    ``redis.asyncio.Redis`` (``host``, ``port``, ``db``, ``password``, ``ssl``, ...);
    ``capacity``, ``max_bytes`` and ``max_message_size`` are QueueStore's. Raises
    ``ImportError`` when redis-py is not installed (``pip install "tornadose[redis]"``)
    and ``TypeError`` for keyword arguments redis-py does not take.

    The store can be created before any event loop runs. It connects lazily, on the
    running loop, at the first of: ``await store.start()`` (or a plain
    ``store.start()``), the first subscriber registering, the first ``submit()``. Await
    ``store.start()`` during startup to be listening before the first client arrives.

    Each process SUBSCRIBEs to the channel once. Every message on the channel, from any
    publisher, is decoded as UTF-8 text and delivered like a QueueStore message: exactly
    once, in Redis's order, to every subscriber registered when it arrives. WebSocket
    clients therefore receive ``{"data": "<text>"}``; a dict submitted here arrives as
    its JSON text. A payload that is not valid UTF-8 or exceeds ``max_message_size`` is
    skipped with one WARNING.

    Redis pub/sub delivers at most once: while this process is disconnected, messages
    published to the channel do not reach it. When Redis goes away, subscribers stay
    connected; the store reconnects with exponential backoff (``reconnect_delay_min``
    doubling up to ``reconnect_delay_max`` seconds) and resubscribes, logging one
    WARNING when the connection is lost and one INFO when it is back. For history that
    survives disconnections, and resuming on any process, see
    :class:`~tornadose.stores.RedisStreamStore`.
    """

    def initialize(self, channel: str = "tornadose", **redis_kwargs: Any) -> None:
        self.channel = channel
        self._setup(f"channel {channel!r}", redis_kwargs)

    # -- receiving ---------------------------------------------------------------------

    async def _session(self, listener: Any) -> None:
        """Subscribe and deliver until the connection fails."""
        pubsub = listener.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "message":
                    self._receive(message["data"])
                elif message["type"] == "subscribe":
                    # Confirmed: messages published from now on reach us.
                    self._connected()
        finally:
            self._set_subscribed(False)
            try:
                await pubsub.aclose()
            except Exception as exc:  # the connection is being thrown away anyway
                logger.debug("closing a Redis pub/sub connection failed: %s", exc)

    def _outage_consequence(self) -> str:
        return (
            f"not receiving {self._source} until it is back (messages published "
            "meanwhile are lost to this process)"
        )

    def _receive(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Another program published bytes that are not text: worth knowing.
            logger.warning(
                "tornadose: skipped a message on Redis channel %r: not valid UTF-8 (%s)",
                self.channel,
                exc,
            )
            return
        try:
            self._append(text)
        except ValueError as exc:  # over max_message_size
            logger.warning(
                "tornadose: skipped a message on Redis channel %r: %s", self.channel, exc
            )

    # -- publishing --------------------------------------------------------------------

    def submit(self, message: Any, debug: bool = False) -> _Publication:
        """PUBLISH ``message`` to the channel; this process's subscribers get it back
        through the subscription, like every other process's.

        ``message`` is serialized as the SSE payload is (``str`` as is, UTF-8 ``bytes``
        as text, anything else as JSON). Raises ``TypeError`` for an object that cannot
        be serialized and ``ValueError`` for invalid UTF-8 or a payload over
        ``max_message_size``, before anything is published; ``RuntimeError`` without a
        running event loop in this thread.

        Called plainly, it returns at once; consecutive calls are published in call
        order. A failure (Redis unreachable) is then logged at ERROR, once until a
        publication succeeds again. Awaited, it returns once Redis accepted the message,
        and raises ``ConnectionError`` when Redis cannot be reached (other Redis errors
        as redis-py raises them); nothing is logged. A failed PUBLISH is not retried,
        so a message is never published twice (a ``retry=`` keyword argument to the
        store changes that, for publishing only).

        ``debug=True`` also logs the message at DEBUG and stores it under the channel
        name for 5 seconds (``SET channel message EX 5``), as the original's SETEX did.
        """
        return self._enqueue(message, debug)

    def _queue(self, pipe: Any, payload: bytes, debug: bool, route: Any) -> None:
        if debug:
            pipe.set(self.channel, payload, ex=5)  # the original's SETEX
        pipe.publish(self.channel, payload)

    def __repr__(self) -> str:
        return f"<RedisStore {self.channel!r} at {self._where} {self._epoch.decode()}>"
