"""A small, independent Server-Sent Events client used by the test-suite.

Nothing here imports ``tornadose``: the point is to check the server against
an implementation of the WHATWG HTML "Server-sent events" parsing rules
("Parsing an event stream" / "Interpreting an event stream") that was written
separately from it.

Contents:

* :class:`Event` -- one dispatched event.
* :class:`SSEParser` -- incremental ``bytes -> [Event]`` parser.
* :class:`ChunkedDecoder` -- incremental HTTP/1.1 chunked transfer decoding.
* :class:`RawSSEClient` -- raw asyncio-streams HTTP client feeding the parser,
  with control over the socket (receive buffer size, FIN vs RST close).
"""

from __future__ import annotations

import asyncio
import codecs
import re
import socket
import struct
import zlib
from dataclasses import dataclass

__all__ = ["Event", "SSEParser", "ChunkedDecoder", "RawSSEClient", "encode_event"]


# ---------------------------------------------------------------------------
# Event stream parsing
# ---------------------------------------------------------------------------


@dataclass
class Event:
    """One dispatched event.

    ``id`` is the parser's last event ID at dispatch time (it persists across
    events until an ``id`` field changes it).  ``retry`` is the reconnection
    time set by a valid ``retry`` field inside this event's own block, or
    ``None`` if the block had none; the persistent value is
    :attr:`SSEParser.retry`.
    """

    type: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


# Line terminators of the event-stream grammar: CRLF, LF or a lone CR.
# (Deliberately not str.splitlines(), which also splits on U+2028, VT, ...)
_EOL = re.compile(r"\r\n|\r|\n")
_ASCII_DIGITS = re.compile(r"[0-9]+")


