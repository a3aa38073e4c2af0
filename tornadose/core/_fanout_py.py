"""The fan-out's hot part, pure-Python backend: one flush pass, one write per connection.

A flush walks the log's entries appended since the last one. For each, the connections
of its topic (``TopicState.subs``) collect its frame (latest-value logs send only each
topic's newest entry of the turn); every live connection touched then gets what it
collected in ONE write, so the cost follows deliveries, not connections x topics. When
every new entry belongs to one topic (always so for a store, the one-topic case) the
turn's frames are joined once per wire format and the same bytes go to every connection
of that topic. Writes go straight to the socket where that is provably the same as
``IOStream.write`` (a plain TCP IOStream, or a detached stream); what the socket does
not take is queued on the stream, and the connection waits, not live, until it drains.

The paths that are not hot (joining, leaving, catching up, dropping) are written once,
for both backends, in :mod:`tornadose.core.engine`.
"""

from __future__ import annotations

from typing import Any, Callable

from tornado.iostream import IOStream

from ._ring_py import SSE, WS, TopicRing

# Wire formats a connection can take.
FORMAT_SSE = 0  # SSE events as they are (HTTP/1.0, or a body that is not chunked)
FORMAT_SSE_CHUNKED = 1  # SSE events inside one HTTP/1.1 chunk per write
FORMAT_WS = 2  # WebSocket text frames


class Sink:
    """One fast-path connection: its stream, its topics, and where it stands.

    A *live* sink has received every entry of its topics before the fan-out's
    ``flushed`` mark, so it needs no cursor of its own; a sink that is not live (its
    socket was full, it is resuming) has everything of its topics before ``cursor`` and
    is caught up when its stream drains. ``deliver``, when given, replaces raw writes:
    it is called with the list of pending frames (where frames cannot go out as built,
    e.g. Tornado's WebSocket protocol with compression). ``codec``, when given, is the
    connection's compressed stream (a :class:`~tornadose.core.deflate.Deflater`, shared
    by every sink of the connection): each write is packed through it, in the order
    the bytes go out. ``on_drop`` is called when the
    fan-out drops the connection (lapped, or stalled past the write timeout); it must
    close the connection. ``written`` is set on every write, for heartbeats to tell idle
    streams. ``pending`` and ``mark`` are scratch space of one flush.
    """

    __slots__ = (
        "stream", "format", "cursor", "on_drop", "deliver", "waiting", "send", "written",
        "timer", "topics", "pending", "mark", "live", "skipped", "codec",
    )

    def __init__(
        self,
        stream: IOStream,
        format: int,
        on_drop: Callable[[], None],
        deliver: Callable[[list[bytes]], None] | None = None,
        codec: Any = None,
    ) -> None:
        if format not in (FORMAT_SSE, FORMAT_SSE_CHUNKED, FORMAT_WS):
            raise ValueError(f"unknown sink format {format!r}")
        self.stream = stream
        self.format = format
        self.cursor = 0
        self.on_drop = on_drop
        self.deliver = deliver
        self.codec = codec
        self.waiting = False
        self.written = False
        self.timer: object | None = None
        # A tuple for one topic (a store's connections: 48 bytes, not a set's 216).
        self.topics: tuple[object, ...] | set[object] = ()
        self.pending: list[bytes] | None = None
        self.mark = 0
        self.live = False
        self.skipped = 0  # entries of its topics flushed while it was not live
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


def _wire(sink: Sink, frames: list[bytes]) -> bytes:
    """``frames`` as the bytes of one write to ``sink``: compressed through its codec
    when it has one, inside one HTTP chunk when its body is chunked."""
    codec = sink.codec
    if codec is not None:
        data = codec.pack(frames)
    else:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
    if sink.format == FORMAT_SSE_CHUNKED:
        data = _chunk(data)
    return data


# What _send did with the bytes.
SENT, QUEUED, GONE = 0, 1, 2


