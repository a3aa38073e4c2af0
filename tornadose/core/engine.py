"""The one fan-out engine: the paths that are not hot, written once for both backends.

:class:`Fanout` extends the backend's ``FanoutCore`` (the flush pass, in C or Python)
with what happens rarely: connections joining, leaving, changing topics, catching up
after their socket drained or when they resume, and being dropped. Topic registries and
stores deliver through it alike: a store is a log of one topic.

A connection (a ``Sink``) is *live* when it has every entry of its topics before
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

from ._fanout_py import _wire
from .drain import drained, timed_out, wait_for_drain
from .fanout import FORMAT_WS, FanoutCore, Sink
from .ring import SSE, WS, TopicState

__all__ = ["Fanout", "FanoutPaths", "Sink"]


class FanoutPaths:
    """What :class:`Fanout` adds to a backend's ``FanoutCore``; a mixin so that one
    process can build the engine on either core (the tests compare them).

    ``conflate`` makes every topic a latest-value topic; otherwise every topic is a
    queue topic. ``write_timeout`` (seconds, 0: never) drops a connection whose socket
    stays full that long.
    """

    __slots__ = ()
    _sinks: dict[Sink, None]
    _ring: Any
    flushed: int
    conflate: bool
    delivered: int
    writes: int
    lapped: int
    conflated: int

    # -- the set of connections ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sinks)

    def __iter__(self) -> Iterator[Sink]:
        return iter(tuple(self._sinks))

    def __contains__(self, sink: object) -> bool:
        return sink in self._sinks

    def add(self, sink: Sink, topics: Iterable[TopicState], cursor: int | None = None) -> None:
        """Start delivering ``topics`` to ``sink``: live from now when ``cursor`` is
        ``None``, else every entry of its topics from ``cursor`` on (written at once
        when its socket can take it)."""
        # One topic (a store's connections): a tuple, shared when the caller passes its
        # own (48 bytes once, not a set of 216 per connection).
        topics = tuple(topics)
        sink.topics = topics if len(topics) == 1 else set(topics)
        self._sinks[sink] = None
        for topic in topics:
            topic.subs[sink] = None
        if cursor is None or cursor == self.flushed:
            sink.live = True
            return
        sink.live = False
        sink.cursor = cursor
        # Everything up to the head goes out now, as far as the socket takes it: a
        # joining connection then lags no further behind than the live ones. Past
        # ``flushed``, it stays behind until the next flush touches it, and is caught
        # up from its cursor then.
        self.catch_up(sink, self._ring.head)

    def discard(self, sink: Sink) -> None:
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
        self, sink: Sink, add: Iterable[TopicState] = (), remove: Iterable[TopicState] = ()
    ) -> bool:
        """Change the topics of ``sink``: first everything of its current topics up to
        now is handed to its stream, then the change applies to every later entry.
        Returns ``False`` when ``sink`` was dropped instead (lapped)."""
        if not self.settle(sink):
            return False
        topics = set(sink.topics)
        for topic in remove:
            topic.subs.pop(sink, None)
            topics.discard(topic)
        for topic in add:
            topic.subs[sink] = None
            topics.add(topic)
        sink.topics = topics
        return True

    # -- catching up -----------------------------------------------------------------

    def catch_up(self, sink: Sink, upto: int | None = None) -> None:
        """Bring a sink that is not live up to ``flushed`` in one write and make it live,
        if its socket can take it now; otherwise wait until it drains. With ``upto``
        past ``flushed`` (entries the next flush brings), it gets those too and stays
        behind, at ``upto``, until that flush."""
        if sink.live or sink not in self._sinks or sink.stream.closed():
            return
        if sink.stream.writing():
            self._wait_for_drain(sink)
            return
        flushed = self.flushed
        if upto is None or upto < flushed:
            upto = flushed
        cursor = sink.cursor
        frames = self._backlog(sink, cursor, upto)
        if frames is None:
            return
        sink.live = True
        if frames:
            self._write(sink, frames, cursor)
        if upto > flushed:
            sink.live = False
            sink.cursor = upto

    def settle(self, sink: Sink) -> bool:
        """Hand everything of the sink's topics up to ``flushed`` to its stream now,
        even when the socket is full (bounded by the log). Returns ``False`` when the
        sink was dropped instead (lapped)."""
        if sink.live or sink not in self._sinks:
            return sink in self._sinks
        frames = self._backlog(sink, sink.cursor, self.flushed)
        if frames is None:
            return False
        sink.cursor = self.flushed
        if frames:
            self.delivered += len(frames)
            self.writes += 1
            self.write_frames(sink, frames)
        if not sink.stream.writing():
            sink.live = True
        return True

    def _backlog(self, sink: Sink, cursor: int, upto: int) -> list[bytes] | None:
        """The frames ``sink`` lacks between ``cursor`` and ``upto``, in order, or
        ``None`` when it was dropped because the log lost some of them."""
        ring = self._ring
        ws = sink.format == FORMAT_WS
        if self.conflate:
            newest = self._newest(sink.topics, cursor, ws, upto)
            # What it was not sent while behind, and will never be: the conflated.
            self.conflated += max(0, sink.skipped - len(newest))
            sink.skipped = 0
            return newest
        if cursor < ring.tail and self.lost(sink.topics, cursor):
            self._drop_lapped(sink)
            return None
        return self._frames_of(sink, max(cursor, ring.tail), upto)

    def _frames_of(self, sink: Sink, start: int, stop: int) -> list[bytes]:
        """The frames of the sink's topics among entries ``start .. stop-1``, in its
        wire format."""
        ring = self._ring
        ws = sink.format == FORMAT_WS
        topics = sink.topics
        if ring.run_start <= start:
            # One topic from there on (always so for a store): a slice of the log.
            if start < stop and ring.topic_at(start) not in topics:
                return []
            return ring.frames(WS if ws else SSE, start, stop)
        frames = []
        entry = ring.entry
        for seq in range(start, stop):
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
        return self._newest(topics, 0, ws, self.flushed)

    def _newest(
        self, topics: Iterable[TopicState], cursor: int, ws: bool, upto: int
    ) -> list[bytes]:
        # Each topic's current value set at or after ``cursor``, oldest first, unless it
        # is at or after ``upto`` (the flush pass brings it then).
        current = sorted(
            (t for t in topics if cursor <= t.last_seq < upto and t.last_sse is not None),
            key=lambda t: t.last_seq,
        )
        return [t.last_ws if ws else t.last_sse for t in current]  # type: ignore[misc]

    # -- writing what is not in the flush --------------------------------------------

    def write_frames(self, sink: Sink, frames: list[bytes]) -> None:
        """Write ``frames`` (of the sink's format) to ``sink`` after anything already
        queued for it, in one write."""
        if not frames or sink.stream.closed():
            return
        if sink.deliver is not None:
            sink.deliver(frames)
            return
        try:
            self.write_raw(sink, _wire(sink, frames))  # type: ignore[attr-defined]
        except StreamClosedError:
            pass

    # -- dropping, draining ----------------------------------------------------------

    def _overrun(self, start: int) -> None:
        # More was appended in one loop turn than the log holds: every live sink is
        # behind by what was evicted unsent; catching up tells which are lapped (queue
        # topics) or brings each topic's newest value (latest-value topics, for which
        # the flush pass is skipped: every sink not waiting for a drain is caught up).
        behind = [sink for sink in self._sinks if sink.live]
        for sink in behind:
            sink.live = False
            sink.cursor = start
        if self.conflate:
            behind = [sink for sink in self._sinks if not sink.waiting]
        for sink in behind:
            self.catch_up(sink)

    def _behind(self, sink: Sink) -> None:
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

    def _drop_lapped(self, sink: Sink) -> None:
        self.lapped += 1
        self.discard(sink)
        sink.on_drop()

    def _wait_for_drain(self, sink: Sink) -> None:
        wait_for_drain(self, sink)

    def _drained(self, sink: Sink) -> None:
        if drained(sink):
            self.catch_up(sink)

    def _timed_out(self, sink: Sink) -> None:
        if timed_out(self, sink):
            self.discard(sink)
            sink.on_drop()

    def position(self, sink: Sink) -> int:
        """The sequence number of the next entry ``sink`` still has to receive."""
        return self.flushed if sink.live else sink.cursor

    def pending(self, sink: Sink) -> list[bytes]:
        """The frames of the log ``sink`` has yet to receive, of its topics, in its
        format (what ``lag()`` reports)."""
        ring = self._ring
        return self._frames_of(sink, max(self.position(sink), ring.tail), ring.head)

    def stats(self) -> dict[str, Any]:
        """Counters of this fan-out (see ``TopicRegistry.stats``)."""
        flushed = self.flushed
        return {  # type: ignore[attr-defined]
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


class Fanout(FanoutPaths, FanoutCore):
    """The connections of one :class:`~tornadose.core.ring.TopicRing` and how they are
    written: the backend's flush pass with the paths above."""

    __slots__ = ()
