"""What every Redis-backed store shares, over redis-py's asyncio client.

Built on redis-py's asyncio client (with hiredis when installed); no threads. redis-py
is imported only when a Redis store is created, so ``import tornadose.stores`` never
needs it. :class:`_RedisBase` holds what every Redis-backed store shares (lazy connection on the
running loop, the listener's reconnection with backoff and its logging, the ordered,
pipelined, bounded outbox behind ``submit()``, shutdown); :class:`RedisStore` adds pub/sub
and :class:`~tornadose.redis.streams.RedisStreamStore` adds Redis Streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Generator
from typing import Any

from ..core.frames import encode_message
from ..pubsub.store import SUBMITTED, _RingStore

__all__: list[str] = []

logger = logging.getLogger("tornadose.redis")

# Messages sent to Redis in one pipelined round trip, at most.
_BATCH = 256
# How long publishing waits for the listener to (re)subscribe before going ahead.
_LISTEN_WAIT = 5.0


def _import_redis() -> Any:
    """Return the ``redis`` package with its asyncio client, or say how to install it."""
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions
    except ImportError as exc:
        raise ImportError(
            'RedisStore needs redis-py: install it with pip install "tornadose[redis]"',
            name="redis",
        ) from exc
    return redis


def _maint_notifications() -> Any:
    """redis-py's ``maint_notifications`` module, or ``None`` where it has none."""
    try:
        import redis.maint_notifications
    except ImportError:
        return None
    return redis.maint_notifications


def _check_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was cancelled but the cancellation
    got lost on the way.

    redis-py's asyncio client can swallow a cancellation: with a ``socket_timeout``
    (5 s by default in redis-py 8) it sends commands through ``asyncio.wait_for``, which
    before Python 3.12 returns normally when the write completes as the cancellation
    arrives (CPython gh-86296). The command then runs to its end and the task goes on
    as if nothing happened; ``Task.cancelling()`` (3.11+) still tells.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