def _send(sink: Sink, data: bytes) -> int:
    """Write ``data`` to the sink's connection: straight to the socket when that is
    safe, and what the socket does not take (or everything, otherwise) to the stream,
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


class FanoutCore:
    """The hot part of the fan-out over one :class:`~tornadose.core.ring.TopicRing`.

    ``conflate`` makes every topic a latest-value topic, otherwise every topic is a
    queue topic; ``write_timeout`` (seconds, 0: never) drops a connection whose socket
    stays full that long. Counters: ``delivered`` (frames written, summed over
    connections), ``writes``, ``lapped``, ``conflated``, ``timed_out``.
    """

    __slots__ = (
        "_ring", "conflate", "write_timeout", "_sinks", "flushed", "_mark",
        "delivered", "writes", "lapped", "conflated", "timed_out", "__weakref__",
    )

    def __init__(self, ring: TopicRing, conflate: bool, write_timeout: float = 0.0) -> None:
        self._ring = ring
        self.conflate = conflate
        self.write_timeout = write_timeout  # seconds; 0 disables
        self._sinks: dict[Sink, None] = {}
        #: Every live sink has all entries of its topics before this sequence number.
        self.flushed = ring.head
        self._mark = 0
        self.delivered = 0
        self.writes = 0
        self.lapped = 0
        self.conflated = 0
        self.timed_out = 0

    def flush(self) -> None:
        """Bring every live connection up to the log's head, one write each."""
        ring = self._ring
        start = self.flushed
        head = ring.head
        if start >= head:
            return
        conflate = self.conflate
        run = ring.run_start <= start
        if start < ring.tail:
            # More was appended in one loop turn than the log holds.
            if not conflate:
                self._overrun(start)
                start = ring.tail
            elif not run:
                # Latest values the log evicted unsent are still each topic's own:
                # catching up brings them, and everything else, at once.
                self.flushed = head
                self._overrun(start)
                return
        self.flushed = head
        if run:
            self._flush_run(ring, start, head)
            return
        self._mark += 1
        mark = self._mark
        touched: list[Sink] = []
        entry = ring.entry
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

    def _flush_run(self, ring: TopicRing, start: int, head: int) -> None:
        # Every entry from ``start`` is of one topic: every live connection of it gets
        # the same bytes, joined once per wire format.
        topic = ring.entry(head - 1)[0]
        subs = topic.subs
        if not subs:
            return
        first = start
        if self.conflate and head - 1 > start:
            self.conflated += (head - 1 - start) * len(subs)
            first = head - 1
        count = head - first
        # Per wire format: the frames, and the bytes they make.
        frames: list[list[bytes] | None] = [None, None, None]
        joined: list[bytes | None] = [None, None, None]
        for sink in tuple(subs):
            if not sink.live:
                sink.skipped += count
                self._behind(sink)
                continue
            if not self._ready(sink, start):
                continue
            self.delivered += count
            self.writes += 1
            sink.written = True
            fmt = sink.format
            if sink.deliver is not None or sink.codec is not None:
                # Per connection: its own codec's stream, or its own delivery.
                if frames[fmt] is None:
                    frames[fmt] = ring.frames(WS if fmt == FORMAT_WS else SSE, first)
                if sink.deliver is not None:
                    sink.deliver(frames[fmt])  # type: ignore[arg-type]
                else:
                    self._put(sink, _wire(sink, frames[fmt]))  # type: ignore[arg-type]
                continue
            data = joined[fmt]
            if data is None:
                data = ring.join(WS if fmt == FORMAT_WS else SSE, first)
                if fmt == FORMAT_SSE_CHUNKED:
                    data = _chunk(data)
                joined[fmt] = data
            self._put(sink, data)

    def _ready(self, sink: Sink, before: int) -> bool:
        """Whether ``sink`` can be written now. A busy one stops being live at
        ``before`` and waits for its stream to drain."""
        stream = sink.stream
        if stream.closed():
            return False  # its close callback deregisters it
        if stream.writing():
            sink.live = False
            sink.cursor = before
            self._wait_for_drain(sink)
            return False
        return True

    def _put(self, sink: Sink, data: bytes) -> None:
        """Send ``data`` (everything up to ``flushed``); a sink whose socket takes only
        part of it waits, not live, at ``flushed``."""
        if _send(sink, data) == QUEUED:
            sink.live = False
            sink.cursor = self.flushed
            self._wait_for_drain(sink)

    def _write(self, sink: Sink, frames: list[bytes], before: int) -> None:
        """Write ``frames`` (everything of its topics from ``before`` to ``flushed``) to
        ``sink`` in one write."""
        if not self._ready(sink, before):
            return
        self.delivered += len(frames)
        self.writes += 1
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(frames)
            return
        self._put(sink, _wire(sink, frames))

    def write_extra(self, sink: Sink, sse: bytes, ws: bytes | None) -> None:
        """Write one frame that is not in the log (a notice, a heartbeat) to ``sink``
        now, after anything already queued for it, in the sink's wire format;
        ``ws=None`` skips WebSocket sinks."""
        if sink.format == FORMAT_WS:
            if ws is None:
                return
            if sink.deliver is not None:
                if not sink.stream.closed():
                    sink.deliver([ws])
                return
            frame = ws
        else:
            frame = sse
        if sink.codec is not None and sink.stream.closed():
            return  # nothing to pack for
        self.write_raw(sink, _wire(sink, [frame]))

    def write_raw(self, sink: Sink, data: bytes) -> None:
        """Write ``data``, already in the sink's wire format, after anything queued for
        it: straight to the socket when nothing is (an idle stream's heartbeat costs a
        ``send()``, not a stream write and its future)."""
        stream = sink.stream
        if stream.closed():
            return
        if sink.send is not None and not stream.writing():
            if _send(sink, data) == QUEUED:
                self._wait_for_drain(sink)
            return
        stream.write(data)

    # Paths that are not hot, defined once for both backends by core.engine.Fanout.
    def _overrun(self, start: int) -> None:
        raise NotImplementedError

    def _behind(self, sink: Sink) -> None:
        raise NotImplementedError

    def _wait_for_drain(self, sink: Sink) -> None:
        raise NotImplementedError
