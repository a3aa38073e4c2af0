"""A detached connection: the socket of an open stream and nothing else of Tornado's.

Once an SSE response has sent its headers, or a WebSocket its 101, delivery needs the
socket, the bytes the socket has not taken yet, and a way to notice that the peer went
away. Tornado keeps far more per connection for the life of the stream (the request and
its headers, the HTTP/1 connection, an ``IOStream`` with two deques and futures, the
handler's request state): about 10 KB and some 70 objects the garbage collector walks.
:func:`take_over` hands the socket of a plain-TCP ``IOStream`` to a :class:`RawStream`
that keeps only that.

:class:`RawStream` offers the part of ``IOStream``'s interface the fan-out uses
(``socket``, ``io_loop``, ``closed()``, ``writing()``, ``write()``, ``close()``,
``set_close_callback()``), so a :class:`~tornadose.core.fanout.Sink` writes to it as to an
``IOStream``: straight to the socket when nothing is queued, the rest queued here in
order and written as the socket drains. Incoming bytes go to :meth:`RawStream._received`
(discarded: an SSE client has nothing to say; the WebSocket subclass parses them). The
peer's close (EOF, reset) closes the stream and runs the close callback on the next
loop iteration, as ``IOStream`` does.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Callable

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

__all__ = ["RawStream", "can_take_over", "take_over"]

_READ_SIZE = 65536
# How long an ending stream may take to hand its last bytes to a client that does not
# read them before the socket is closed anyway.
END_TIMEOUT = 5.0
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class RawStream:
    """The socket of one open stream, with its pending bytes.

    ``write()`` sends at once what the socket takes and queues the rest (in order, after
    anything already queued); the returned future resolves once nothing is queued any
    more (or the stream closed). ``close()`` is idempotent and never raises.
    """

    # Lets the fan-out write straight to ``socket`` when ``_size`` (bytes queued) is 0,
    # as it does for a plain IOStream.
    tornadose_raw = True

    __slots__ = (
        "socket", "io_loop", "_loop", "_fd", "_pending", "_size", "_waiters",
        "_close_callback", "_writer", "_end_timer", "_via_tornado", "error",
    )

    def __init__(self, sock: Any, io_loop: IOLoop) -> None:
        self.socket: Any = sock
        self.io_loop = io_loop
        # Tornado's selector loop where it needs one (Windows), asyncio's otherwise.
        self._loop: asyncio.AbstractEventLoop = getattr(io_loop, "selector_loop", None) or (
            io_loop.asyncio_loop  # type: ignore[attr-defined]
        )
        self._fd = sock.fileno()
        self._pending: bytearray | None = None
        self._size = 0
        self._waiters: list[asyncio.Future[None]] | None = None
        self._close_callback: Callable[[], None] | None = None
        self._writer = False
        self._end_timer: object | None = None
        # True while the socket's reads reach us through the registration Tornado made
        # for the IOStream (see take_over), False when through our own, if any.
        self._via_tornado = False
        self.error: BaseException | None = None

    def start_reading(self) -> None:
        """Watch the socket for incoming bytes and the peer's close."""
        if self.socket is not None and not self._via_tornado:
            self._loop.add_reader(self._fd, self._on_readable)

    def pause_reading(self) -> None:
        if self.socket is None:
            return
        if self._via_tornado:
            self._via_tornado = False
            self.io_loop.remove_handler(self._fd)
            if self._writer:  # Tornado's remove_handler stops the writer too
                self._loop.add_writer(self._fd, self._on_writable)
        else:
            self._loop.remove_reader(self._fd)

    def _on_tornado_event(self, fileobj: Any, events: int) -> None:
        # Tornado's dispatch of the reads it watches for us (see take_over).
        if events & IOLoop.READ:
            self._on_readable()

    # -- the IOStream interface the fan-out uses -----------------------------------------

    def fileno(self) -> int:
        return self._fd

    def closed(self) -> bool:
        return self.socket is None

    def writing(self) -> bool:
        return self._size > 0

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        """Send ``data`` after anything queued. Raises ``StreamClosedError`` when the
        stream is closed."""
        if self.socket is None:
            raise StreamClosedError(real_error=self.error)
        self.send(data)
        if not self._size:
            return self._done_future()
        future = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(future)
        return future

    def send(self, data: bytes | memoryview) -> None:
        """:meth:`write` without a future to wait on; nothing happens once closed."""
        if self.socket is not None and data:
            if self._size:
                self._pending += data  # type: ignore[operator]
                self._size = len(self._pending)  # type: ignore[arg-type]
            else:
                sent = self._send(data)
                if sent < 0:
                    return
                if sent < len(data):
                    self._pending = bytearray(memoryview(data)[sent:])
                    self._size = len(self._pending)
                    self._want_writable()

    def close(self, exc_info: Any = None) -> None:
        """Close the socket (once); the close callback runs on the next iteration."""
        sock = self.socket
        if sock is None:
            return
        if isinstance(exc_info, BaseException):
            self.error = exc_info
        self.socket = None
        loop = self._loop
        if self._via_tornado:
            self._via_tornado = False
            self.io_loop.remove_handler(self._fd)
        else:
            loop.remove_reader(self._fd)
        if self._writer:
            loop.remove_writer(self._fd)
            self._writer = False
        if self._end_timer is not None:
            self.io_loop.remove_timeout(self._end_timer)
            self._end_timer = None
        sock.close()
        self._pending = None
        self._size = 0
        self._resolve_waiters()
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            self.io_loop.add_callback(callback)

    def end(self, data: bytes = b"") -> None:
        """Send ``data`` after what is queued, then close: at once when the socket took
        everything, else once it drains, at the latest after :data:`END_TIMEOUT`."""
        if self.socket is None:
            return
        self.send(data)
        if not self._size:
            self.close()
            return
        if self._end_timer is None:
            self._end_timer = self.io_loop.call_later(END_TIMEOUT, self.close)

    # -- internals ------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview | bytearray) -> int:
        """One non-blocking send; -1 (and the stream closed) when the peer is gone."""
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in _RETRY:
                return 0
            self.close(exc)  # a reset or broken pipe: the client left, a normal end
            return -1

    def _want_writable(self) -> None:
        if not self._writer and self.socket is not None:
            self._writer = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        pending = self._pending
        if pending is None or self.socket is None:
            return
        sent = self._send(pending)
        if sent <= 0:
            return
        del pending[:sent]
        self._size = len(pending)
        if not self._size:
            self._pending = None
            self._writer = False
            self._loop.remove_writer(self._fd)
            self._resolve_waiters()
            if self._end_timer is not None:
                self.close()  # ending: everything is out

    def _on_readable(self) -> None:
        try:
            data = self.socket.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(exc)
            return
        if not data:
            self.close()  # the peer closed its side: the stream is over
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        """Incoming bytes; an SSE client has nothing to say, so they are dropped."""

    def _resolve_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        for future in waiters or ():
            if not future.done():
                future.set_result(None)

    def _done_future(self) -> asyncio.Future[None]:
        future = self._loop.create_future()
        future.set_result(None)
        return future

    def __repr__(self) -> str:
        state = "closed" if self.socket is None else f"fd {self._fd}, {self._size} B queued"
        return f"<{type(self).__name__} {state}>"


