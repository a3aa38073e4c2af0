# cython: language_level=3, embedsignature=True
"""Fan-out, compiled backend: the twin of ``tornadose/_fanout_py.py``.

Same semantics: one write per subscriber per flush, subscribers at the same cursor share
the joined bytes, busy subscribers are skipped until their stream drains, lapped ones
conflate or are dropped. What differs is the write: for a plain TCP IOStream with nothing
pending, the frames go straight to the socket's file descriptor with one non-blocking
``send(MSG_NOSIGNAL | MSG_DONTWAIT)``; any remainder, or everything on EAGAIN, is handed
to the IOStream so bytes stay in order. A subscriber whose stream stays full for
``write_timeout`` seconds (a half-open or frozen client) is dropped like a lapped one.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strerror

from tornado.iostream import IOStream

from tornadose._drain import drained, timed_out, wait_for_drain

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

FORMAT_SSE = 0
FORMAT_SSE_CHUNKED = 1
FORMAT_WS = 2
cdef enum:
    _SSE = 0  # ring kinds, as in _ring_c
    _WS = 1
cdef enum:
    _F_SSE_CHUNKED = 1  # FORMAT_SSE_CHUNKED, FORMAT_WS as C constants
    _F_WS = 2


cdef class Sink:
    """One fast-path subscriber: a cursor into the ring and the stream it is written to.

    ``deliver``, when given, replaces raw writes: it is called with the list of pending
    WebSocket frames (used where frames cannot go out as built, e.g. with compression).
    ``on_drop`` is called when the fan-out drops the subscriber (lapped, or stalled past
    the write timeout); it must close the connection. ``written`` is set on every write,
    for heartbeats to tell idle streams.
    """

    cdef public object stream
    cdef public int format
    cdef public long long cursor
    cdef public object on_drop
    cdef public object deliver
    cdef public bint waiting
    cdef public bint written
    cdef public object timer
    # For direct writes: the stream's socket object (identity tells the stream is still
    # open, so the cached fd cannot belong to a newer connection), its fd, and Tornado's
    # write buffer (whose ``_size`` tells whether the IOStream has bytes pending).
    cdef object sock
    cdef int fd
    cdef object wbuf

    def __init__(self, stream, int format, on_drop, deliver=None):
        if format not in (FORMAT_SSE, FORMAT_SSE_CHUNKED, FORMAT_WS):
            raise ValueError(f"unknown sink format {format!r}")
        self.stream = stream
        self.format = format
        self.cursor = 0
        self.on_drop = on_drop
        self.deliver = deliver
        self.waiting = False
        self.written = False
        self.timer = None
        self.sock = None
        self.fd = -1
        self.wbuf = None
        # Straight to the socket only where that is provably the same as IOStream.write:
        # a plain TCP IOStream whose internals are the ones this code knows. TLS streams
        # (a subclass) keep their own state, so they and anything else take the IOStream path.
        if getattr(type(stream), "tornadose_raw", False) and stream.socket is not None:
            # A detached stream (tornadose._rawstream): its own _size counts what it queued.
            self.sock = stream.socket
            self.fd = self.sock.fileno()
            self.wbuf = stream
        elif type(stream) is IOStream and stream.socket is not None:
            wbuf = getattr(stream, "_write_buffer", None)
            if wbuf is not None and isinstance(getattr(wbuf, "_size", None), int):
                self.sock = stream.socket
                self.fd = self.sock.fileno()
                self.wbuf = wbuf

    @property
    def direct(self):
        """True when frames are written straight to the socket."""
        return self.sock is not None


cdef enum:
    _SENT = 0  # what _send did with the bytes
    _QUEUED = 1
    _GONE = 2


cdef int _send(Sink sink, bytes data) except -1:
    """Write ``data`` to the sink's connection: straight to the socket's file descriptor
    with one non-blocking ``send()`` when that is safe, and what the socket does not
    take (or everything, otherwise) to the IOStream, which keeps it in order and writes
    it as the socket drains. Returns _SENT, _QUEUED (some waits in the stream) or _GONE
    (the client is gone)."""
    stream = sink.stream
    if sink.sock is None:
        stream.write(data)
        return _QUEUED if stream.writing() else _SENT
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef ssize_t sent = send(sink.fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL | MSG_DONTWAIT)
    if sent < 0:
        if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
            sent = 0
        else:
            # A reset or broken pipe: the client is gone, which is normal. Closing the
            # stream runs its close callback, which deregisters the subscriber.
            code = errno
            stream.close(exc_info=OSError(code, strerror(code).decode()))
            return _GONE
    if sent < size:
        stream.write(memoryview(data)[sent:])
        return _QUEUED
    return _SENT


cdef bytes _chunk(bytes data):
    cdef char head[24]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int h = snprintf(head, sizeof(head), b"%zx\r\n", n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n + 2)
    cdef char *dst = PyBytes_AS_STRING(out)
    memcpy(dst, head, h)
    memcpy(dst + h, PyBytes_AS_STRING(data), n)
    dst[h + n] = b'\r'
    dst[h + n + 1] = b'\n'
    return out


cdef class _Cache:
    """Joined bytes per (format, cursor) for one flush; the common case is one cursor."""

    cdef long long cursor[3]
    cdef list data
    cdef dict others

    def __cinit__(self):
        self.cursor[0] = self.cursor[1] = self.cursor[2] = -1
        self.data = [None, None, None]
        self.others = None

    cdef bytes get(self, object ring, int fmt, long long cursor):
        cdef bytes data
        if self.cursor[fmt] == cursor:
            return <bytes>self.data[fmt]
        if self.cursor[fmt] != -1:
            if self.others is None:
                self.others = {}
            key = (fmt, cursor)
            found = self.others.get(key)
            if found is not None:
                return <bytes>found
        if fmt == FORMAT_WS:
            data = ring.join(_WS, cursor)
        elif fmt == FORMAT_SSE_CHUNKED:
            data = _chunk(ring.join(_SSE, cursor))
        else:
            data = ring.join(_SSE, cursor)
        if self.cursor[fmt] == -1:
            self.cursor[fmt] = cursor
            self.data[fmt] = data
        else:
            self.others[(fmt, cursor)] = data
        return data


cdef class Fanout:
    """The subscribers of one ring and the logic that writes to them."""

    # The ring is touched once per flush (head, tail) and once per distinct cursor
    # (join), never per subscriber, so it needs no C-level interface.
    cdef object _ring
    cdef public bint conflate
    cdef public double write_timeout
    cdef dict _sinks
    cdef public long long delivered
    cdef public long long writes
    cdef public long long lapped
    cdef public long long conflated
    cdef public long long timed_out

    def __init__(self, ring, bint conflate, double write_timeout=0.0):
        self._ring = ring
        self.conflate = conflate
        self.write_timeout = write_timeout  # seconds; 0 disables
        self.timed_out = 0
        self._sinks = {}
        self.delivered = 0
        self.writes = 0
        self.lapped = 0
        self.conflated = 0

    def __len__(self):
        return len(self._sinks)

    def __iter__(self):
        return iter(tuple(self._sinks))

    def __contains__(self, sink):
        return sink in self._sinks

    def add(self, Sink sink, long long cursor):
        """Start delivering to ``sink`` from sequence number ``cursor``."""
        sink.cursor = cursor
        self._sinks[sink] = None

    def discard(self, sink):
        """Stop delivering to ``sink``; unknown sinks are ignored."""
        self._sinks.pop(sink, None)

    def flush(self):
        """Bring every subscriber up to the ring's head, one write each."""
        cdef _Cache cache = _Cache()
        cdef list sinks = list(self._sinks)
        cdef Sink sink
        cdef long long head = self._ring.head
        cdef long long tail = self._ring.tail
        for sink in sinks:
            self._deliver(sink, cache, head, tail)

    def flush_one(self, Sink sink):
        """Bring one subscriber up to the head (after it drained, or when it joins)."""
        if sink in self._sinks:
            self._deliver(sink, _Cache(), self._ring.head, self._ring.tail)

    cdef int _deliver(self, Sink sink, _Cache cache, long long head, long long tail) except -1:
        cdef object ring = self._ring
        cdef long long cursor = sink.cursor
        cdef bint busy
        if cursor >= head:
            return 0
        if self.conflate:
            if cursor < head - 1:
                self.conflated += head - 1 - cursor
                cursor = head - 1
        elif cursor < tail:
            self.lapped += 1
            del self._sinks[sink]
            sink.on_drop()
            return 0
        stream = sink.stream
        if sink.sock is not None:
            if stream.socket is not sink.sock:
                return 0  # closed: its close callback deregisters it
            busy = sink.wbuf._size != 0
        else:
            if stream.closed():
                return 0
            busy = stream.writing()
        if busy:
            self._wait_for_drain(sink)
            return 0
        self.delivered += head - cursor
        self.writes += 1
        sink.cursor = head
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(ring.frames(_WS, cursor))
            return 0
        if _send(sink, cache.get(ring, sink.format, cursor)) == _QUEUED:
            # Until the rest is written, this subscriber is skipped.
            self._wait_for_drain(sink)
        return 0

    def write_extra(self, Sink sink, bytes sse, bytes ws):
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
        if sink.sock is not None and stream.socket is sink.sock and sink.wbuf._size == 0:
            # Nothing queued: straight to the socket, as the fan-out writes (an idle
            # stream's heartbeat costs a send(), not an IOStream write and its future).
            if _send(sink, data) == _QUEUED:
                self._wait_for_drain(sink)
            return
        stream.write(data)

    cdef void _wait_for_drain(self, Sink sink) except *:
        wait_for_drain(self, sink)

    def _drained(self, Sink sink):
        if drained(sink):
            self.flush_one(sink)

    def _timed_out(self, Sink sink):
        if timed_out(self, sink):
            del self._sinks[sink]
            sink.on_drop()


