# cython: language_level=3, embedsignature=True
"""Per-connection compression, compiled backend: the twin of ``tornadose/core/_deflate_py.py``.

The same contract (see there); the deflate streams come from the fixed-code encoder of
``_speedups/tdeflate.h`` instead of zlib, so the compressed bytes differ from the
Python twin's while what they decompress to is the same.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy, memmove

from zlib import crc32

cdef extern from "tdeflate.h" nogil:
    ctypedef struct td_state:
        pass
    size_t td_bound(size_t n)
    int td_open(td_state *s, int wbits, int hbits)
    void td_close(td_state *s)
    void td_reset(td_state *s)
    size_t td_memory(const td_state *s)
    size_t td_compress(td_state *s, const uint8_t *data, size_t n, uint8_t *out)
    size_t td_finish(uint8_t *out)

GZIP = 0
WEBSOCKET = 1
# gzip member header (RFC 1952): deflate, no name, no time, OS unknown.
cdef bytes _GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# Output is built here, then copied into a bytes object of the exact size: one buffer
# for the process (the GIL is held), grown as needed.
cdef uint8_t *_scratch = NULL
cdef size_t _scratch_size = 0


cdef uint8_t *_room(size_t n) except NULL:
    global _scratch, _scratch_size
    cdef uint8_t *grown
    if n > _scratch_size:
        grown = <uint8_t *>realloc(_scratch, n)
        if grown == NULL:
            raise MemoryError()
        _scratch = grown
        _scratch_size = n
    return _scratch


cdef class Deflater:
    """One connection's compressed stream; see ``tornadose/core/_deflate_py.py``."""

    cdef td_state _state
    cdef readonly int wire
    cdef readonly int window_bits
    cdef readonly int mem_level
    cdef readonly bint context
    cdef readonly long long bytes_in
    cdef readonly long long bytes_out
    cdef bint _started
    cdef bint _finished
    cdef unsigned long _crc
    cdef unsigned long long _size

    def __cinit__(self, int wire, int window_bits=11, int mem_level=3, bint context=True):
        if wire != GZIP and wire != WEBSOCKET:
            raise ValueError(f"unknown wire {wire!r}")
        if not 9 <= window_bits <= 14:
            raise ValueError(f"window_bits must be 9 to 14, got {window_bits}")
        if not 1 <= mem_level <= 9:
            raise ValueError(f"mem_level must be 1 to 9, got {mem_level}")
        if td_open(&self._state, window_bits, mem_level + 7) != 0:
            raise MemoryError()
        self.wire = wire
        self.window_bits = window_bits
        self.mem_level = mem_level
        self.context = context

    def __dealloc__(self):
        td_close(&self._state)

    @property
    def memory(self) -> int:
        """Bytes of compressor state this stream holds (history and hash heads)."""
        return td_memory(&self._state)

    cpdef bytes pack(self, list frames):
        """The wire bytes of ``frames`` (SSE events or server WebSocket frames) on this
        stream, compressed in one pass; see the Python twin."""
        if self._finished:
            raise ValueError("the stream is finished")
        if self.wire == GZIP:
            return self._pack_gzip(frames)
        return self._pack_ws(frames)

    cdef bytes _pack_gzip(self, list frames):
        cdef bytes data = frames[0] if len(frames) == 1 else b"".join(frames)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t head = 0 if self._started else 10
        cdef uint8_t *o = _room(head + td_bound(n))
        if head:
            memcpy(o, PyBytes_AS_STRING(_GZIP_HEAD), 10)
            self._started = True
        cdef size_t written = td_compress(
            &self._state, <const uint8_t *>PyBytes_AS_STRING(data), n, o + head
        )
        self._crc = crc32(data, self._crc)
        self._size += n
        self.bytes_in += n
        return self._bytes(o, head + written)

    cdef bytes _pack_ws(self, list frames):
        cdef Py_ssize_t bound = 0
        cdef bytes frame
        for frame in frames:
            bound += 14 + td_bound(PyBytes_GET_SIZE(frame))
        cdef uint8_t *o = _room(bound)
        cdef Py_ssize_t pos = 0, size, head, n
        cdef const uint8_t *f
        cdef uint8_t length
        cdef int i
        for frame in frames:
            f = <const uint8_t *>PyBytes_AS_STRING(frame)
            size = PyBytes_GET_SIZE(frame)
            if (f[0] & 0x0F) >= 8:  # a control frame is never compressed
                memcpy(o + pos, f, size)
                pos += size
                continue
            length = f[1] & 0x7F
            head = 2 if length < 126 else 4 if length == 126 else 10
            if not self.context:
                td_reset(&self._state)
            # Compressed after room for the largest header, then moved next to the
            # header it needs; the sync flush's 00 00 FF FF is left off (RFC 7692).
            n = td_compress(&self._state, f + head, size - head, o + pos + 10) - 4
            self.bytes_in += size - head
            if n < 126:
                o[pos] = f[0] | 0x40
                o[pos + 1] = <uint8_t>n
                memmove(o + pos + 2, o + pos + 10, n)
                pos += 2 + n
            elif n < 65536:
                o[pos] = f[0] | 0x40
                o[pos + 1] = 126
                o[pos + 2] = <uint8_t>(n >> 8)
                o[pos + 3] = <uint8_t>n
                memmove(o + pos + 4, o + pos + 10, n)
                pos += 4 + n
            else:
                o[pos] = f[0] | 0x40
                o[pos + 1] = 127
                for i in range(8):
                    o[pos + 2 + i] = <uint8_t>(n >> (56 - 8 * i))
                pos += 10 + n
        return self._bytes(o, pos)

    cdef bytes _bytes(self, uint8_t *o, Py_ssize_t size):
        self.bytes_out += size
        return PyBytes_FromStringAndSize(<char *>o, size)

    def finish(self) -> bytes:
        """End the stream: for gzip, the last block and the member's trailer (CRC-32
        and size); ``b""`` for a WebSocket, or once finished."""
        if self.wire != GZIP or self._finished:
            return b""
        self._finished = True
        cdef bytes head = b"" if self._started else _GZIP_HEAD
        self._started = True
        cdef uint8_t tail[16]
        cdef size_t n = td_finish(tail)
        cdef unsigned long crc = self._crc
        cdef unsigned long long size = self._size
        cdef int i
        for i in range(4):
            tail[n + i] = <uint8_t>(crc >> (8 * i))
            tail[n + 4 + i] = <uint8_t>(size >> (8 * i))
        data = head + PyBytes_FromStringAndSize(<char *>tail, n + 8)
        self.bytes_out += PyBytes_GET_SIZE(data)
        return data
