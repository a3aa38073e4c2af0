# cython: language_level=3, embedsignature=True
"""The ring, compiled backend: the twin of ``tornadose/_ring_py.py``.

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

    def __cinit__(self, Py_ssize_t capacity, Py_ssize_t max_bytes, long long first_seq=0):
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

    cdef void _check(self, long long start) except *:
        if not self.tail <= start <= self.head:
            raise IndexError(f"sequence {start} is outside the ring ({self.tail}..{self.head})")

    cpdef list frames(self, int kind, long long start):
        """Return the frames of ``kind`` (SSE or WS) from ``start`` up to the head.

        Raises ``IndexError`` when ``start`` is outside ``tail .. head``.
        """
        self._check(start)
        cdef list store = self._store(kind)
        cdef Py_ssize_t i = start % self.capacity
        cdef Py_ssize_t j = self.head % self.capacity
        if start == self.head:
            return []
        if i < j:
            return store[i:j]
        return store[i:] + store[:j]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef bytes join(self, int kind, long long start):
        """Return the frames of ``kind`` from ``start`` to the head as one bytes object."""
        self._check(start)
        cdef list store = self._store(kind)
        cdef long long seq
        cdef Py_ssize_t cap = self.capacity, total = 0, n
        cdef object frame
        if self.head - start == 1:
            return <bytes>store[start % cap]
        for seq in range(start, self.head):
            total += PyBytes_GET_SIZE(<bytes>store[seq % cap])
        cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
        cdef char *dst = PyBytes_AS_STRING(out)
        for seq in range(start, self.head):
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
