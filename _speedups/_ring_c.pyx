# cython: language_level=3, embedsignature=True
"""The ring, compiled backend: the twin of ``tornadose/core/_ring_py.py``.

A store's bounded history of pre-built frames. Entries ``tail .. head-1`` are retained;
the oldest are evicted when a new entry would exceed ``capacity`` entries or
``max_bytes`` bytes. Subscribers keep only a cursor, never a copy.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

SSE = 0
WS = 1


cdef class Ring:
    """Bounded history of frames, indexed by sequence number."""

    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t max_bytes
    cdef readonly long long head
    cdef readonly long long tail
    cdef readonly Py_ssize_t nbytes
    cdef list _sse
    cdef list _ws
    cdef Py_ssize_t *_size

    def __cinit__(self, *args, **kwargs):
        self._size = NULL

    def __init__(self, Py_ssize_t capacity, Py_ssize_t max_bytes, long long first_seq=0):
        """Raise ``ValueError`` unless ``capacity`` and ``max_bytes`` are positive."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.head = first_seq
        self.tail = first_seq
        self.nbytes = 0
        self._sse = [None] * capacity
        self._ws = [None] * capacity
        self._size = <Py_ssize_t *>PyMem_Malloc(capacity * sizeof(Py_ssize_t))
        if self._size == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(capacity):
            self._size[i] = 0

    def __dealloc__(self):
        PyMem_Free(self._size)

    def __len__(self):
        return self.head - self.tail

    cpdef long long append(self, bytes sse, bytes ws) except -1:
        """Store one message's frames and return its sequence number.

        Evicts the oldest entries as needed. Raises ``ValueError`` (and stores nothing)
        when the entry alone is larger than ``max_bytes``.
        """
        if sse is None or ws is None:
            raise TypeError("frames must be bytes, not None")
        cdef Py_ssize_t size = PyBytes_GET_SIZE(sse) + PyBytes_GET_SIZE(ws)
        if size > self.max_bytes:
            raise ValueError(
                f"message frames take {size} bytes, more than the ring's max_bytes={self.max_bytes}"
            )
        while self.head - self.tail >= self.capacity or self.nbytes + size > self.max_bytes:
            self._evict()
        cdef long long seq = self.head
        cdef Py_ssize_t i = seq % self.capacity
        self._sse[i] = sse
        self._ws[i] = ws
        self._size[i] = size
        self.nbytes += size
        self.head = seq + 1
        return seq

    cdef void _evict(self):
        cdef Py_ssize_t i = self.tail % self.capacity
        self.nbytes -= self._size[i]
        # Drop the references so evicted frames are freed now, not when overwritten.
        self._sse[i] = None
        self._ws[i] = None
        self._size[i] = 0
        self.tail += 1

    def clear(self):
        """Evict every entry; sequence numbers keep increasing from ``head``."""
        while self.tail < self.head:
            self._evict()

    cdef list _store(self, int kind):
        return self._sse if kind == SSE else self._ws

    cdef long long _check(self, long long start, long long stop) except -2:
        if stop < 0:
            stop = self.head
        if not self.tail <= start <= stop <= self.head:
            raise IndexError(
                f"sequence {start}..{stop} is outside the ring ({self.tail}..{self.head})"
            )
        return stop

    cpdef list frames(self, int kind, long long start, long long stop=-1):
        """Return the frames of ``kind`` (SSE or WS) from ``start`` up to ``stop``
        (default: the head).

        Raises ``IndexError`` unless ``tail <= start <= stop <= head``.
        """
        stop = self._check(start, stop)
        cdef list store = self._store(kind)
        cdef Py_ssize_t i = start % self.capacity
        cdef Py_ssize_t j = stop % self.capacity
        if start == stop:
            return []
        if i < j:
            return store[i:j]
        return store[i:] + store[:j]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef bytes join(self, int kind, long long start, long long stop=-1):
        """Return the frames of ``kind`` from ``start`` to ``stop`` (default: the head)
        as one bytes object."""
        stop = self._check(start, stop)
        cdef list store = self._store(kind)
        cdef long long seq
        cdef Py_ssize_t cap = self.capacity, total = 0, n
        cdef object frame
        if stop - start == 1:
            return <bytes>store[start % cap]
        for seq in range(start, stop):
            total += PyBytes_GET_SIZE(<bytes>store[seq % cap])
        cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
        cdef char *dst = PyBytes_AS_STRING(out)
        for seq in range(start, stop):
            frame = store[seq % cap]
            n = PyBytes_GET_SIZE(<bytes>frame)
            memcpy(dst, PyBytes_AS_STRING(<bytes>frame), n)
            dst += n
        return out

    def latest(self, int kind):
        """Return the newest frame of ``kind``, or ``None`` when the ring is empty."""
        if self.head == self.tail:
            return None
        return self._store(kind)[(self.head - 1) % self.capacity]