cdef class TopicSink(Sink):
    """One connection of a topic log: its topics, and where it stands.

    A *live* sink has received every entry of its topics before the fan-out's
    ``flushed`` mark, so it needs no cursor of its own; a sink that is not live (its
    socket was full, it is resuming) has everything of its topics before ``cursor`` and
    is caught up when its stream drains. ``pending`` and ``mark`` are scratch space of
    one flush.
    """

    cdef public set topics
    cdef public list pending
    cdef public long long mark
    cdef public bint live
    cdef public long long skipped

    def __init__(self, stream, int format, on_drop, deliver=None):
        Sink.__init__(self, stream, format, on_drop, deliver)
        self.topics = set()
        self.pending = None
        self.mark = 0
        self.live = False
        self.skipped = 0  # entries of its topics flushed while it was not live


cdef bytes _join_frames(list frames, bint chunked):
    """The frames as one bytes object, inside one HTTP/1.1 chunk when ``chunked``."""
    cdef Py_ssize_t total = 0, n, h = 0
    cdef object frame
    cdef char head[24]
    for frame in frames:
        total += PyBytes_GET_SIZE(<bytes>frame)
    if chunked:
        h = snprintf(head, sizeof(head), b"%zx\r\n", total)
    elif len(frames) == 1:
        return <bytes>frames[0]
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + total + (2 if chunked else 0))
    cdef char *dst = PyBytes_AS_STRING(out)
    if chunked:
        memcpy(dst, head, h)
        dst += h
    for frame in frames:
        n = PyBytes_GET_SIZE(<bytes>frame)
        memcpy(dst, PyBytes_AS_STRING(<bytes>frame), n)
        dst += n
    if chunked:
        dst[0] = b'\r'
        dst[1] = b'\n'
    return out


