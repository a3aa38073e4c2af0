"""Fan-out over one log of many topics: the paths that are not hot, for both backends.

:class:`TopicFanout` extends the backend's ``TopicFanoutCore`` (the flush pass, in C
or Python) with what happens rarely: connections joining, leaving, changing topics,
catching up after their socket drained or when they resume, and being dropped.

A connection (a ``TopicSink``) is *live* when it has every entry of its topics before
``flushed``; the flush pass then writes it what is new, once per loop turn. Otherwise it
has everything before its ``cursor`` and is caught up in one write from the log (every
entry of its topics, in order, for queue topics; only each topic's newest value for
latest-value topics) as soon as its socket can take it. A queue connection whose cursor
fell behind an evicted entry of one of its topics is *lapped*: it is dropped, never
silently skipped. ``TopicState.evicted_upto`` makes that test exact per topic, so a
connection to quiet topics is not dropped because other topics were busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tornado.iostream import StreamClosedError

from ._drain import drained, timed_out, wait_for_drain
from ._fanout_py import _chunk
from .fanout import FORMAT_SSE_CHUNKED, FORMAT_WS, TopicFanoutCore, TopicSink
from .ring import TopicState

__all__ = ["TopicFanout", "TopicSink"]


class TopicFanout(TopicFanoutCore):
    """The connections of one :class:`~tornadose.ring.TopicRing` and how they are written.

    ``conflate`` makes every topic a latest-value topic; otherwise every topic is a
    queue topic. ``write_timeout`` (seconds, 0: never) drops a connection whose socket
    stays full that long.
    """

    # -- the set of connections ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sinks)

    def __iter__(self) -> Iterator[TopicSink]:
        return iter(tuple(self._sinks))

    def __contains__(self, sink: object) -> bool:
        return sink in self._sinks

    def add(self, sink: TopicSink, topics: Iterable[TopicState], cursor: int | None = None) -> None:
        """Start delivering ``topics`` to ``sink``: live from now when ``cursor`` is
        ``None``, else every entry of its topics from ``cursor`` on (written at once
        when its socket can take it)."""
        sink.topics = set(topics)
        self._sinks[sink] = None
        for topic in sink.topics:
            topic.subs[sink] = None
        if cursor is None or cursor == self.flushed:
            sink.live = True
            return
        sink.live = False
        sink.cursor = cursor
        # Past ``flushed`` (it has seen entries the next flush would bring), it stays
        # behind until that flush touches it, and is caught up from its cursor then.
        if cursor < self.flushed:
            self.catch_up(sink)

    def discard(self, sink: TopicSink) -> None:
        """Stop delivering to ``sink``; unknown sinks are ignored."""
        if sink not in self._sinks:
            return
        del self._sinks[sink]
        for topic in sink.topics:
            topic.subs.pop(sink, None)
        sink.live = False
        if sink.timer is not None:
            sink.stream.io_loop.remove_timeout(sink.timer)
            sink.timer = None

    def change(
        self, sink: TopicSink, add: Iterable[TopicState] = (), remove: Iterable[TopicState] = ()
    ) -> bool:
        """Change the topics of ``sink``: first everything of its current topics up to
        now is handed to its stream, then the change applies to every later entry.
        Returns ``False`` when ``sink`` was dropped instead (lapped)."""
        if not self.settle(sink):
            return False
        for topic in remove:
            topic.subs.pop(sink, None)
            sink.topics.discard(topic)
        for topic in add:
            topic.subs[sink] = None
            sink.topics.add(topic)
        return True

    # -- catching up -----------------------------------------------------------------

    def catch_up(self, sink: TopicSink) -> None:
        """Bring a sink that is not live up to ``flushed`` in one write and make it live,
        if its socket can take it now; otherwise wait until it drains."""
        if sink.live or sink not in self._sinks or sink.stream.closed():
            return
        if sink.stream.writing():
            self._wait_for_drain(sink)
            return
        cursor = sink.cursor
        frames = self._backlog(sink, cursor)
        if frames is None:
            return
        sink.live = True
        if frames:
            self._write(sink, frames, cursor)

    def settle(self, sink: TopicSink) -> bool:
        """Hand everything of the sink's topics up to ``flushed`` to its stream now,
        even when the socket is full (bounded by the log). Returns ``False`` when the
        sink was dropped instead (lapped)."""
        if sink.live or sink not in self._sinks:
            return sink in self._sinks
        frames = self._backlog(sink, sink.cursor)
        if frames is None:
            return False
        sink.cursor = self.flushed
        if frames:
            self.delivered += len(frames)
            self.writes += 1
            self._stream_write(sink, frames)
        if not sink.stream.writing():
            sink.live = True
        return True

    def _backlog(self, sink: TopicSink, cursor: int) -> list[bytes] | None:
        """The frames ``sink`` lacks between ``cursor`` and ``flushed``, in order, or
        ``None`` when it was dropped because the log lost some of them."""
        ring = self._ring
        flushed = self.flushed
        ws = sink.format == FORMAT_WS
        if self.conflate:
            newest = self._newest(sink.topics, cursor, ws)
            # What it was not sent while behind, and will never be: the conflated.
            self.conflated += max(0, sink.skipped - len(newest))
            sink.skipped = 0
            return newest
        if cursor < ring.tail and self.lost(sink.topics, cursor):
            self._drop_lapped(sink)
            return None
        topics = sink.topics
        frames = []
        entry = ring.entry
        for seq in range(max(cursor, ring.tail), flushed):
            topic, sse, wsf = entry(seq)
            if topic in topics:
                frames.append(wsf if ws else sse)
        return frames

    def lost(self, topics: Iterable[TopicState], cursor: int) -> list[TopicState]:
        """The topics among ``topics`` of which the log evicted an entry at or after
        ``cursor``: what a connection at ``cursor`` can no longer receive."""
        return [topic for topic in topics if topic.evicted_upto >= cursor]

    def snapshot(self, topics: Iterable[TopicState], ws: bool) -> list[bytes]:
        """The current values of ``topics`` that the next flush will not bring, oldest
        first: what a new latest-value subscription gets at once."""
        return self._newest(topics, 0, ws)

    def _newest(self, topics: Iterable[TopicState], cursor: int, ws: bool) -> list[bytes]:
        # Each topic's current value set at or after ``cursor``, oldest first, unless the
        # flush pass will bring a newer one anyway.
        flushed = self.flushed
        current = sorted(
            (t for t in topics if cursor <= t.last_seq < flushed and t.last_sse is not None),
            key=lambda t: t.last_seq,
        )
        return [t.last_ws if ws else t.last_sse for t in current]  # type: ignore[misc]

    # -- writing what is not in the flush --------------------------------------------

    def write_frames(self, sink: TopicSink, frames: list[bytes]) -> None:
        """Write ``frames`` (of the sink's format) to ``sink`` after anything already
        queued for it."""
        if frames and not sink.stream.closed():
            self._stream_write(sink, frames)

    def write_extra(self, sink: TopicSink, sse: bytes, ws: bytes | None) -> None:
        """Write one frame that is not in the log (a notice, a heartbeat) to ``sink``,
        after anything already queued for it; ``ws=None`` skips WebSocket sinks."""
        if sink.format == FORMAT_WS:
            if ws is not None:
                self.write_frames(sink, [ws])
        else:
            self.write_frames(sink, [sse])

    def _stream_write(self, sink: TopicSink, frames: list[bytes]) -> None:
        if sink.deliver is not None:
            sink.deliver(frames)
            return
        data = b"".join(frames)
        if sink.format == FORMAT_SSE_CHUNKED:
            data = _chunk(data)
        try:
            sink.stream.write(data)
        except StreamClosedError:
            pass

    # -- dropping, draining ----------------------------------------------------------

    def _overrun(self, start: int) -> None:
        # More was appended in one loop turn than the log holds: every live sink is
        # behind by what was evicted unsent; catching up tells which are lapped.
        behind = [sink for sink in self._sinks if sink.live]
        for sink in behind:
            sink.live = False
            sink.cursor = start
        for sink in behind:
            self.catch_up(sink)

    def _behind(self, sink: TopicSink) -> None:
        # A sink that is not live got new entries. If the log has already lost some of
        # its own, it will never catch up: drop it now rather than at its drain. One
        # that waits for no drain is caught up now.
        if (
            not self.conflate
            and sink.cursor < self._ring.tail
            and self.lost(sink.topics, sink.cursor)
        ):
            self._drop_lapped(sink)
        elif not sink.waiting:
            self.catch_up(sink)

    def _drop_lapped(self, sink: TopicSink) -> None:
        self.lapped += 1
        self.discard(sink)
        sink.on_drop()

    def _wait_for_drain(self, sink: TopicSink) -> None:
        wait_for_drain(self, sink)

    def _drained(self, sink: TopicSink) -> None:
        if drained(sink):
            self.catch_up(sink)

    def _timed_out(self, sink: TopicSink) -> None:
        if timed_out(self, sink):
            self.discard(sink)
            sink.on_drop()

    def stats(self) -> dict[str, Any]:
        """Counters of this fan-out (see ``TopicRegistry.stats``)."""
        flushed = self.flushed
        return {
            "delivered": self.delivered,
            "writes": self.writes,
            "lapped": self.lapped,
            "timed_out": self.timed_out,
            "conflated": self.conflated,
            "max_lag": max(
                (flushed - sink.cursor for sink in self._sinks if not sink.live), default=0
            )
            + (self._ring.head - flushed if self._sinks else 0),
        }