cdef class TopicState:
    """What the log and the fan-out keep of one topic of a :class:`TopicRing`.

    ``subs`` holds the connections subscribed to it now (the topic -> connections index
    a flush walks, so its cost follows deliveries). ``last_seq`` is the sequence number
    of its newest entry, ``evicted_upto`` that of its newest entry the ring evicted (0:
    none), which tells exactly whether a cursor lost one of its messages. A ring that
    keeps latest values also holds the frames of its newest entry in ``last_sse`` /
    ``last_ws`` (``None``: no current value), beyond the ring's own history.
    """

    cdef public str name
    cdef public dict subs
    cdef public long long last_seq
    cdef public long long evicted_upto
    cdef public object last_sse
    cdef public object last_ws
    cdef object __weakref__

    def __init__(self, str name):
        self.name = name
        self.subs = {}
        self.last_seq = 0
        self.evicted_upto = 0
        self.last_sse = None
        self.last_ws = None

    def __repr__(self):
        return f"<TopicState {self.name!r}>"


cdef class TopicRing(Ring):
    """One bounded history for many topics: every entry also knows its topic.

    Entries keep submit order across topics, under one sequence. With ``keep_latest``
    each topic also keeps the frames of its newest entry after the ring evicts it (the
    current value of a latest-value topic).
    """

    cdef readonly bint keep_latest
    cdef list _topic
    # Every entry from ``run_start`` to the head is of one topic: a flush of those sends
    # the same bytes to every connection of it (always so for a store).
    cdef readonly long long run_start
    cdef object _run_topic

    def __init__(self, Py_ssize_t capacity, Py_ssize_t max_bytes, long long first_seq=0, bint keep_latest=False):
        Ring.__init__(self, capacity, max_bytes, first_seq)
        self.keep_latest = keep_latest
        self._topic = [None] * capacity
        self.run_start = first_seq
        self._run_topic = None

    cpdef long long add_entry(self, bytes sse, bytes ws, TopicState topic) except -1:
        """Store one message of ``topic`` and return its sequence number (see
        :meth:`Ring.append`). Raises ``TypeError`` without a topic."""
        if topic is None:
            raise TypeError("a TopicRing entry needs its topic")
        cdef long long seq = self.append(sse, ws)
        self._topic[seq % self.capacity] = topic
        if topic is not self._run_topic:
            self._run_topic = topic
            self.run_start = seq
        topic.last_seq = seq
        if self.keep_latest:
            topic.last_sse = sse
            topic.last_ws = ws
        return seq

    cdef void _evict(self):
        cdef Py_ssize_t i = self.tail % self.capacity
        cdef object topic = self._topic[i]
        if topic is not None:
            (<TopicState>topic).evicted_upto = self.tail
            self._topic[i] = None
        Ring._evict(self)

    cpdef tuple entry(self, long long seq):
        """``(topic, sse, ws)`` of entry ``seq``; raises ``IndexError`` outside
        ``tail .. head-1``."""
        if not self.tail <= seq < self.head:
            raise IndexError(f"sequence {seq} is outside the ring ({self.tail}..{self.head})")
        cdef Py_ssize_t i = seq % self.capacity
        return (self._topic[i], self._sse[i], self._ws[i])

    def topic_at(self, long long seq):
        """The topic of entry ``seq``; raises ``IndexError`` outside ``tail .. head-1``."""
        return self.entry(seq)[0]