cdef class TopicFanoutCore:
    """The hot part of a topic fan-out: one flush pass, one write per connection.

    The twin of ``TopicFanoutCore`` in ``tornadose/_fanout_py.py``: a flush walks the
    entries appended since the last one; for each, the connections of its topic
    (``TopicState.subs``) collect its frame (with ``conflate``, only the topic's newest
    entry is sent). Each live connection touched then gets what it collected in ONE
    non-blocking ``send()`` straight to its socket where that is safe. Connections that
    are not live are left to :class:`tornadose.topicfanout.TopicFanout`.
    """

    # The ring is touched once per entry of a flush (its topic and frames), never per
    # connection, so it needs no C-level interface.
    cdef public object _ring
    cdef public bint conflate
    cdef public double write_timeout
    cdef public dict _sinks
    cdef public long long flushed
    cdef public long long _mark
    cdef public long long delivered
    cdef public long long writes
    cdef public long long lapped
    cdef public long long conflated
    cdef public long long timed_out

    def __init__(self, ring, bint conflate, double write_timeout=0.0):
        self._ring = ring
        self.conflate = conflate
        self.write_timeout = write_timeout  # seconds; 0 disables
        self._sinks = {}
        self.flushed = ring.head
        self._mark = 0
        self.delivered = 0
        self.writes = 0
        self.lapped = 0
        self.conflated = 0
        self.timed_out = 0

    def flush(self):
        """Bring every live connection up to the ring's head, one write each."""
        cdef object ring = self._ring
        cdef long long start = self.flushed
        cdef long long head = ring.head
        cdef long long seq, mark
        cdef list touched = []
        cdef TopicSink sink
        cdef dict subs
        cdef object topic, sse, ws, key
        cdef bint conflate = self.conflate
        if start >= head:
            return
        if start < ring.tail:
            self._overrun(start)
            start = ring.tail
        self.flushed = head
        self._mark += 1
        mark = self._mark
        entry = ring.entry
        for seq in range(start, head):
            topic, sse, ws = entry(seq)
            subs = topic.subs
            if conflate and seq != <long long>topic.last_seq:
                # A latest-value topic sends only its newest value of the turn.
                self.conflated += len(subs)
                continue
            for key in subs:
                sink = <TopicSink>key
                if sink.mark != mark:
                    sink.mark = mark
                    touched.append(sink)
                    if sink.live:
                        sink.pending = [ws if sink.format == _F_WS else sse]
                    else:
                        sink.skipped += 1
                elif sink.live:
                    sink.pending.append(ws if sink.format == _F_WS else sse)
                else:
                    sink.skipped += 1
        for sink in touched:
            if sink.live:
                frames = sink.pending
                sink.pending = None
                self._write_c(sink, frames, start)
            else:
                self._behind(sink)

    def _write(self, TopicSink sink, list frames, long long before):
        """Write ``frames`` (everything of its topics from ``before`` to ``flushed``) to
        ``sink`` in one write. A busy sink stops being live at ``before``; one whose
        socket takes only part waits, not live, at ``flushed``."""
        self._write_c(sink, frames, before)

    cdef int _write_c(self, TopicSink sink, list frames, long long before) except -1:
        cdef bint busy
        stream = sink.stream
        if sink.sock is not None:
            if stream.socket is not sink.sock:
                return 0  # closed: its close callback deregisters it
            busy = sink.wbuf._size != 0
        else:
            if stream.closed():
                return 0
            busy = stream.writing()
        if busy:
            sink.live = False
            sink.cursor = before
            self._wait_for_drain(sink)
            return 0
        self.delivered += len(frames)
        self.writes += 1
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(frames)
            return 0
        if _send(sink, _join_frames(frames, sink.format == _F_SSE_CHUNKED)) == _QUEUED:
            sink.live = False
            sink.cursor = self.flushed
            self._wait_for_drain(sink)
        return 0