class SSEParser:
    """Incremental event-stream parser.

    ``feed(chunk)`` takes arbitrary slices of the response body and returns the
    events completed by that slice.  State kept between feeds: the UTF-8
    decoder (handles multi-byte characters split across chunks, strips one
    leading BOM, replaces invalid sequences with U+FFFD), the unfinished line,
    whether the previous text ended in CR (so a following LF is not a second
    line end), and the data / event type / last event ID buffers.

    Public state:

    * ``last_event_id`` -- the last event ID string (persists across events,
      also updated by blocks that end up not being dispatched).
    * ``retry`` -- the reconnection time (ms) from the last valid ``retry``
      field, or ``None``.
    * ``comments`` -- number of comment lines (lines starting with ``:``)
      seen, e.g. heartbeats.
    * ``events_dispatched`` -- total number of events returned so far.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._partial: list[str] = []  # pieces of the current unfinished line
        self._after_cr = False  # previous text ended with CR
        self._data: list[str] = []  # data buffer (each item already ends in LF)
        self._event_type = ""
        self._id_buffer = ""
        self._block_retry: int | None = None
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments = 0
        self.events_dispatched = 0

    # -- input -------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[Event]:
        """Feed raw body bytes; return the events dispatched by them."""
        text = self._decoder.decode(bytes(chunk))
        return self._feed_text(text)

    def _feed_text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if not text:
            return events
        if self._after_cr:
            # A CR that ended the previous text already terminated its line;
            # an LF right after it is the second half of that CRLF.
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return events
        pos = 0
        for m in _EOL.finditer(text):
            self._partial.append(text[pos : m.start()])
            line = "".join(self._partial)
            self._partial.clear()
            pos = m.end()
            ev = self._process_line(line)
            if ev is not None:
                events.append(ev)
        if pos < len(text):
            self._partial.append(text[pos:])
        # A trailing CR has been taken as a complete line end by the regex
        # (lone CR is a valid terminator), so the line is not held back
        # waiting for a possible LF; just remember to swallow that LF.
        self._after_cr = text.endswith("\r")
        return events

    # -- interpretation ----------------------------------------------------

    def _process_line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        # (no colon: the whole line is the field name and the value is "")
        if name == "data":
            self._data.append(value + "\n")
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if _ASCII_DIGITS.fullmatch(value):
                self.retry = int(value)
                self._block_retry = self.retry
        # any other field name is ignored
        return None

    def _dispatch(self) -> Event | None:
        # The last event ID buffer is never reset, so the ID persists.
        self.last_event_id = self._id_buffer
        retry, self._block_retry = self._block_retry, None
        if not self._data:
            self._event_type = ""
            return None
        data = "".join(self._data)
        if data.endswith("\n"):
            data = data[:-1]
        event = Event(
            type=self._event_type or "message",
            data=data,
            id=self.last_event_id,
            retry=retry,
        )
        self._data.clear()
        self._event_type = ""
        self.events_dispatched += 1
        return event


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event as an event-stream block (test helper).

    ``data`` is split on CRLF / CR / LF into one ``data:`` line per line.
    """
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.extend(f"data: {part}" for part in _EOL.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


# ---------------------------------------------------------------------------
# HTTP/1.1 chunked transfer coding
# ---------------------------------------------------------------------------


class ChunkedDecoder:
    """Incremental decoder for ``Transfer-Encoding: chunked`` bodies.

    ``feed(data)`` returns the payload bytes decoded so far from ``data``.
    Chunk-size lines may be split anywhere across feeds; chunk extensions
    (``1a;name=value``) are ignored; trailer fields after the last chunk are
    collected in ``trailers`` (raw lines).  ``done`` becomes true once the
    terminating ``0`` chunk and the (possibly empty) trailer section have been
    read; bytes fed after that are kept in ``unconsumed``.  Malformed framing
    raises ``ValueError``.  Line ends are CRLF; a bare LF is tolerated.
    """

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
    _MAX_LINE = 16 * 1024

    def __init__(self) -> None:
        self._state = self._SIZE
        self._line = bytearray()
        self._remaining = 0
        self.done = False
        self.trailers: list[bytes] = []
        self.unconsumed = b""
        self.chunk_sizes: list[int] = []

    def _take_line(self, data: bytes, i: int) -> tuple[bytes | None, int]:
        """Accumulate up to and including LF; return (line-or-None, new i)."""
        j = data.find(b"\n", i)
        if j < 0:
            self._line += data[i:]
            if len(self._line) > self._MAX_LINE:
                raise ValueError("chunked: line too long")
            return None, len(data)
        self._line += data[i:j]
        line = bytes(self._line)
        self._line.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        return line, j + 1

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        buf = bytes(data)
        i, n = 0, len(buf)
        while i < n:
            state = self._state
            if state == self._DONE:
                self.unconsumed += buf[i:]
                break
            if state == self._SIZE:
                line, i = self._take_line(buf, i)
                if line is None:
                    break
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
                    raise ValueError(f"chunked: bad chunk size line {line!r}")
                size = int(size_text, 16)
                self.chunk_sizes.append(size)
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
            elif state == self._DATA:
                take = min(self._remaining, n - i)
                out += buf[i : i + take]
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                line, i = self._take_line(buf, i)
                if line is None:
                    if self._line not in (b"", b"\r"):
                        raise ValueError("chunked: missing CRLF after chunk data")
                    break
                if line:
                    raise ValueError("chunked: missing CRLF after chunk data")
                self._state = self._SIZE
            elif state == self._TRAILER:
                line, i = self._take_line(buf, i)
                if line is None:
                    break
                if line:
                    self.trailers.append(line)
                else:
                    self._state = self._DONE
                    self.done = True
        return bytes(out)


# ---------------------------------------------------------------------------
# Raw HTTP client
# ---------------------------------------------------------------------------


class RawSSEClient:
    """Minimal HTTP/1.x client over asyncio streams that parses SSE.

    Create with ``await RawSSEClient.connect(...)``; the request is sent and
    the status line and headers are read before it returns.  The body is only
    read from the socket when one of the ``read_*`` methods runs, so a client
    that is not reading really stops draining the socket (up to asyncio's
    buffer ``limit`` plus the kernel receive buffer).

    Body framing: chunked if ``Transfer-Encoding: chunked``, else
    ``Content-Length`` bytes if given, else until EOF.

    Flags:

    * ``eof`` -- the server closed (FIN) or reset the connection.
    * ``reset_by_server`` -- reading hit ``ConnectionResetError``.
    * ``body_complete`` -- the body framing ended (terminating chunk seen,
      Content-Length reached, or EOF for close-delimited bodies).
    * ``closed_by_server`` -- the server ended the stream: ``eof`` or
      ``body_complete`` (an HTTP/1.1 server that finishes a chunked response
      may keep the connection open for keep-alive; that still counts).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status: int = 0
        self.reason: str = ""
        self.http_version: str = ""
        self.headers: dict[str, str] = {}
        self.parser = SSEParser()
        self.eof = False
        self.reset_by_server = False
        self.body_complete = False
        self.closed_locally = False
        self.bytes_received = 0  # body bytes after de-framing (compressed, if gzip)
        # Content-Encoding: gzip: the body is decoded with zlib (an independent decoder)
        self.gunzip: zlib._Decompress | None = None
        self._chunked: ChunkedDecoder | None = None
        self._length_left: int | None = None
        self._leftover: list[Event] = []

    # -- connection setup --------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/",
        headers: dict | None = None,
        rcvbuf: int | None = None,
        http10: bool = False,
        *,
        limit: int = 2**16,
        timeout: float = 10.0,
    ) -> RawSSEClient:
        """Connect, send ``GET path`` and read the response head.

        ``rcvbuf`` sets ``SO_RCVBUF`` before connecting (the kernel may round
        or double it).  ``limit`` is the asyncio StreamReader buffer limit
        (asyncio stops reading the socket at about twice this).
        """
        if rcvbuf is not None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, type_, proto, _, addr = infos[0]
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=limit), timeout
            )
        client = cls(reader, writer)
        try:
            client._send_request(host, port, path, headers or {}, http10)
            await asyncio.wait_for(client._read_head(), timeout)
        except BaseException:
            client.close_fin()
            raise
        return client

    def _send_request(self, host: str, port: int, path: str, extra: dict, http10: bool) -> None:
        version = "HTTP/1.0" if http10 else "HTTP/1.1"
        host_value = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        fields: dict[str, tuple[str, str]] = {
            "host": ("Host", host_value),
            "accept": ("Accept", "text/event-stream"),
        }
        for name, value in extra.items():
            fields[str(name).lower()] = (str(name), str(value))
        lines = [f"GET {path} {version}"]
        lines += [f"{name}: {value}" for name, value in fields.values()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def _read_head(self) -> None:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection before responding")
        parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"bad status line {status_line!r}")
        self.http_version = parts[0]
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed inside response headers")
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            name, _, value = text.partition(":")
            key = name.strip().lower()
            value = value.strip()
            if key in self.headers:
                self.headers[key] += ", " + value
            else:
                self.headers[key] = value
        te = self.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            self._chunked = ChunkedDecoder()
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._length_left = 0
        elif "content-length" in self.headers:
            self._length_left = int(self.headers["content-length"])
        if self._length_left == 0:
            self.body_complete = True
        if self.headers.get("content-encoding", "").lower() == "gzip":
            self.gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)

    # -- state -------------------------------------------------------------

    @property
    def closed_by_server(self) -> bool:
        return self.eof or self.body_complete

    @property
    def last_event_id(self) -> str:
        return self.parser.last_event_id

    @property
    def comments(self) -> int:
        return self.parser.comments

    # -- reading -----------------------------------------------------------

    async def _read_body_bytes(self, timeout: float | None) -> bytes | None:
        """Read some body bytes; ``None`` once the body/stream has ended."""
        while True:
            if self.body_complete or self.eof:
                return None
            try:
                raw = await asyncio.wait_for(self.reader.read(65536), timeout)
            except ConnectionResetError:
                self.reset_by_server = True
                raw = b""
            if not raw:
                self.eof = True
                if self._chunked is None and self._length_left is None:
                    self.body_complete = True  # close-delimited body
                return None
            if self._chunked is not None:
                body = self._chunked.feed(raw)
                if self._chunked.done:
                    self.body_complete = True
            elif self._length_left is not None:
                body = raw[: self._length_left]
                self._length_left -= len(body)
                if self._length_left == 0:
                    self.body_complete = True
            else:
                body = raw
            self.bytes_received += len(body)
            if self.gunzip is not None:
                body = self.gunzip.decompress(body)
            if body:
                return body

    async def _pump(self, want: int | None, timeout: float, what: str) -> None:
        """Read into ``_leftover`` until it holds ``want`` events (or EOF)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while want is None or len(self._leftover) < want:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                body = await self._read_body_bytes(remaining)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(
                    f"{what}: timed out after {timeout}s with "
                    f"{len(self._leftover)} event(s) received"
                    + (f" of {want} wanted" if want is not None else "")
                ) from None
            if body is None:
                return
            self._leftover.extend(self.parser.feed(body))

    async def read_events(self, n: int, timeout: float = 10.0) -> list[Event]:
        """Return the next ``n`` events, waiting for them as needed.

        Events already received but not yet returned count towards ``n``;
        any beyond ``n`` stay queued for the next call.  Raises
        ``asyncio.TimeoutError`` (message says how many arrived) on timeout
        and ``EOFError`` if the stream ends first (received events are kept
        and can still be collected with ``read_until_closed``).
        """
        await self._pump(n, timeout, f"read_events({n})")
        if len(self._leftover) < n:
            raise EOFError(f"read_events({n}): stream ended after {len(self._leftover)} event(s)")
        events, self._leftover = self._leftover[:n], self._leftover[n:]
        return events

    async def read_until_closed(self, timeout: float = 10.0) -> list[Event]:
        """Return all remaining events once the server ends the stream."""
        await self._pump(None, timeout, "read_until_closed()")
        events, self._leftover = self._leftover, []
        return events

    async def read_body(self, timeout: float = 10.0) -> bytes:
        """Read the rest of the (de-framed) body as raw bytes.

        Meant for non-200 responses; do not mix with ``read_events`` on the
        same response.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out = bytearray()
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                body = await self._read_body_bytes(remaining)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(
                    f"read_body(): timed out after {timeout}s with {len(out)} byte(s) received"
                ) from None
            if body is None:
                return bytes(out)
            out += body

    # -- closing -----------------------------------------------------------

    def close_fin(self) -> None:
        """Close normally (FIN after any pending writes)."""
        self.closed_locally = True
        if not self.writer.is_closing():
            self.writer.close()

    def close_rst(self) -> None:
        """Abort the connection so the kernel sends RST (SO_LINGER 1, 0)."""
        self.closed_locally = True
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_closed(self) -> None:
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def aclose(self) -> None:
        self.close_fin()
        await self.wait_closed()

    async def __aenter__(self) -> RawSSEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
