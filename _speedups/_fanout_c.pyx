# cython: language_level=3, embedsignature=True
"""The fan-out's hot part, compiled backend: the twin of ``tornadose/core/_fanout_py.py``.

Same semantics: one flush pass over the entries appended since the last one, one write
per connection per flush, the turn's frames joined once per wire format when every new
entry is of one topic (a store's case), busy connections left to wait for their drain.
What differs is the write: for a plain TCP IOStream or a detached stream with nothing
pending, the bytes go straight to the socket's file descriptor with one non-blocking
``send(MSG_NOSIGNAL | MSG_DONTWAIT)``; any remainder, or everything on EAGAIN, is handed
to the stream so bytes stay in order.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strerror

from tornado.iostream import IOStream


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
    """One fast-path connection: its stream, its topics, and where it stands.

    The twin of ``Sink`` in ``tornadose/core/_fanout_py.py``: a *live* sink has received
    every entry of its topics before the fan-out's ``flushed`` mark; one that is not
    live has everything of its topics before ``cursor`` and is caught up when its stream
    drains. ``deliver``, when given, replaces raw writes (called with the list of
    pending frames); ``codec``, when given, packs every write (the connection's
    compressed stream); ``on_drop`` must close the connection; ``written`` is set on every
    write; ``pending`` and ``mark`` are scratch space of one flush.
    """

    cdef public object stream
    cdef public int format
    cdef public long long cursor
    cdef public object on_drop
    cdef public object deliver
    cdef public bint waiting
    cdef public bint written
    cdef public object timer
    cdef public object topics
    cdef public list pending
    cdef public long long mark
    cdef public bint live
    cdef public long long skipped
    cdef public object codec
    # For direct writes: the stream's socket object (identity tells the stream is still
    # open, so the cached fd cannot belong to a newer connection), its fd, and Tornado's
    # write buffer (whose ``_size`` tells whether the IOStream has bytes pending).
    cdef object sock
    cdef int fd
    cdef object wbuf

    def __init__(self, stream, int format, on_drop, deliver=None, codec=None):
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
        self.timer = None
        # A tuple for one topic (a store's connections: 48 bytes, not a set's 216).
        self.topics = ()
        self.pending = None
        self.mark = 0
        self.live = False
        self.skipped = 0  # entries of its topics flushed while it was not live
        self.sock = None
        self.fd = -1
        self.wbuf = None
        # Straight to the socket only where that is provably the same as IOStream.write:
        # a plain TCP IOStream whose internals are the ones this code knows. TLS streams
        # (a subclass) keep their own state, so they and anything else take the IOStream path.
        if getattr(type(stream), "tornadose_raw", False) and stream.socket is not None:
            # A detached stream (tornadose.transport.rawstream): its own _size counts what it queued.
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


cdef bytes _packed(Sink sink, list frames):
    """``frames`` through the sink's codec (its compressed stream), inside one HTTP
    chunk when its body is chunked."""
    cdef bytes data = sink.codec.pack(frames)
    if sink.format == _F_SSE_CHUNKED:
        return _chunk(data)
    return data


cdef class FanoutCore:
    """The hot part of the fan-out over one ``TopicRing``: the twin of ``FanoutCore`` in
    ``tornadose/core/_fanout_py.py``. The paths that are not hot are
    :class:`tornadose.core.engine.Fanout`'s, for both backends.
    """

    # The ring is touched once per entry of a flush (its topic and frames) or once per
    # flush of one topic (join), never per connection, so it needs no C-level interface.
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
    cdef object __weakref__

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
        """Bring every live connection up to the log's head, one write each."""
        cdef object ring = self._ring
        cdef long long start = self.flushed
        cdef long long head = ring.head
        cdef long long seq, mark
        cdef list touched = []
        cdef Sink sink
        cdef dict subs
        cdef object topic, sse, ws, key
        cdef bint conflate = self.conflate
        if start >= head:
            return
        cdef bint run = <long long>ring.run_start <= start
        if start < <long long>ring.tail:
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
        entry = ring.entry
        for seq in range(start, head):
            topic, sse, ws = entry(seq)
            subs = topic.subs
            if conflate and seq != <long long>topic.last_seq:
                # A latest-value topic sends only its newest value of the turn.
                self.conflated += len(subs)
                continue
            for key in subs:
                sink = <Sink>key
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

    cdef int _flush_run(self, object ring, long long start, long long head) except -1:
        # Every entry from ``start`` is of one topic: every live connection of it gets
        # the same bytes, joined once per wire format.
        cdef Sink sink
        cdef long long first = start, count
        cdef int fmt
        cdef bytes data
        cdef dict subs = ring.entry(head - 1)[0].subs
        if not subs:
            return 0
        if self.conflate and head - 1 > start:
            self.conflated += (head - 1 - start) * len(subs)
            first = head - 1
        count = head - first
        # Per wire format: the frames, and the bytes they make.
        cdef list frames = [None, None, None]
        cdef list joined = [None, None, None]
        for key in tuple(subs):
            sink = <Sink>key
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
                    frames[fmt] = ring.frames(_WS if fmt == _F_WS else _SSE, first)
                if sink.deliver is not None:
                    sink.deliver(frames[fmt])
                else:
                    self._put(sink, _packed(sink, <list>frames[fmt]))
                continue
            found = joined[fmt]
            if found is None:
                data = ring.join(_WS if fmt == _F_WS else _SSE, first)
                if fmt == _F_SSE_CHUNKED:
                    data = _chunk(data)
                joined[fmt] = data
            else:
                data = <bytes>found
            self._put(sink, data)
        return 0

    cdef bint _ready(self, Sink sink, long long before) except -1:
        """Whether ``sink`` can be written now. A busy one stops being live at
        ``before`` and waits for its stream to drain."""
        cdef bint busy
        stream = sink.stream
        if sink.sock is not None:
            if stream.socket is not sink.sock:
                return False  # closed: its close callback deregisters it
            busy = sink.wbuf._size != 0
        else:
            if stream.closed():
                return False
            busy = stream.writing()
        if busy:
            sink.live = False
            sink.cursor = before
            self._wait_for_drain(sink)
            return False
        return True

    cdef int _put(self, Sink sink, bytes data) except -1:
        """Send ``data`` (everything up to ``flushed``); a sink whose socket takes only
        part of it waits, not live, at ``flushed``."""
        if _send(sink, data) == _QUEUED:
            sink.live = False
            sink.cursor = self.flushed
            self._wait_for_drain(sink)
        return 0

    def _write(self, Sink sink, list frames, long long before):
        """Write ``frames`` (everything of its topics from ``before`` to ``flushed``) to
        ``sink`` in one write. A busy sink stops being live at ``before``; one whose
        socket takes only part waits, not live, at ``flushed``."""
        self._write_c(sink, frames, before)

    cdef int _write_c(self, Sink sink, list frames, long long before) except -1:
        if not self._ready(sink, before):
            return 0
        self.delivered += len(frames)
        self.writes += 1
        sink.written = True
        if sink.deliver is not None:
            sink.deliver(frames)
            return 0
        if sink.codec is not None:
            self._put(sink, _packed(sink, frames))
            return 0
        self._put(sink, _join_frames(frames, sink.format == _F_SSE_CHUNKED))
        return 0

    def write_extra(self, Sink sink, bytes sse, bytes ws):
        """Write one frame that is not in the log (a notice, a heartbeat) to ``sink``
        now, after anything already queued for it, in the sink's wire format;
        ``ws=None`` skips WebSocket sinks."""
        if sink.format == _F_WS:
            if ws is None:
                return
            if sink.deliver is not None:
                if not sink.stream.closed():
                    sink.deliver([ws])
                return
            if sink.codec is not None:
                if not sink.stream.closed():
                    self.write_raw(sink, _packed(sink, [ws]))
                return
            self.write_raw(sink, ws)
        elif sink.codec is not None:
            if not sink.stream.closed():
                self.write_raw(sink, _packed(sink, [sse]))
        elif sink.format == _F_SSE_CHUNKED:
            self.write_raw(sink, _chunk(sse))
        else:
            self.write_raw(sink, sse)

    def write_raw(self, Sink sink, bytes data):
        """Write ``data``, already in the sink's wire format, after anything queued for
        it: straight to the socket when nothing is (an idle stream's heartbeat costs a
        ``send()``, not a stream write and its future)."""
        stream = sink.stream
        if sink.sock is not None:
            if stream.socket is not sink.sock:
                return
            if sink.wbuf._size == 0:
                if _send(sink, data) == _QUEUED:
                    self._wait_for_drain(sink)
                return
        elif stream.closed():
            return
        stream.write(data)

    # Paths that are not hot, defined once for both backends by core.engine.Fanout.
    def _overrun(self, long long start):
        raise NotImplementedError

    def _behind(self, sink):
        raise NotImplementedError

    def _wait_for_drain(self, sink):
        raise NotImplementedError