def can_take_over(stream: Any) -> bool:
    """Whether :func:`take_over` can move ``stream``'s socket: a plain-TCP ``IOStream``
    (TLS streams keep their own state), open, with nothing queued, of a Tornado whose
    read buffer is the one this module knows."""
    return (
        type(stream) is IOStream
        and not stream.closed()
        and not stream.writing()
        and isinstance(getattr(stream, "_read_buffer", None), bytearray)
        and isinstance(getattr(stream, "_read_buffer_size", None), int)
    )


def take_over(stream: Any, cls: type[RawStream] = RawStream) -> tuple[RawStream, bytes] | None:
    """Move the socket of a detached ``IOStream`` to a new ``cls``.

    Returns the new stream (not yet reading) and the bytes the ``IOStream`` had read
    ahead, or None when :func:`can_take_over` says no: the caller keeps the
    ``IOStream`` then. Once taken over, the ``IOStream`` must not be used.
    """
    if not can_take_over(stream):
        return None
    buffered, size = stream._read_buffer, stream._read_buffer_size
    sock = stream.socket
    read_ahead = bytes(buffered[:size])
    io_loop = stream.io_loop
    raw = cls(sock, io_loop)
    # Tornado watches an idle IOStream's socket for reads (to notice a close). Its
    # loop dispatches such events through its ``handlers`` table: pointing the entry
    # at the new stream keeps the registration as it is, which costs a dictionary
    # store instead of taking the socket out of epoll and putting it back (a tenth of
    # what admitting a subscriber costs). Anything else: register anew.
    handlers = getattr(io_loop, "handlers", None)
    state = getattr(stream, "_state", None)
    fd = raw._fd
    if (
        isinstance(handlers, dict)
        and fd in handlers
        and isinstance(state, int)
        and not state & IOLoop.WRITE
    ):
        handlers[fd] = (sock, raw._on_tornado_event)
        raw._via_tornado = True
    else:
        io_loop.remove_handler(sock)
    return raw, read_ahead
