"""Backfill: bringing a resuming subscriber from Redis history to the live stream.

A Last-Event-ID older than what the process's log holds is served by a task that pages
``XRANGE`` up to what the log covers, writes the frames straight to the subscriber's
connection, waits for each page to drain and, the log having moved on meanwhile, goes
on until it has caught up; then, without yielding to the loop, it joins the subscriber
to the fan-out right after the last id it wrote: nothing falls between, nothing comes
twice. Mixed into :class:`~tornadose.redis.streams.RedisStreamStore`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.iostream import StreamClosedError

from ..core.fanout import FORMAT_WS, Sink
from ..core.frames import build_frames
from .client import _check_cancelled
from .ids import FIELD as _FIELD
from .ids import format_stream_id, parse_stream_id
from .ids import history_problem as _history_problem
from .ids import key_of as _key

__all__ = ["Backfill"]

logger = logging.getLogger("tornadose.redis")


class Backfill:
    """The resume-from-Redis part of a stream store (its attributes are the store's)."""

    async def _resume_later(self, subscriber: Any, sink: Sink, last_event_id: str) -> None:
        task = asyncio.current_task()
        try:
            await self._resume(subscriber, sink, last_event_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug: the subscriber still gets live data, after a notice.
            logger.error("tornadose: resuming a subscriber of %r failed", self, exc_info=True)
            if sink not in self._fanout:
                self._start_sink(sink, self._ring.head, self._gap("unknown", last_event_id), True)
        finally:
            if self._backfills.get(subscriber) is task:
                del self._backfills[subscriber]

    async def _resume(self, subscriber: Any, sink: Sink, last_event_id: str) -> None:
        """Bring ``sink`` from ``last_event_id`` to the live stream: from Redis, then the
        ring. Returns once the sink is in the fan-out (or dropped, or gone)."""
        after = parse_stream_id(last_event_id)
        echo = last_event_id
        first = True
        while True:
            if not first and self._gone(subscriber):
                return
            first = False
            last_key = self._last_key
            if last_key is None or self._publisher is None:
                await self._until_reading()  # the reader has not connected yet
                continue
            if after is None:
                self._start_sink(sink, self._ring.head, self._gap("malformed", echo), True)
                return
            client = self._publisher
            if after > last_key:
                # Newer than this process has read: another process may be ahead.
                try:
                    info = await self._stream_info(client)
                except self._connection_errors:
                    await self._until_reading()
                    continue
                if self._gone(subscriber):
                    return
                if info is None or _key(info["last-generated-id"]) < after:
                    self._start_sink(sink, self._ring.head, self._gap("unknown", echo), True)
                    return
                await self._until_position(after)
                continue
            seq, covered = self._coverage()
            if after >= covered:
                # Caught up with the ring: join the fan-out right after `after`, now,
                # before anything else runs.
                self._start_sink(sink, self._first_after(after, seq), None, True)
                return
            pipe = client.pipeline(transaction=True)
            pipe.xinfo_stream(self.stream)
            pipe.xrange(
                self.stream,
                min=format_stream_id(after + 1),
                max=format_stream_id(covered),
                count=self.backfill_page,
            )
            try:
                info, entries = await pipe.execute(raise_on_error=False)
                info = self._info_or_none(info)
                if isinstance(entries, Exception):
                    raise entries
            except self._connection_errors:
                await self._until_reading()
                continue
            if self._gone(subscriber):
                return
            problem = _history_problem(info, after, covered)
            if problem is not None:
                self._start_sink(sink, self._ring.head, self._gap(problem, echo), True)
                return
            if entries:
                self._write_entries(sink, entries)
                after = _key(entries[-1][0])
                echo = entries[-1][0].decode()
            if len(entries) < self.backfill_page:
                after = max(after, covered)
            if not await self._drained(sink):
                return

    def _gone(self, subscriber: Any) -> bool:
        """After an await: whether the subscriber left meanwhile (its backfill was
        cancelled, but redis-py may have lost the cancellation: see _check_cancelled)."""
        _check_cancelled()
        return subscriber not in self.subscribers

    def _write_entries(self, sink: Sink, entries: list[tuple[bytes, Any]]) -> None:
        """Write history entries straight to ``sink``, as the fan-out would."""
        frames = []
        ws_format = sink.format == FORMAT_WS
        for raw_id, fields in entries:
            data = fields.get(_FIELD) if fields else None
            if data is None:
                continue
            try:
                sse, ws, size = build_frames(data.decode("utf-8"), raw_id, self._event)
            except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError)
                continue
            if size > self.max_message_size:
                continue  # skipped live too (with a WARNING there)
            frames.append(ws if ws_format else sse)
        if not frames:
            return
        fanout = self._fanout
        fanout.write_frames(sink, frames)
        sink.written = True
        fanout.delivered += len(frames)
        fanout.writes += 1
        self._backfilled += len(frames)

    async def _drained(self, sink: Sink) -> bool:
        """Wait until ``sink``'s connection has written everything queued; ``False``
        when it closed, or was dropped for staying full past ``write_timeout``."""
        try:
            done = sink.stream.write(b"")
        except StreamClosedError:
            return False
        timeout = self._fanout.write_timeout or None
        await asyncio.wait([done], timeout=timeout)
        if not done.done():
            self._fanout.timed_out += 1
            sink.on_drop()
            return False
        return done.exception() is None

    async def _until_reading(self) -> None:
        """Wait for the reader's next successful connection (at most
        ``reconnect_delay_max`` seconds, then the caller tries again)."""
        future = asyncio.get_running_loop().create_future()
        self._reading_waiters.append(future)
        await asyncio.wait([future], timeout=self.reconnect_delay_max)

    async def _until_position(self, key: int) -> None:
        """Wait until the reader has read up to ``key`` (or something changed)."""
        if self._last_key is not None and self._last_key >= key:
            return  # it did while the caller was asking Redis
        future = asyncio.get_running_loop().create_future()
        self._position_waiters.append((key, future))
        await asyncio.wait([future], timeout=self.reconnect_delay_max)
