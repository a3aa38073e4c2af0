"""The server side of RFC 6455 framing, without I/O: what a detached WebSocket reads.

A subscriber's WebSocket mostly writes; what it reads is small and rare: control frames
(ping, pong, close) and, for topic sockets, subscribe requests. :class:`FrameReader`
takes bytes as they arrive and returns whole messages and control frames, enforcing
what a server must (RFC 6455 section 5): client frames masked, no reserved bits (but
RSV1 on the first frame of a message once permessage-deflate is agreed: that message
is decoded, see :mod:`~tornadose.transport.permessage`), known opcodes, control
frames unfragmented and at most 125 bytes, continuation frames only inside a fragmented message, a size limit
on messages (checked from the frame header, before any payload is buffered), text
valid UTF-8, close codes that may be sent. A violation raises :class:`ProtocolError`
carrying the close code to answer with.
"""

from __future__ import annotations

import struct

from .permessage import InflateError, inflate

__all__ = [
    "BINARY", "CLOSE", "PING", "PONG", "TEXT",
    "FrameReader", "ProtocolError", "close_frame", "control_frame", "data_frame",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (CONTINUATION, TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _closable(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 section 7.4)."""
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999


class FrameReader:
    """Turns the bytes a client sends into ``(opcode, payload)`` events: ``TEXT`` with
    a ``str``, ``BINARY`` with ``bytes`` (a fragmented message is delivered once, whole),
    ``PING``/``PONG`` with their ``bytes``, ``CLOSE`` with ``(code, reason)`` (code
    1005 when the frame carries none)."""

    __slots__ = (
        "max_size", "inflate", "_buffer", "_fragments", "_opcode", "_fragmented", "_compressed",
    )

    def __init__(self, max_size: int, inflate: bool = False) -> None:
        self.max_size = max_size
        #: permessage-deflate agreed: RSV1 marks a compressed message.
        self.inflate = inflate
        self._compressed = False
        # Appended to in place: a client trickling a large frame in small pieces costs
        # amortized linear copying, not quadratic.
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._opcode = TEXT
        self._fragmented = 0

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        """Parse ``data`` after what was left over; raises :class:`ProtocolError`."""
        buf = self._buffer
        buf += data
        events: list[tuple[int, object]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            fin = first & 0x80
            opcode = first & 0x0F
            compressed = False
            if first & 0x70:
                if (
                    first & 0x70 != 0x40 or not self.inflate
                    or opcode in _CONTROL or opcode == CONTINUATION
                ):
                    raise ProtocolError(1002, "reserved bits set that no extension agreed to")
                compressed = True
            if not second & 0x80:
                raise ProtocolError(1002, "client frames must be masked")
            if opcode not in _DATA and opcode not in _CONTROL:
                raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            if opcode in _CONTROL:
                if not fin or length > 125:
                    raise ProtocolError(1002, "control frames must be whole and at most 125 bytes")
            elif self._fragmented + length > self.max_size:
                raise ProtocolError(1009, f"message larger than {self.max_size} bytes")
            if end - pos < head + 4 + length:
                break
            start = pos + head + 4
            payload = _unmask(bytes(buf[start:start + length]), bytes(buf[start - 4:start]))
            pos = start + length
            if opcode in _CONTROL:
                events.append(self._control(opcode, payload))
            elif opcode == CONTINUATION:
                if self._fragments is None:
                    raise ProtocolError(1002, "continuation frame outside a fragmented message")
                self._fragments.append(payload)
                self._fragmented += length
                if fin:
                    whole = b"".join(self._fragments)
                    self._fragments = None
                    self._fragmented = 0
                    if self._compressed:
                        whole = self._inflate(whole)
                    events.append(self._message(self._opcode, whole))
            else:
                if self._fragments is not None:
                    raise ProtocolError(1002, "new message inside a fragmented message")
                if fin:
                    if compressed:
                        payload = self._inflate(payload)
                    events.append(self._message(opcode, payload))
                else:
                    self._opcode = opcode
                    self._compressed = compressed
                    self._fragments = [payload]
                    self._fragmented = length
        del buf[:pos]
        return events

    def _inflate(self, payload: bytes) -> bytes:
        try:
            return inflate(payload, self.max_size)
        except InflateError as exc:
            raise ProtocolError(exc.code, exc.reason) from None

    @staticmethod
    def _message(opcode: int, payload: bytes) -> tuple[int, object]:
        if opcode == BINARY:
            return BINARY, payload
        try:
            return TEXT, payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(1007, "text message is not valid UTF-8") from None

    @staticmethod
    def _control(opcode: int, payload: bytes) -> tuple[int, object]:
        if opcode != CLOSE:
            return opcode, payload
        if not payload:
            return CLOSE, (1005, "")
        if len(payload) == 1:
            raise ProtocolError(1002, "close frame with a one-byte payload")
        (code,) = struct.unpack_from("!H", payload)
        if not _closable(code):
            raise ProtocolError(1002, f"close code {code} may not be sent")
        try:
            return CLOSE, (code, payload[2:].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(1007, "close reason is not valid UTF-8") from None


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked server control frame (payload at most 125 bytes)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int | None = None, reason: str | None = None) -> bytes:
    """A server close frame; ``reason`` is cut to fit 123 bytes of UTF-8."""
    if code is None:
        return control_frame(CLOSE)
    # Cut on a character boundary: the reason must stay valid UTF-8.
    body = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode() if reason else b""
    return control_frame(CLOSE, struct.pack("!H", code) + body)


def data_frame(payload: bytes, binary: bool = False) -> bytes:
    """An unmasked, unfragmented server data frame."""
    n = len(payload)
    first = 0x82 if binary else 0x81
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload
