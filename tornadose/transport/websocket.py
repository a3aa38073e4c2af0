"""A subscriber's WebSocket after the handshake, without Tornado's per-connection state.

Tornado keeps, for each open WebSocket, the handler with its request, a protocol object,
an ``IOStream`` and a coroutine reading frames (one task for the life of the socket):
about 15 KB. :class:`Handshake` stands in for Tornado's protocol object during
``WebSocketHandler.get()``: it answers the upgrade exactly as Tornado does (Tornado has
already checked the request: method, ``Upgrade``, ``Connection``, origin, version),
then moves the socket to a :class:`WebSocketStream`, calls the handler's ``open()``
and returns: no task waits per connection.

:class:`WebSocketStream` reads with a :class:`~tornadose.transport.wsproto.FrameReader` when the
socket is readable and answers as RFC 6455 asks: a ping with a pong, a close with a
close (echoing its code) before closing the socket, a protocol error with the close code
it calls for (1002, 1007, 1009). Messages go to the handler's ``on_message`` in order
(when it returns an awaitable, nothing more is read until it is done). A close the
server starts (:meth:`WebSocketStream.close_handshake`) sends the close frame after
everything queued and waits for the client's answer at most :data:`CLOSE_TIMEOUT`
seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketProtocol13

from .permessage import Agreement
from .rawstream import RawStream, can_take_over, take_over
from .wsproto import CLOSE, PING, PONG, FrameReader, ProtocolError, close_frame, control_frame

__all__ = ["CLOSE_TIMEOUT", "Handshake", "WebSocketStream"]

logger = logging.getLogger("tornadose.handlers")

#: Seconds a server-started close waits for the client's close frame.
CLOSE_TIMEOUT = 5.0


class WebSocketStream(RawStream):
    """A detached server WebSocket: a :class:`RawStream` that reads frames.

    ``owner`` is the handler: it gets ``on_message(str | bytes)`` for each message and
    ``_ws_closed(code, reason)`` once the socket is closed.
    """

    __slots__ = ("owner", "_reader", "_held", "_close_sent", "_peer_close", "ping_sent")

    def __init__(self, sock: Any, io_loop: Any, owner: Any = None, max_size: int = 65536) -> None:
        super().__init__(sock, io_loop)
        self.owner = owner
        self._reader = FrameReader(max_size)
        self._held: list[tuple[int, object]] | None = None  # events waiting for on_message
        self._close_sent = False
        self._peer_close: tuple[int | None, str | None] | None = None
        #: loop time of the last ping still unanswered, for the ping timeout.
        self.ping_sent: float | None = None

    def is_closing(self) -> bool:
        return self.socket is None or self._close_sent

    def send_frame(self, frame: bytes) -> asyncio.Future[None]:
        """Queue one whole frame after everything queued. Raises ``StreamClosedError``
        once the close handshake started (nothing may follow a close frame)."""
        if self._close_sent:
            raise StreamClosedError()
        return self.write(frame)

    def ping(self, data: bytes = b"") -> None:
        if not self.is_closing():
            self.send(control_frame(PING, data))

    def close_handshake(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the close handshake: the close frame goes after everything queued; the
        socket closes when the client answers, or after :data:`CLOSE_TIMEOUT`."""
        if self.is_closing():
            return
        self._close_sent = True
        self.send(close_frame(code, reason))
        if self.socket is not None and self._end_timer is None:
            self._end_timer = self.io_loop.call_later(CLOSE_TIMEOUT, self.close)

    def close(self, exc_info: Any = None) -> None:
        if self.socket is None:
            return
        super().close(exc_info)
        owner, self.owner = self.owner, None
        self._held = None
        if owner is not None:
            code, reason = self._peer_close or (None, None)
            self.io_loop.add_callback(owner._ws_closed, code, reason)

    def _received(self, data: bytes) -> None:
        try:
            events = self._reader.feed(data)
        except ProtocolError as exc:
            logger.debug("%r: %s; closing with %d", self, exc.reason, exc.code)
            self._fail(exc.code, exc.reason)
            return
        if self._held is not None:
            self._held.extend(events)  # reading is paused; defensive
        elif events:
            self._dispatch(events)

    def _dispatch(self, events: list[tuple[int, object]]) -> None:
        for index, (opcode, payload) in enumerate(events):
            if self.socket is None:
                return
            if opcode == PING:
                if not self._close_sent:
                    self.send(control_frame(PONG, payload))  # type: ignore[arg-type]
            elif opcode == PONG:
                self.ping_sent = None
            elif opcode == CLOSE:
                self._on_close_frame(*payload)  # type: ignore[misc]
                return
            elif not self._close_sent and self.owner is not None:
                try:
                    result = self.owner.on_message(payload)
                except Exception:
                    logger.error("%r.on_message failed", self.owner, exc_info=True)
                    self._fail(1011, "internal error")
                    return
                if result is not None and inspect.isawaitable(result):
                    # Messages apply in order: read nothing more until this one is done.
                    self._held = events[index + 1:]
                    self.pause_reading()
                    asyncio.ensure_future(result).add_done_callback(self._resume)
                    return

    def _resume(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.error("%r.on_message failed", self.owner, exc_info=done.exception())
        held, self._held = self._held, None
        if self.socket is None:
            return
        self.start_reading()
        if held:
            self._dispatch(held)

    def _on_close_frame(self, code: int, reason: str) -> None:
        self._peer_close = (None if code == 1005 else code, reason or None)
        if self._close_sent:
            self.close()  # the answer to our close: the handshake is complete
            return
        self._close_sent = True
        self.pause_reading()
        # Echo the client's code (none when it sent none), then close once it is out.
        self.end(close_frame(None if code == 1005 else code))

    def _fail(self, code: int, reason: str) -> None:
        self.pause_reading()
        if self._close_sent:
            self.close()
            return
        self._close_sent = True
        self.end(close_frame(code, reason))


class Handshake:
    """What ``WebSocketHandler.get()`` takes for a protocol object on the detached path:
    it answers the upgrade like Tornado's ``WebSocketProtocol13`` (no subprotocol; the
    permessage-deflate ``agreement``, when given, in ``Sec-WebSocket-Extensions``),
    hands the socket to a :class:`WebSocketStream` (which then decodes compressed
    messages) and opens the handler. The handler's ``ws_connection`` is None once
    this returns."""

    __slots__ = ("selected_subprotocol", "agreement")

    def __init__(self, agreement: Agreement | None = None) -> None:
        self.selected_subprotocol = None
        self.agreement = agreement

    async def accept_connection(self, handler: Any) -> None:
        key = handler.request.headers.get("Sec-Websocket-Key")
        if not key:
            handler.set_status(400)
            handler.finish("Missing/Invalid WebSocket headers")
            return
        handler.clear_header("Content-Type")
        handler.set_status(101)
        handler.set_header("Upgrade", "websocket")
        handler.set_header("Connection", "Upgrade")
        handler.set_header("Sec-WebSocket-Accept", WebSocketProtocol13.compute_accept_value(key))
        if self.agreement is not None:
            handler.set_header("Sec-WebSocket-Extensions", self.agreement.response)
        request = handler.request
        stream = request.connection.stream
        if _plain_upgrade(handler) and can_take_over(stream):
            # The 101 in one send() on the socket already taken from Tornado: writing it
            # through Tornado costs a future, its callbacks and a loop iteration.
            head = _head(handler)
            handler._track(stream)
            handler.detach()
            handler._headers_written = True
            handler._log_opened()
            taken = take_over(stream, WebSocketStream)
            assert taken is not None  # can_take_over() said so, and nothing ran since
            taken[0].send(head)
        else:
            handler.finish()
            # Right after finish(), as Tornado does: before its connection reads on.
            handler._track(stream)
            stream = handler.detach()
            if stream.writing():
                try:
                    await stream.write(b"")  # the 101 must be out before the socket moves
                except StreamClosedError:
                    return
            taken = take_over(stream, WebSocketStream)
        handler.ws_connection = None
        if taken is None or taken[0].closed():  # the client left during the handshake
            if taken is None and not stream.closed():
                stream.close()
            return
        ws, read_ahead = taken
        assert isinstance(ws, WebSocketStream)
        ws.owner = handler
        ws._reader.max_size = handler.max_message_size
        ws._reader.inflate = self.agreement is not None
        handler._raw = ws
        try:
            opened = handler.open(*handler.open_args, **handler.open_kwargs)
            if opened is not None:
                await opened
        except Exception:
            handler.log_exception(*sys.exc_info())
            ws.close()
            return
        if ws.closed():
            return
        handler._shed()
        ws.start_reading()
        if read_ahead:
            ws._received(read_ahead)


def _plain_upgrade(handler: Any) -> bool:
    """Whether the 101 is one :func:`_head` writes as Tornado would: an HTTP/1.1
    request that does not ask to close, no cookie to set."""
    request = handler.request
    tokens = ",".join(request.headers.get_list("Connection")).lower()
    return (
        request.version == "HTTP/1.1"
        and "close" not in (t.strip() for t in tokens.split(","))
        and "_new_cookie" not in handler.__dict__
    )


def _head(handler: Any) -> bytes:
    """The status line and headers Tornado writes for the handler's 101 response
    (``RequestHandler.finish``: no representation headers on a 1xx; then
    ``HTTP1Connection.write_headers``: no chunking on a 1xx)."""
    headers = handler._headers
    for name in ("Content-Encoding", "Content-Language", "Content-Type"):
        headers.pop(name, None)
    lines = [f"HTTP/1.1 101 {handler._reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers.get_all())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")
