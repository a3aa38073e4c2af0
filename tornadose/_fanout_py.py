"""Fan-out, pure-Python backend: one write per subscriber per flush.

A flush walks the store's subscribers once. Each subscriber whose cursor is behind the
ring's head gets every frame between its cursor and the head in ONE write; subscribers
at the same cursor share the joined bytes, so a burst is joined once per distinct cursor,
not once per subscriber. A subscriber whose stream still has bytes pending is skipped and
a one-shot drain callback brings it up to date when the stream empties. A subscriber whose
cursor fell off the ring is *lapped*: with ``conflate`` it jumps to the newest entry,
otherwise it is removed and its ``on_drop`` callback runs (the store disconnects it). A
subscriber whose stream stays full for ``write_timeout`` seconds (a half-open or frozen
client) is removed the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from tornado.iostream import IOStream

from ._drain import drained, timed_out, wait_for_drain
from ._ring_py import SSE, WS, Ring, TopicRing, TopicState

# Wire formats a subscriber can take.
FORMAT_SSE = 0  # SSE events as they are (HTTP/1.0, or a body that is not chunked)
FORMAT_SSE_CHUNKED = 1  # SSE events inside one HTTP/1.1 chunk per write
FORMAT_WS = 2  # WebSocket text frames


class Sink:
    """One fast-path subscriber: a cursor into the ring and the stream it is written to.

    ``deliver``, when given, replaces raw writes: it is called with the list of pending
    WebSocket frames (used where frames cannot go out as built, e.g. with compression).
    ``on_drop`` is called when the fan-out drops the subscriber (lapped, or stalled past
    the write timeout); it must close the connection. ``written`` is set on every write,
    for heartbeats to tell idle streams.
    """

    __slots__ = ("stream", "format", "cursor", "on_drop", "deliver", "waiting", "send", "written", "timer")

    def __init__(
        self,
        stream: IOStream,
        format: int,
        on_drop: Callable[[], None],
        deliver: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        if format not in (FORMAT_SSE, FORMAT_SSE_CHUNKED, FORMAT_WS):
            raise ValueError(f"unknown sink format {format!r}")
        self.stream = stream
        self.format = format
        self.cursor = 0
        self.on_drop = on_drop
        self.deliver = deliver
        self.waiting = False
        self.written = False
        self.timer: object | None = None
        # Straight to the socket only where that is provably the same as IOStream.write:
        # a plain TCP IOStream. TLS streams (a subclass) keep their own state, so they
        # and anything else take the IOStream path.
        direct = type(stream) is IOStream or getattr(type(stream), "tornadose_raw", False)
        sock = stream.socket if direct else None
        self.send = sock.send if sock is not None else None  # None: closed already

    @property
    def direct(self) -> bool:
        """True when frames are written straight to the socket."""
        return self.send is not None


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


# What _send did with the bytes.
SENT, QUEUED, GONE = 0, 1, 2


def _send(sink: Sink, data: bytes) -> int:
    """Write ``data`` to the sink's connection: straight to the socket when that is
    safe, and what the socket does not take (or everything, otherwise) to the IOStream,
    which keeps it in order and writes it as the socket drains. Returns ``SENT`` when
    all of it went out now, ``QUEUED`` when some of it waits in the stream, ``GONE``
    when the client is gone."""
    stream = sink.stream
    send = sink.send
    if send is None:
        stream.write(data)
        return QUEUED if stream.writing() else SENT
    try:
        sent = send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        # A reset or broken pipe: the client is gone, which is normal. Closing the
        # stream runs its close callback, which deregisters the subscriber.
        stream.close(exc_info=exc)
        return GONE
    if sent < len(data):
        stream.write(memoryview(data)[sent:])
        return QUEUED
    return SENT


class Fanout:
    """The subscribers of one ring and the logic that writes to them."""

    __slots__ = (
        "_ring", "conflate", "write_timeout", "_sinks",
        "delivered", "writes", "lapped", "conflated", "timed_out",
    )

    def __init__(self, ring: Ring, conflate: bool, write_timeout: float = 0.0) -> None:
        self._ring = ring
        self.conflate = conflate
        self.write_timeout = write_timeout  # seconds; 0 disables
        self._sinks: dict[Sink, None] = {}
        self.delivered = 0  # messages written, summed over subscribers
        self.writes = 0
        self.lapped = 0
        self.conflated = 0  # messages skipped by conflation
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._sinks)

    def __iter__(self) -> Iterator[Sink]:
        return iter(tuple(self._sinks))

    def __contains__(self, sink: object) -> bool:
        return sink in self._sinks

    def add(self, sink: Sink, cursor: int) -> None:
        """Start delivering to ``sink`` from sequence number ``cursor``."""
        sink.cursor = cursor
        self._sinks[sink] = None

    def discard(self, sink: Sink) -> None:
        """Stop delivering to ``sink``; unknown sinks are ignored."""
        self._sinks.pop(sink, None)

    def flush(self) -> None:
        """Bring every subscriber up to the ring's head, one write each."""
        cache: dict[tuple[int, int], bytes] = {}
        for sink in tuple(self._sinks):
            self._deliver(sink, cache)

    def flush_one(self, sink: Sink) -> None:
        """Bring one subscriber up to the head (after it drained, or when it joins)."""
        if sink in self._sinks:
            self._deliver(sink, {})

    def _deliver(self, sink: Sink, cache: dict[tuple[int, int], bytes]) -> None:
        ring = self._ring
        head = ring.head
        cursor = sink.cursor
        if cursor >= head:
            return
        if self.conflate:
            if cursor < head - 1:
                self.conflated += head - 1 - cursor
                cursor = head - 1
        elif cursor < ring.tail:
            self.lapped += 1
            del self._sinks[sink]
            sink.on_drop()
            return
        stream = sink.stream
        if stream.closed():
            return
        if stream.writing():
            self._wait_for_drain(sink)
            return
        self.delivered += head - cursor
        self.writes += 1
        sink.cursor = head
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(ring.frames(WS, cursor))
            return
        key = (sink.format, cursor)
        data = cache.get(key)
        if data is None:
            if sink.format == FORMAT_WS:
                data = ring.join(WS, cursor)
            elif sink.format == FORMAT_SSE_CHUNKED:
                data = _chunk(ring.join(SSE, cursor))
            else:
                data = ring.join(SSE, cursor)
            cache[key] = data
        if _send(sink, data) == QUEUED:
            # Until the rest is written, this subscriber is skipped.
            self._wait_for_drain(sink)

    def write_extra(self, sink: Sink, sse: bytes, ws: bytes | None) -> None:
        """Write one frame that is not in the ring (a gap notice, a heartbeat) to ``sink``
        now, after anything already queued for it, in the sink's wire format."""
        stream = sink.stream
        if stream.closed():
            return
        if sink.format == FORMAT_WS:
            if ws is None:
                return
            if sink.deliver is not None:
                sink.deliver([ws])
                return
            data = ws
        elif sink.format == FORMAT_SSE_CHUNKED:
            data = _chunk(sse)
        else:
            data = sse
        if sink.send is not None and not stream.writing():
            # Nothing queued: straight to the socket, as the fan-out writes (an idle
            # stream's heartbeat costs a send(), not an IOStream write and its future).
            if _send(sink, data) == QUEUED:
                self._wait_for_drain(sink)
            return
        stream.write(data)

    def _wait_for_drain(self, sink: Sink) -> None:
        wait_for_drain(self, sink)

    def _drained(self, sink: Sink) -> None:
        if drained(sink):
            self.flush_one(sink)

    def _timed_out(self, sink: Sink) -> None:
        if timed_out(self, sink):
            del self._sinks[sink]
            sink.on_drop()


