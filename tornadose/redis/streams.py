"""RedisStreamStore: a QueueStore whose history is a Redis stream shared by every process.

Publishing is ``XADD <stream> MAXLEN ~ <maxlen> * data <message>``; every process reads
the stream with ``XREAD`` and fans out locally through the same ring and fan-out as
:class:`~tornadose.stores.QueueStore`. Event ids ARE the stream ids (``1718000000000-0``),
so a client may reconnect to any process, on any machine, and resume from its
``Last-Event-ID``: from the local ring when it still holds what followed, from the stream
itself (``XRANGE``) when only Redis does, with a ``tornadose-gap`` notice when neither
does. Connection handling, backoff and the publishing queue are shared with
:class:`~tornadose.stores.RedisStore` (:mod:`tornadose.redis.client`).

How the pieces fit:

* The reader keeps two positions: ``_read_id``, where ``XREAD`` continues in the stream
  Redis holds now, and ``_last_key``, the newest id delivered (never decreasing). Both
  are the same except after Redis lost the stream (restart without persistence).
* Every read is a ``MULTI`` of ``XINFO STREAM`` and a non-blocking ``XREAD``, so the
  reader knows, atomically with what it reads, whether entries it never read were
  trimmed (its position is older than the stream's first entry, and entries were
  removed) or the stream is not the one it was reading (Redis restarted empty: ids went
  backwards, or nothing was ever removed yet the stream starts after its position).
  Either way a gap
  notice goes into the ring, in order, for every subscriber: never a silent gap. When
  caught up, a blocking ``XREAD COUNT 1`` only waits for news; what it returns is read
  again, checked, by the next ``MULTI``.
* The ring holds, besides the frames, each entry's id (``_ids``, indexed like the ring),
  so a Last-Event-ID maps to a ring position by bisection. The ring *covers* the stream
  after ``_coverage()``'s key: every entry newer than it is in the ring (or was skipped).
  A resume from within the coverage is synchronous, as for QueueStore. An older id is
  served by a backfill task: it pages ``XRANGE`` up to the coverage key, writing the
  frames straight to the subscriber's connection, waits for each page to drain, and,
  since the ring may have moved on meanwhile, recomputes the coverage and goes on until
  it has caught up with it; then, without yielding to the loop, it adds the subscriber
  to the fan-out right after the last id it wrote. No message can fall between the two
  or come twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from ..core.fanout import Sink
from ..core.frames import build_frames
from ..pubsub.store import _ECHO_LIMIT, GAP_EVENT
from .backfill import Backfill
from .client import _check_cancelled, _Publication, _RedisBase
from .ids import FIELD as _FIELD
from .ids import GAP as _GAP
from .ids import entries_of as _entries
from .ids import format_stream_id, parse_stream_id
from .ids import history_problem as _history_problem
from .ids import key_of as _key
from .topics import stream_log_class

__all__ = ["RedisStreamStore", "format_stream_id", "parse_stream_id"]

logger = logging.getLogger("tornadose.redis")

DEFAULT_MAXLEN = 100_000


if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python < 3.11

    @contextlib.asynccontextmanager
    async def _timeout(delay: float) -> AsyncIterator[None]:
        # Cancels the task after `delay` seconds and turns that into TimeoutError
        # (asyncio.timeout's behaviour, for a task nobody else cancels meanwhile).
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            handle.cancel()


class RedisStreamStore(Backfill, _RedisBase):
    """Every message of a Redis stream, in order, to every subscriber of every process;
    resumable on any process by ``Last-Event-ID``.

    ``RedisStreamStore(stream="tornadose", maxlen=100_000, **redis_kwargs)``:
    ``redis_kwargs`` go to ``redis.asyncio.Redis`` (``host``, ``port``, ``db``,
    ``password``, ``ssl``, ...); ``capacity``, ``max_bytes``, ``max_message_size``,
    ``max_subscribers``, ``write_timeout`` and ``event`` are QueueStore's (the ring is
    the recent history each process keeps in memory). ``maxlen`` is the history Redis
    keeps: each ``submit()`` is ``XADD stream MAXLEN ~ maxlen``, so Redis keeps at least
    ``maxlen`` entries (a little more: trimming is approximate); ``None`` never trims.
    Raises ``ImportError`` without redis-py, ``TypeError`` for keyword arguments
    redis-py does not take, ``ValueError`` for a ``maxlen`` below 1.

    Connects lazily like :class:`~tornadose.stores.RedisStore`; ``await store.start()``
    returns once this process reads the stream. It starts at the end of the stream:
    entries added from then on are delivered live; older ones only to clients that
    resume from an id before them.

    Each entry's ``data`` field is the message, decoded as UTF-8 text (what ``submit()``
    writes; other producers may ``XADD <stream> * data <text>``); its id is the event
    id, the same in every process. An entry without ``data``, not valid UTF-8, or over
    ``max_message_size`` is skipped with one WARNING.

    Resuming (``Last-Event-ID`` header, or ``?last_event_id=``, SSE and WebSocket): an
    id still in this process's ring resumes at once; an older id that Redis still holds
    resumes from Redis (``XRANGE``), then hands over to the live stream, with no gap and
    no duplicate; an id newer than this process has read (another process is ahead)
    waits until this one has read it. An id that was trimmed from the stream
    (``"expired"``), from before Redis lost the stream (``"restarted"``), that no
    stream ever had (``"unknown"``) or malformed (``"malformed"``) gets the
    ``tornadose-gap`` notice (``"missed": null``), then live data.

    Redis going away: subscribers stay connected (with heartbeats), the reader reconnects
    with backoff and resumes ``XREAD`` after the last id it read, so whatever Redis still
    holds is delivered. ``submit()`` fails as RedisStore's does (``ConnectionError`` when
    awaited, one ERROR log when not) and nothing is buffered beyond
    ``max_pending_bytes``. If the entries this process had not yet read were trimmed
    meanwhile, or Redis came back without the stream (restarted without persistence),
    every subscriber gets a ``tornadose-gap`` notice (reason ``"expired"`` or
    ``"restarted"``) in order in its stream, and one WARNING is logged.
    """

    # Stream ids do not say which stream they belong to, so topics cannot route them.
    _ids_name_the_store = False

    #: Entries per XRANGE page while a resuming subscriber is served from Redis.
    backfill_page: int = 500
    #: Entries per XREAD.
    read_count: int = 1000
    #: Seconds one blocking XREAD waits for news before asking again.
    read_block: float = 2.0

    @classmethod
    def _topic_log(cls, registry: Any, **kwargs: Any) -> Any:
        """Hook of :class:`~tornadose.topics.TopicRegistry`: the log of a registry
        backed by this class (``TopicRegistry(RedisStreamStore, ...)``)."""
        return stream_log_class(cls)(registry, **kwargs)

    def initialize(
        self, stream: str = "tornadose", maxlen: int | None = DEFAULT_MAXLEN, **redis_kwargs: Any
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 (or None), got {maxlen}")
        self.stream = stream
        self.maxlen = maxlen
        # The id of ring entry `seq` is _ids[seq % len]: one slot more than the ring
        # holds, so the id of the entry just evicted (tail - 1) is still known.
        self._ids = [0] * (self._ring.capacity + 1)
        self._read_id: bytes | None = None
        self._read_key = 0
        self._last_key: int | None = None
        # Where this process started reading: the ring covers the stream after this.
        self._base_seq = 0
        self._base_key = 0
        self._position_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._reading_waiters: list[asyncio.Future[None]] = []
        self._backfills: dict[Any, asyncio.Task[None]] = {}
        self._backfilled = 0
        self._setup(f"stream {stream!r}", redis_kwargs)

    # -- ids -----------------------------------------------------------------------------

    def _live_id(self) -> bytes:
        """The live position: resuming from it loses nothing more."""
        return format_stream_id(self._last_key) if self._last_key is not None else b"0-0"

    def _event_id(self, seq: int) -> bytes:
        ring = self._ring
        if ring.tail <= seq < ring.head - 1 and seq >= self._base_seq:
            return format_stream_id(self._ids[seq % len(self._ids)])
        return self._live_id()

    def _coverage(self) -> tuple[int, int]:
        """``(seq, key)``: every stream entry with an id after ``key`` is in the ring at
        ``seq`` or later (or was skipped)."""
        seq = max(self._ring.tail, self._base_seq)
        if seq > self._base_seq:
            return seq, self._ids[(seq - 1) % len(self._ids)]
        return seq, self._base_key

    def _first_after(self, key: int, lo: int) -> int:
        """The first ring position from ``lo`` whose id is after ``key``."""
        ids, n, hi = self._ids, len(self._ids), self._ring.head
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid % n] <= key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _classify(self, last_event_id: str | None) -> tuple[int | None, dict[str, Any] | None]:
        """``(cursor, gap)`` when the resume point is known now; ``(None, None)`` when
        only Redis can tell (an id older than the ring, or newer than this process has
        read, or any id before the reader first connected)."""
        head = self._ring.head
        if last_event_id is None:
            return head, None
        key = parse_stream_id(last_event_id)
        if self._last_key is None:
            return None, None
        if key is None:
            return head, self._gap("malformed", last_event_id)
        if key > self._last_key:
            return None, None
        seq, covered = self._coverage()
        if key >= covered:
            return self._first_after(key, seq), None
        return None, None

    def _gap(self, reason: str, last_event_id: str) -> dict[str, Any]:
        return {"reason": reason, "last_event_id": last_event_id[:_ECHO_LIMIT], "missed": None}

    def _resume_point(self, last_event_id: str | None) -> tuple[int, dict[str, Any] | None]:
        # What can be told without Redis; the rest is the backfill's (see _add_sink).
        cursor, gap = self._classify(last_event_id)
        return (self._ring.head if cursor is None else cursor), gap

    # -- subscribers -----------------------------------------------------------------------

    def _add_sink(self, subscriber: Any, sink: Sink, last_event_id: str | None) -> None:
        cursor, gap = self._classify(last_event_id)
        if cursor is not None:
            self._start_sink(sink, cursor, gap, last_event_id is not None)
            return
        # Only Redis can tell: the subscriber is registered, but joins the fan-out once
        # the backfill has written what it missed.
        loop = self._bind("register()")
        task = loop.create_task(self._resume_later(subscriber, sink, last_event_id or ""))
        self._backfills[subscriber] = task

    def _start_sink(
        self, sink: Sink, cursor: int, gap: dict[str, Any] | None, resumed: bool
    ) -> None:
        """Join the fan-out at ``cursor``, after a gap notice when there is one."""
        if gap is not None:
            self._gaps += 1
            sse, ws, _ = build_frames(gap, self._live_id(), _GAP)
            self._fanout.write_extra(sink, sse, ws)
        elif resumed:
            self._resumed += 1
        self._fanout.add(sink, self._topics, cursor)

    def deregister(self, subscriber: Any) -> None:
        task = self._backfills.pop(subscriber, None)
        if task is not None:
            task.cancel()
        super().deregister(subscriber)

    def _reset(self) -> None:
        super()._reset()
        # Waiters belong to the session being forgotten (their tasks are cancelled).
        self._reading_waiters = []
        self._position_waiters = []

    async def aclose(self) -> None:
        """Stop reading and publishing and close the connections; idempotent.

        As RedisStore's; subscribers still being served from Redis history stop being
        served (``close()`` the store to end every subscriber's stream). The store starts
        again, from the id it stopped at, if used again.
        """
        backfills, self._backfills = self._backfills, {}
        for task in backfills.values():
            task.cancel()
        await super().aclose()

    # -- reading ------------------------------------------------------------------------

    def _info_or_none(self, info: Any) -> dict[str, Any] | None:
        if (
            isinstance(info, self._redis.exceptions.ResponseError)
            and "no such key" in str(info).lower()
        ):
            return None
        if isinstance(info, Exception):
            raise info
        return info

    async def _stream_info(self, client: Any) -> dict[str, Any] | None:
        try:
            return await client.xinfo_stream(self.stream)
        except self._redis.exceptions.ResponseError as exc:
            return self._info_or_none(exc)

    async def _session(self, listener: Any) -> None:
        """Read the stream from where this process stopped, until the connection fails."""
        if self._read_id is None:
            # First connection: start at the end of the stream.
            info = await self._stream_info(listener)
            _check_cancelled()
            start = info["last-generated-id"] if info is not None else b"0-0"
            self._read_id, self._read_key = start, _key(start)
            self._last_key = self._read_key
            self._base_seq, self._base_key = self._ring.head, self._read_key
            self._wake_position_waiters()
        connected = False
        # A blocking XREAD must answer before redis-py's socket timeout (5 s by
        # default) fires; without one, a timeout of ours catches half-open connections.
        socket_timeout = listener.connection_pool.connection_kwargs.get("socket_timeout")
        block = min(self.read_block, socket_timeout / 2) if socket_timeout else self.read_block
        block_ms = max(1, int(block * 1000))
        while True:
            pipe = listener.pipeline(transaction=True)
            pipe.xinfo_stream(self.stream)
            pipe.xread({self.stream: self._read_id}, count=self.read_count)
            info, reply = await pipe.execute(raise_on_error=False)
            _check_cancelled()
            if isinstance(reply, Exception):
                raise reply
            info = self._info_or_none(info)
            problem = _history_problem(info, self._read_key)
            if problem is not None:
                self._discontinuity(problem, info)
            if not connected:
                connected = True
                self._connected()
            entries = _entries(reply)
            if entries:
                self._receive(entries)
            if len(entries) >= self.read_count:
                continue  # more is waiting
            # Caught up: wait for news. What this returns is read again, checked, by
            # the next turn, so nothing deleted meanwhile can go unnoticed.
            if socket_timeout:
                await listener.xread({self.stream: self._read_id}, count=1, block=block_ms)
            else:
                try:
                    async with _timeout(block + 10):
                        await listener.xread({self.stream: self._read_id}, count=1, block=block_ms)
                except asyncio.TimeoutError:
                    raise self._redis.exceptions.ConnectionError(
                        f"no answer to a blocking XREAD within {block + 10:.0f} s"
                    ) from None
            _check_cancelled()

    def _outage_consequence(self) -> str:
        return (
            f"delivery from {self._source} paused; it resumes after "
            f"{(self._read_id or b'the end').decode()} when Redis is back"
        )

    def _connected(self) -> None:
        super()._connected()
        waiters, self._reading_waiters = self._reading_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def _receive(self, entries: list[tuple[bytes, Any]]) -> None:
        ring, ids = self._ring, self._ids
        n = len(ids)
        last = self._last_key if self._last_key is not None else 0
        raw_id, key = self._read_id, self._read_key
        for raw_id, fields in entries:
            key = _key(raw_id)
            if key <= last:
                # Only after Redis lost the stream, whose new ids may start below what
                # was delivered: covered by the gap notice sent then.
                continue
            last = key
            data = fields.get(_FIELD) if fields else None
            if data is None:
                self._skip(raw_id, f"no {_FIELD.decode()!r} field")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._skip(raw_id, f"not valid UTF-8 ({exc})")
                continue
            seq = ring.head
            try:
                self._append_entry(text, raw_id, fields)
            except ValueError as exc:  # over max_message_size, or refused by the hook
                self._skip(raw_id, str(exc))
                continue
            ids[seq % n] = key
        self._read_id, self._read_key = raw_id, key
        self._last_key = last
        self._wake_position_waiters()

    def _append_entry(self, text: str, raw_id: bytes, fields: dict[bytes, Any]) -> None:
        """Hook: put one entry read from the stream into the ring (its id: ``raw_id``).
        Raises ``ValueError`` to skip it."""
        self._append(text, raw_id)

    def _append_notice(self, sse: bytes, ws: bytes) -> int:
        """Hook: put a gap notice into the ring; returns its sequence number."""
        return self._ring.add_entry(sse, ws, self._topic)

    def _skip(self, raw_id: bytes, why: str) -> None:
        logger.warning(
            "tornadose: skipped entry %s of Redis stream %r: %s", raw_id.decode(), self.stream, why
        )

    def _discontinuity(self, reason: str, info: dict[str, Any] | None) -> None:
        """Entries this process never read are gone: put a gap notice in the ring, so
        that every subscriber gets it in order, and go on reading what is there."""
        last = self._last_key if self._last_key is not None else 0
        gap_key = last + 1  # between the last id delivered and anything newer
        notice = {
            "reason": reason,
            "last_event_id": format_stream_id(last).decode(),
            "missed": None,
        }
        sse, ws, _ = build_frames(notice, format_stream_id(gap_key), _GAP)
        seq = self._append_notice(sse, ws)
        self._ids[seq % len(self._ids)] = gap_key
        self._last_key = gap_key
        first = info.get("first-entry") if info else None
        if reason == "restarted":
            # A new stream: read all of it (ids up to the notice's are skipped).
            self._read_id, self._read_key = b"0-0", 0
        elif first and first[0] is not None:
            # Trimmed past us: go on from its oldest entry, which counts as the place
            # reached (so that only further trimming is a further gap).
            self._read_key = _key(first[0])
            self._read_id = format_stream_id(self._read_key - 1)
        elif info is not None:
            self._read_id = info["last-generated-id"]
            self._read_key = _key(self._read_id)
        logger.warning(
            "tornadose: entries of Redis %s after %s were lost before this process read them "
            "(%s); subscribers get a %s notice",
            self._source,
            format_stream_id(last).decode(),
            "the stream is new: Redis restarted without persistence, or the key was deleted"
            if reason == "restarted"
            else "trimmed by MAXLEN",
            GAP_EVENT,
        )
        if self._fanout or self._generic:
            self._schedule()
        self._wake_position_waiters()

    def _wake_position_waiters(self) -> None:
        if not self._position_waiters:
            return
        last = self._last_key if self._last_key is not None else 0
        still = []
        for key, future in self._position_waiters:
            if future.done():
                continue
            if key <= last:
                future.set_result(None)
            else:
                still.append((key, future))
        self._position_waiters = still

    # -- publishing -----------------------------------------------------------------------

    def submit(self, message: Any, debug: bool = False) -> _Publication:
        """``XADD`` ``message`` to the stream (``MAXLEN ~ maxlen``); every process's
        subscribers, this one's included, get it by reading the stream.

        As :meth:`RedisStore.submit <tornadose.stores.RedisStore.submit>`: serialized
        like the SSE payload, ``TypeError``/``ValueError`` for bad input before anything
        is sent, ``RuntimeError`` without a running loop; a plain call returns at once
        (published in call order, failures logged once), an awaited one returns the
        entry's id (``"1718000000000-0"``, the event id subscribers see) once Redis
        accepted it, or raises ``ConnectionError``. A failed XADD is not retried.
        ``debug=True`` logs the message at DEBUG.
        """
        return self._enqueue(message, debug)

    def _ready_to_publish(self) -> bool:
        # Once the reader knows where it starts, what is added later reaches it even if
        # it is reconnecting right now.
        return self._read_id is not None

    def _queue(self, pipe: Any, payload: bytes, debug: bool, route: Any) -> None:
        pipe.xadd(self.stream, self._fields(payload, route), maxlen=self.maxlen, approximate=True)

    def _fields(self, payload: bytes, route: Any) -> dict[bytes, Any]:
        """Hook: the fields of the entry that publishes ``payload``."""
        return {_FIELD: payload}

    def _result(self, reply: Any) -> Any:
        return reply.decode() if isinstance(reply, bytes) else reply

    def stats(self) -> dict[str, int]:
        """QueueStore's counters, plus ``backfilled`` (messages written to resuming
        subscribers from Redis) and ``resuming`` (subscribers being served from Redis
        right now, not yet live)."""
        stats = super().stats()
        stats["backfilled"] = self._backfilled
        stats["resuming"] = len(self._backfills)
        return stats

    def __repr__(self) -> str:
        return f"<RedisStreamStore {self.stream!r} at {self._where}>"
