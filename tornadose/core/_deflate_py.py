"""Per-connection compression, pure-Python backend (zlib).

A :class:`Deflater` is one connection's compressed stream, kept for the life of the
connection (context takeover: each write refers back to what the connection already
received, which is what shrinks small ticks to a third):

- ``GZIP``: the body of an SSE response with ``Content-Encoding: gzip``. The first
  write starts the gzip member; every write is compressed in one call ending with a
  sync flush, so the client can decode all of it at once; :meth:`Deflater.finish` ends
  the member (last block, CRC-32 and size).
- ``WEBSOCKET``: permessage-deflate (RFC 7692). Each data frame of a write becomes one
  compressed frame (RSV1 set, the sync flush's trailing ``00 00 FF FF`` left off);
  control frames pass as they are. ``context=False`` (the client asked for
  ``server_no_context_takeover``) compresses each message on its own.

The compiled twin writes the same decompressed streams with its own encoder (fixed
codes, no trees to build per flush: about ten times less CPU per message); the
compressed bytes differ.
"""

from __future__ import annotations

import zlib

__all__ = ["GZIP", "WEBSOCKET", "Deflater"]

GZIP = 0
WEBSOCKET = 1


class Deflater:
    """One connection's compressed stream (see the module docstring).

    ``window_bits`` (9 to 14) sets the history a write may refer back to, 2**bits
    bytes; ``mem_level`` (1 to 9) the size of the match index. Raises ``ValueError``
    for anything else. ``bytes_in`` and ``bytes_out`` count what went through.
    """

    __slots__ = (
        "wire", "window_bits", "mem_level", "context", "bytes_in", "bytes_out",
        "_z", "_flush", "_finished",
    )

    def __init__(
        self, wire: int, window_bits: int = 11, mem_level: int = 3, context: bool = True
    ) -> None:
        if wire not in (GZIP, WEBSOCKET):
            raise ValueError(f"unknown wire {wire!r}")
        if not 9 <= window_bits <= 14:
            raise ValueError(f"window_bits must be 9 to 14, got {window_bits}")
        if not 1 <= mem_level <= 9:
            raise ValueError(f"mem_level must be 1 to 9, got {mem_level}")
        self.wire = wire
        self.window_bits = window_bits
        self.mem_level = mem_level
        self.context = context
        self.bytes_in = 0
        self.bytes_out = 0
        bits = 16 + window_bits if wire == GZIP else -window_bits
        self._z = zlib.compressobj(1, zlib.DEFLATED, bits, mem_level)
        # A full flush also forgets the history: nothing after it refers back.
        self._flush = zlib.Z_SYNC_FLUSH if context else zlib.Z_FULL_FLUSH
        self._finished = False

    @property
    def memory(self) -> int:
        """Bytes of compressor state this stream holds (zlib's window and tables)."""
        return (1 << (self.window_bits + 2)) + (1 << (self.mem_level + 9))

    def pack(self, frames: list[bytes]) -> bytes:
        """The wire bytes of ``frames`` (SSE events, or server WebSocket frames) on
        this stream, all of them in one pass. Raises ``ValueError`` once finished."""
        if self._finished:
            raise ValueError("the stream is finished")
        z = self._z
        if self.wire == GZIP:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self.bytes_in += len(data)
            out = z.compress(data) + z.flush(self._flush)
            self.bytes_out += len(out)
            return out
        parts = []
        for frame in frames:
            if frame[0] & 0x0F >= 8:  # a control frame is never compressed
                parts.append(frame)
                continue
            length = frame[1] & 0x7F
            head = 2 if length < 126 else 4 if length == 126 else 10
            payload = frame[head:]
            self.bytes_in += len(payload)
            body = (z.compress(payload) + z.flush(self._flush))[:-4]
            parts.append(_header(frame[0] | 0x40, len(body)))
            parts.append(body)
        out = b"".join(parts)
        self.bytes_out += len(out)
        return out

    def finish(self) -> bytes:
        """End the stream: for gzip, the last block and the member's trailer;
        ``b""`` for a WebSocket, or once finished."""
        if self.wire != GZIP or self._finished:
            return b""
        self._finished = True
        out = self._z.flush(zlib.Z_FINISH)
        self.bytes_out += len(out)
        return out


def _header(first: int, n: int) -> bytes:
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")