class TopicSink(Sink):
    """One connection of a topic log: its topics, and where it stands.

    A *live* sink has received every entry of its topics before the fan-out's
    ``flushed`` mark, so it needs no cursor of its own; a sink that is not live (its
    socket was full, it is resuming) has everything of its topics before ``cursor`` and
    is caught up when its stream drains. ``pending`` and ``mark`` are scratch space of
    one flush.
    """

    __slots__ = ("topics", "pending", "mark", "live", "skipped")

    def __init__(
        self,
        stream: IOStream,
        format: int,
        on_drop: Callable[[], None],
        deliver: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        super().__init__(stream, format, on_drop, deliver)
        self.topics: set[TopicState] = set()
        self.pending: list[bytes] | None = None
        self.mark = 0
        self.live = False
        self.skipped = 0  # entries of its topics flushed while it was not live


class TopicFanoutCore:
    """The hot part of a topic fan-out: one flush pass, one write per connection.

    A flush walks the entries appended since the last one; for each, the connections
    of its topic (``TopicState.subs``) collect its frame (with ``conflate``, only the
    topic's newest entry is sent; the ones it superseded are skipped). Each live connection touched
    then gets what it collected in ONE write: the cost follows deliveries, not
    connections x topics. Connections that are not live are left to
    :class:`tornadose.topicfanout.TopicFanout`, which holds the paths that are not hot.
    """

    __slots__ = (
        "_ring", "conflate", "write_timeout", "_sinks", "flushed", "_mark",
        "delivered", "writes", "lapped", "conflated", "timed_out", "__weakref__",
    )

    def __init__(self, ring: TopicRing, conflate: bool, write_timeout: float = 0.0) -> None:
        self._ring = ring
        self.conflate = conflate
        self.write_timeout = write_timeout  # seconds; 0 disables
        self._sinks: dict[TopicSink, None] = {}
        #: Every live sink has all entries of its topics before this sequence number.
        self.flushed = ring.head
        self._mark = 0
        self.delivered = 0
        self.writes = 0
        self.lapped = 0
        self.conflated = 0
        self.timed_out = 0

    def flush(self) -> None:
        """Bring every live connection up to the ring's head, one write each."""
        ring = self._ring
        start = self.flushed
        head = ring.head
        if start >= head:
            return
        if start < ring.tail:
            self._overrun(start)
            start = ring.tail
        self.flushed = head
        self._mark += 1
        mark = self._mark
        touched: list[TopicSink] = []
        entry = ring.entry
        conflate = self.conflate
        for seq in range(start, head):
            topic, sse, ws = entry(seq)
            if conflate and seq != topic.last_seq:
                # A latest-value topic sends only its newest value of the turn.
                self.conflated += len(topic.subs)
                continue
            for sink in topic.subs:
                if sink.mark != mark:
                    sink.mark = mark
                    touched.append(sink)
                    if sink.live:
                        sink.pending = [ws if sink.format == FORMAT_WS else sse]
                    else:
                        sink.skipped += 1
                elif sink.live:
                    sink.pending.append(ws if sink.format == FORMAT_WS else sse)  # type: ignore[union-attr]
                else:
                    sink.skipped += 1
        for sink in touched:
            if sink.live:
                frames = sink.pending
                sink.pending = None
                self._write(sink, frames, start)  # type: ignore[arg-type]
            else:
                self._behind(sink)

    def _write(self, sink: TopicSink, frames: list[bytes], before: int) -> None:
        """Write ``frames`` (everything of its topics from ``before`` to ``flushed``) to
        ``sink`` in one write. A busy sink stops being live at ``before``; one whose
        socket takes only part waits, not live, at ``flushed``."""
        stream = sink.stream
        if stream.closed():
            return
        if stream.writing():
            sink.live = False
            sink.cursor = before
            self._wait_for_drain(sink)
            return
        self.delivered += len(frames)
        self.writes += 1
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(frames)
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if sink.format == FORMAT_SSE_CHUNKED:
            data = _chunk(data)
        if _send(sink, data) == QUEUED:
            sink.live = False
            sink.cursor = self.flushed
            self._wait_for_drain(sink)

    # Paths that are not hot, defined once for both backends by TopicFanout.
    def _overrun(self, start: int) -> None:
        raise NotImplementedError

    def _behind(self, sink: TopicSink) -> None:
        raise NotImplementedError

    def _wait_for_drain(self, sink: TopicSink) -> None:
        raise NotImplementedError