class _Publication:
    """What :meth:`RedisStore.submit` returns.

    A plain call may drop it: failures are then logged. Awaiting it (or yielding it
    from a ``tornado.gen`` coroutine) waits until Redis accepted the message and raises
    what went wrong instead. Cancelling the await does not withdraw the message.
    """

    __slots__ = ("_loop", "_future", "_done", "_error", "_result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Created only when awaited: plain submits stay cheap, and an outcome nobody
        # awaits never becomes a "Future exception was never retrieved".
        self._future: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._result: Any = None

    @property
    def _awaited(self) -> bool:
        return self._future is not None

    def __await__(self) -> Generator[Any, None, None]:
        if not self._done:
            if self._future is None:
                self._future = self._loop.create_future()
            # Shielded: a cancelled awaiter must not cancel the outcome for others.
            yield from asyncio.shield(self._future).__await__()
        if self._error is not None:
            raise self._error
        return self._result

    def _settle(self, error: BaseException | None, result: Any = None) -> None:
        if self._done:
            return
        self._done, self._error, self._result = True, error, result
        future = self._future
        if future is not None and not future.done():
            # The awaiter re-raises self._error itself; the future only wakes it.
            future.set_result(None)

    def done(self) -> bool:
        """Whether the message was published, or failed to be."""
        return self._done

    def __repr__(self) -> str:
        state = "pending" if not self._done else "failed" if self._error else "published"
        return f"<tornadose publication {state}>"


class _RedisBase(_RingStore):
    """What the Redis-backed stores share: a ring and fan-out like QueueStore's, fed by
    a listener task that reads from Redis, and a publisher behind ``submit()``.

    Subclasses call :meth:`_setup` from ``initialize`` and implement :meth:`_session`
    (read from Redis on one connection until it fails, calling :meth:`_connected` once
    reading works), :meth:`_queue` (the command(s) that publish one message),
    :meth:`_ready_to_publish` and :meth:`_outage_consequence`.

    The store can be created before any event loop runs. It connects lazily, on the
    running loop, at the first of: ``await store.start()`` (or a plain
    ``store.start()``), the first subscriber registering, the first ``submit()``.
    """

    reconnect_delay_min: float = 0.1
    reconnect_delay_max: float = 5.0
    # Bytes of unpublished messages held while Redis is slow to answer (a hung
    # connection, until redis-py's socket timeouts fire); beyond this, submit()s fail at
    # once instead of growing memory without bound.
    max_pending_bytes: int = 64 * 1024 * 1024

    def _setup(self, source: str, redis_kwargs: dict[str, Any]) -> None:
        """Check and keep ``redis_kwargs``; ``source`` names what is read in log
        messages (``"channel 'tornadose'"``). Raises ``ImportError`` without redis-py
        and ``TypeError`` for keyword arguments redis-py does not take."""
        self._redis = redis = _import_redis()
        # Errors that mean "no usable connection": expected, reported without traceback.
        self._connection_errors = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._source = source
        self._redis_kwargs = redis_kwargs
        if "unix_socket_path" in redis_kwargs:
            self._where = str(redis_kwargs["unix_socket_path"])
        else:
            host = redis_kwargs.get("host", "localhost")
            self._where = f"{host}:{redis_kwargs.get('port', 6379)}"
        self._redis_loop: asyncio.AbstractEventLoop | None = None
        self._reset()
        # Build the clients now so that bad keyword arguments fail here, not later
        # inside a background task. No connection is opened yet.
        self._publisher, self._listener = self._make_clients()

    def _reset(self) -> None:
        """Forget all connection state: the store is as new, clients aside."""
        self._publisher: Any = None
        self._listener: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        # (payload, debug, publication, route): route is what _queue needs besides the
        # payload (a topic's name), or None.
        self._outbox: deque[tuple[bytes, bool, _Publication, Any]] = deque()
        self._outbox_bytes = 0
        self._subscribed = False
        self._start_waiters: list[asyncio.Future[None]] = []
        self._attempt_waiters: list[asyncio.Future[None]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._publish_failing = False
        self._delay = self.reconnect_delay_min
        self._outage = False  # a WARNING was logged for the current outage

    def _make_clients(self) -> tuple[Any, Any]:
        redis = self._redis
        no_retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
        # Raw bytes, so that invalid UTF-8 from other publishers is ours to report.
        kwargs = {**self._redis_kwargs, "decode_responses": False}
        config = getattr(_maint_notifications(), "MaintNotificationsConfig", None)
        if config is not None and "maint_notifications_config" not in kwargs:
            # redis-py 8.1 with maintenance notifications on "auto" (the default) hands
            # out pooled connections the server has closed (after a Redis restart, an
            # idle timeout, CLIENT KILL), so the first command after one fails:
            # redis/redis-py#4252, fixed by #4260. With them off, the pool replaces such
            # connections. They only matter to Redis Enterprise/Cloud failover hints;
            # passing maint_notifications_config= keeps the caller's choice.
            kwargs["maint_notifications_config"] = config(enabled=False)
        # A retried PUBLISH may have been executed already: by default, never retry,
        # so no message is published twice. The pool still replaces dead connections.
        publisher = redis.asyncio.Redis(**{"retry": no_retry, **kwargs})
        # The listener's reconnection policy is ours (backoff, one log line per outage).
        listener = redis.asyncio.Redis(**{**kwargs, "retry": no_retry})
        return publisher, listener

    # -- lifecycle ---------------------------------------------------------------------

    def _bind(self, caller: str) -> asyncio.AbstractEventLoop:
        """Start listening on the running loop, once; return that loop.

        Raises ``RuntimeError`` without a running loop in this thread, or when the store
        is bound to another loop that is not closed (``shutdown()`` it first).
        """
        name = type(self).__name__
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"{name}.{caller} needs the event loop running in this thread; from "
                "another thread use IOLoop.add_callback(store.submit, message)"
            ) from None
        if self._redis_loop is loop:
            return loop
        if self._redis_loop is not None:
            if not self._redis_loop.is_closed():
                raise RuntimeError(f"{name} is in use by another event loop; call shutdown() first")
            # That loop is gone, and with it every connection it held: start afresh.
            self._reset()
        self._redis_loop = loop
        if self._publisher is None:
            self._publisher, self._listener = self._make_clients()
        self._wakeup = loop.create_future()
        self._reader = loop.create_task(self._listen())
        return loop

    def start(self) -> asyncio.Future[None]:
        """Start listening, if not started yet.

        Returns a future resolved once this process receives from Redis (at once if it
        does): ``await store.start()`` returns when messages published from then on
        will be delivered here. While Redis is unreachable it keeps waiting (wrap it in
        ``asyncio.wait_for`` to bound that); it is cancelled by ``shutdown()``. Raises
        ``RuntimeError`` without a running event loop.
        """
        loop = self._bind("start()")
        future = loop.create_future()
        if self._subscribed:
            future.set_result(None)
        else:
            self._start_waiters.append(future)
        return future

    @property
    def subscribed(self) -> bool:
        """Whether this process is receiving from Redis right now."""
        return self._subscribed

    def register(self, subscriber: Any) -> None:
        """Start publishing to ``subscriber``; starts listening to Redis if needed."""
        super().register(subscriber)
        if self._reader is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # not yet: start(), or the first submit() will
            self._bind("register()")

    def shutdown(self) -> Awaitable[None]:
        """Stop listening and publishing and close the connections (the original's API).

        Inside the running loop this schedules :meth:`aclose` and returns its task:
        await it, or let the loop run, for the connections to close. With the loop
        stopped it runs :meth:`aclose` to completion; from another thread it schedules
        it on the loop. Subscribers stay registered (``close()`` ends their streams).
        The store starts again if used again.
        """
        loop = self._redis_loop
        if loop is None or loop.is_closed():
            self._reset()
            self._redis_loop = None
            return SUBMITTED
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return loop.create_task(self.aclose())
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop)
        else:
            loop.run_until_complete(self.aclose())
        return SUBMITTED

    async def aclose(self) -> None:
        """Stop listening and publishing and close the connections; idempotent.

        Messages not yet published fail with ``ConnectionError`` (only their awaiters
        hear of it), and pending ``start()`` futures are cancelled. The store starts
        again if used again.
        """
        loop = self._redis_loop
        if loop is None or loop.is_closed():
            # Nothing to close, or nothing that can still be closed.
            self._reset()
            self._redis_loop = None
            return
        if loop is not asyncio.get_running_loop():
            raise RuntimeError(
                f"{type(self).__name__}.aclose() must run on the loop the store uses"
            )
        # Detach everything first, without awaiting: a submit() during the close below
        # then starts a fresh session instead of reviving this one.
        tasks = [task for task in (self._reader, self._drainer) if task is not None]
        outbox, waiters = self._outbox, self._start_waiters + self._attempt_waiters
        clients = (self._publisher, self._listener)
        self._reset()
        self._redis_loop = None
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=0.05)
            if pending:
                # A cancellation lost inside redis-py (see _check_cancelled) leaves a
                # blocking read running until Redis answers: cut its connections.
                for client in clients:
                    if client is not None:
                        await client.connection_pool.disconnect()
            await asyncio.gather(*tasks, return_exceptions=True)
        closed = ConnectionError(
            f"{type(self).__name__} was shut down before the message was published"
        )
        for _, _, publication, _ in outbox:
            publication._settle(closed)
        for future in waiters:
            future.cancel()
        for client in clients:
            if client is not None:
                await client.aclose(close_connection_pool=True)

    # -- receiving ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Listen until cancelled, then close this session's connections."""
        clients = (self._publisher, self._listener)
        try:
            await self._listen_forever(self._listener)
        finally:
            # Also reached when the loop is shut down under us (asyncio.run() cancels
            # every task): the connections close while the loop can still close them.
            for client in clients:
                await client.aclose(close_connection_pool=True)

    async def _listen_forever(self, listener: Any) -> None:
        """Read from Redis forever; reconnect with backoff when Redis goes away."""
        self._delay = self.reconnect_delay_min
        self._outage = False
        while True:
            try:
                await self._session(listener)
            except self._connection_errors as exc:
                _check_cancelled()  # aclose() cut the connection under a lost cancel
                # Expected when Redis restarts or the network fails: no traceback.
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "tornadose: no connection to Redis at %s (%s); %s; reconnecting",
                        self._where,
                        exc,
                        self._outage_consequence(),
                    )
            except Exception:
                _check_cancelled()
                # A bug or an unexpected reply: worth a traceback, once, but the reader
                # must go on.
                if not self._outage:
                    self._outage = True
                    logger.error(
                        "tornadose: unexpected error reading Redis %s; reconnecting",
                        self._source,
                        exc_info=True,
                    )
            finally:
                self._set_subscribed(False)
            self._attempted()
            # Sleep, unless a publisher wants us listening before it publishes.
            if self._wakeup is None or self._wakeup.done():
                self._wakeup = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._wakeup], timeout=self._delay)
            self._delay = min(self._delay * 2, self.reconnect_delay_max)

    async def _session(self, listener: Any) -> None:
        """Hook: read from Redis on ``listener`` until the connection fails (raise);
        call :meth:`_connected` once messages published from now on will be read."""
        raise NotImplementedError

    def _outage_consequence(self) -> str:
        """Hook: what an outage means for subscribers, for the WARNING logged."""
        raise NotImplementedError

    def _connected(self) -> None:
        """The listener receives from Redis (again): reset the backoff, say so."""
        self._delay = self.reconnect_delay_min
        if self._outage:
            self._outage = False
            logger.info(
                "tornadose: reconnected to Redis at %s; receiving %s again",
                self._where,
                self._source,
            )
        logger.debug("receiving %s at %s", self._source, self._where)
        self._set_subscribed(True)

    def _set_subscribed(self, subscribed: bool) -> None:
        self._subscribed = subscribed
        if subscribed:
            waiters, self._start_waiters = self._start_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            self._attempted()

    def _attempted(self) -> None:
        """The listener finished a connection attempt, successful or not."""
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    # -- publishing --------------------------------------------------------------------

    def _enqueue(self, message: Any, debug: bool, route: Any = None) -> _Publication:
        """Serialize ``message`` and queue it for publication, in call order; ``route``
        goes to :meth:`_queue` with it."""
        payload = encode_message(message)[0]
        if len(payload) > self.max_message_size:
            raise ValueError(
                f"message of {len(payload)} bytes exceeds "
                f"max_message_size={self.max_message_size}"
            )
        loop = self._bind("submit()")
        publication = _Publication(loop)
        if self._outbox_bytes + len(payload) > self.max_pending_bytes:
            self._fail(
                [publication],
                ConnectionError(
                    f"{self._outbox_bytes} bytes of messages are already waiting for Redis "
                    f"(max_pending_bytes={self.max_pending_bytes})"
                ),
            )
            return publication
        if debug:
            logger.debug("publishing to Redis %s: %r", self._source, payload)
        self._outbox.append((payload, debug, publication, route))
        self._outbox_bytes += len(payload)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return publication

    def _ready_to_publish(self) -> bool:
        """Hook: whether publishing may go ahead without waiting for the listener."""
        return self._subscribed

    def _queue(self, pipe: Any, payload: bytes, debug: bool, route: Any) -> None:
        """Hook: add the command(s) publishing ``payload`` (queued with ``route``) to
        ``pipe``; the reply of the last one is what :meth:`_result` gets."""
        raise NotImplementedError

    def _result(self, reply: Any) -> Any:
        """Hook: what awaiting ``submit()`` returns, from its last command's reply."""
        return None

    async def _drain(self) -> None:
        """Publish the outbox in order, pipelined, until it is empty."""
        outbox = self._outbox
        while outbox:
            _check_cancelled()  # shut down: what is left was failed by aclose()
            if not self._ready_to_publish():
                # Listen before publishing: a message published before our own
                # listener reads would reach other processes but not ours.
                await asyncio.wait([self._listener_attempt()], timeout=_LISTEN_WAIT)
                if not outbox:
                    return
            batch = [outbox.popleft() for _ in range(min(len(outbox), _BATCH))]
            self._outbox_bytes -= sum(len(payload) for payload, _, _, _ in batch)
            pipe = self._publisher.pipeline(transaction=False)
            ends = []
            for payload, debug, _, route in batch:
                self._queue(pipe, payload, debug, route)
                ends.append(len(pipe) - 1)
            try:
                replies = await pipe.execute()
            except asyncio.CancelledError:
                closed = ConnectionError(f"{type(self).__name__} was shut down while publishing")
                for _, _, publication, _ in batch:
                    publication._settle(closed)
                raise
            except Exception as exc:
                if isinstance(exc, self._connection_errors):
                    error: Exception = ConnectionError(
                        f"cannot publish to Redis at {self._where}: {exc}"
                    )
                    error.__cause__ = exc
                    # What is still queued would meet the same dead server: fail it
                    # now rather than let it pile up.
                    batch.extend(outbox)
                    outbox.clear()
                    self._outbox_bytes = 0
                else:
                    error = exc
                self._fail([publication for _, _, publication, _ in batch], error)
            else:
                for (_, _, publication, _), end in zip(batch, ends):
                    publication._settle(None, self._result(replies[end]))
                if self._publish_failing:
                    self._publish_failing = False
                    logger.info(
                        "tornadose: publishing to Redis %s at %s works again",
                        self._source,
                        self._where,
                    )

    def _listener_attempt(self) -> asyncio.Future[None]:
        """A future resolved when the listener's current or next connection attempt
        ends; wakes the listener from its backoff sleep."""
        future = asyncio.get_running_loop().create_future()
        self._attempt_waiters.append(future)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        return future

    def _fail(self, publications: list[_Publication], error: Exception) -> None:
        """Fail ``publications``: awaiters get ``error``; for the others, log it once
        per failure burst."""
        unheard = 0
        for publication in publications:
            publication._settle(error)
            if not publication._awaited:
                unheard += 1
        if unheard and not self._publish_failing:
            self._publish_failing = True
            logger.error(
                "tornadose: could not publish %d message(s) to Redis %s: %s "
                "(further failures are not logged until publishing works again)",
                unheard,
                self._source,
                error,
            )
