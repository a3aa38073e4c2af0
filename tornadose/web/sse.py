"""EventSource: a store's messages as Server-Sent Events (``text/event-stream``)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from tornado.iostream import StreamClosedError

from ..core.fanout import FORMAT_SSE, FORMAT_SSE_CHUNKED
from ..core.frames import encode_message, sse_event
from ..pubsub import store as stores
from ..transport import heartbeat as _heartbeat
from ..transport.rawstream import RawStream, take_over
from .base import BaseHandler

__all__ = [
    "DEFAULT_SSE_HEARTBEAT_INTERVAL",
    "DEFAULT_SSE_RETRY",
    "DEFAULT_SSE_RETRY_JITTER",
    "EventSource",
]

logger = logging.getLogger("tornadose.handlers")

#: Defaults of the Application settings these handlers read (handler keyword arguments
#: of the same name without the ``sse_`` prefix override them per URL).
DEFAULT_SSE_HEARTBEAT_INTERVAL = 15.0  # seconds of silence before a ``:`` comment line
DEFAULT_SSE_RETRY = 2000  # milliseconds, sent as the ``retry:`` reconnection hint
# Each stream's hint is drawn uniformly from retry x (1 - jitter) .. retry x (1 + jitter),
# so that clients cut at the same moment (a server restart, a network blip) do not all
# come back at the same moment.
DEFAULT_SSE_RETRY_JITTER = 0.5
_HEARTBEAT = b":\n"


class EventSource(BaseHandler):
    """Server-Sent Events (``text/event-stream``) subscriber.

    Each message is one SSE event with an ``id:`` field and one ``data:`` line per line
    of the message, so no message can break framing or inject fields. The response is
    not buffered by nginx (``X-Accel-Buffering: no``) and, with compression enabled
    (``tornadose_compression`` or ``compression``) for a client that accepts gzip, one
    gzip stream flushed at every write. The client going
    away is a normal end: the handler deregisters at once and logs nothing above DEBUG.

    A client that reconnects with ``Last-Event-ID`` (the header, or a ``last_event_id``
    query parameter) resumes right after that event when the store still holds what
    followed it, and otherwise gets a ``tornadose-gap`` event first (see
    :data:`tornadose.stores.GAP_EVENT`). The stream starts with a ``retry:`` hint
    (``sse_retry`` setting or ``retry`` argument, milliseconds, drawn per stream within
    ``sse_retry_jitter`` (default 0.5: from half to one and a half times it) so that
    clients cut together come back spread out) and carries a ``:`` comment line once
    it has been silent for ``heartbeat_interval`` seconds, at the latest after twice that
    (``sse_heartbeat_interval`` setting, default 15; 0 disables), so proxies do not
    close idle streams. All streams of a loop share one heartbeat timer.
    """

    def initialize(
        self,
        store: stores.BaseStore,
        heartbeat_interval: float | None = None,
        retry: int | None = None,
        allowed_origins: Sequence[str] | str | None = None,
        compression: Any = None,
    ) -> None:
        """Bind to ``store``; registration happens once the stream is open.
        ``compression`` overrides the ``tornadose_compression`` setting (see
        :mod:`tornadose.web.compress`). Raises ``TypeError`` for ``allowed_origins``
        that are not ``"*"`` or origins, ``TypeError``/``ValueError`` for a bad
        ``compression``."""
        self._bind(store)
        self._init_stream(heartbeat_interval, retry)
        self._set_origins(allowed_origins)
        self._set_compression(compression)

    _chunked = False  # a detached stream's body is chunked (HTTP/1.1)

    def _init_stream(self, heartbeat_interval: float | None, retry: int | None) -> None:
        self._streaming = False  # subscribed and not yet ended
        self._heartbeat_interval = heartbeat_interval
        self._retry = retry
        self._heartbeat_wheel: _heartbeat.HeartbeatWheel | None = None
        self._heartbeat_slot = 0

    def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            self._reserve()

    def options(self, *args: Any, **kwargs: Any) -> None:
        """Answer a CORS preflight (204): the grant when the Origin is allowed (see
        ``tornadose_allowed_origins``), nothing otherwise. Nothing is subscribed."""
        self._grant_cors(preflight=True)
        self.set_status(204)
        self.finish()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self._grant_cors()
        # As set_header() would, without checking constant values per subscriber.
        headers = self._headers
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        # Tornado's output transforms (its gzip) cannot apply to frames written straight
        # to the socket; compression is the connection's own stream (see _sse_codec).
        self._transforms = []
        retry = (
            self._retry
            if self._retry is not None
            else self.settings.get("sse_retry", DEFAULT_SSE_RETRY)
        )
        hint = b""
        if retry:
            jitter = self.settings.get("sse_retry_jitter", DEFAULT_SSE_RETRY_JITTER)
            if jitter:
                retry *= random.uniform(1 - jitter, 1 + jitter)
            hint = b"retry: %d\n\n" % max(1, round(retry))
        fast = self._fast_path(EventSource)
        # Compression is the fast path's: a handler publishing itself writes as before.
        codec = self._sse_codec() if fast else None
        if codec is not None and hint:
            hint = codec.pack([hint])
        detach = self._detachable(EventSource) and self._plain_response()
        if detach:
            stream = self._open_detached(hint)
            if stream is None:
                return  # the client is already gone
            chunked = self._chunked
        else:
            if hint:
                self.write(hint)
            try:
                await self.flush()
            except StreamClosedError:
                return
            connection = self.request.connection
            stream = connection.stream  # type: ignore[union-attr]
            if stream.closed():
                return
            self._set_nodelay(stream)
            chunked = getattr(connection, "_chunking_output", self.request.version == "HTTP/1.1")
        if detach or fast:  # detachable implies the fast path
            self._attach(stream, FORMAT_SSE_CHUNKED if chunked else FORMAT_SSE, None, codec)
            self._resume_from(self._last_event_id())
            self._schedule_heartbeat()
        self._subscribe()
        self._streaming = True
        # The response stays open after get() returns: Tornado finishes it only when
        # told to (_end_stream). No task, coroutine or future waits per subscriber for
        # the life of the stream (about 1.5 KB and a dozen objects the garbage
        # collector would walk), and nothing is left to cancel when the loop ends.
        self._auto_finish = False
        if detach:
            self._log_opened()
            self._shed()

    def _plain_response(self) -> bool:
        """Whether the response head is one :meth:`_open_detached` writes as Tornado
        would: status 200, no cookie to set, HTTP/1.x."""
        return (
            self._status_code == 200
            and "_new_cookie" not in self.__dict__  # set by set_cookie()
            and self.request.version in ("HTTP/1.1", "HTTP/1.0")
        )

    def _open_detached(self, hint: bytes) -> RawStream | None:
        """Take the socket from Tornado and start the response on it: the status line
        and headers Tornado would send (``HTTP1Connection.write_headers``), then the
        ``retry:`` hint, in one ``send()``. Writing them through Tornado costs a
        future, its callbacks and a loop iteration per subscriber, about a sixth of
        what admitting one costs. Returns the stream, or None when the client is
        already gone."""
        request = self.request
        chunked = request.version == "HTTP/1.1"
        headers = self._headers
        connection_header = ",".join(request.headers.get_list("Connection")).lower()
        if chunked:
            if connection_header == "close":
                headers["Connection"] = "close"
            headers["Transfer-Encoding"] = "chunked"
        elif connection_header == "keep-alive":
            headers["Connection"] = "Keep-Alive"
        # Tornado refused CR and LF in header values when they were set.
        head = "\r\n".join(
            [f"HTTP/1.1 200 {self._reason}"] + [f"{n}: {v}" for n, v in headers.get_all()]
        ).encode("latin1")
        if hint and chunked:
            hint = b"%x\r\n%b\r\n" % (len(hint), hint)
        stream = request.connection.stream  # type: ignore[union-attr]
        self._track(stream)
        self.detach()
        self._headers_written = True
        self._set_nodelay(stream)
        raw, _ = take_over(stream)  # type: ignore[misc]
        raw.set_close_callback(self.on_connection_close)
        raw.start_reading()
        self._raw = raw
        self._chunked = chunked
        raw.send(head + b"\r\n\r\n" + hint)
        return None if raw.closed() else raw

    def _end_stream(self) -> None:
        """End the response (the terminating chunk), once; quietly when the client is
        already gone."""
        self._resolve()
        raw = self._raw
        codec = self._codec
        if raw is not None:
            self.on_finish()  # as Tornado's finish() would
            # A compressed body ends its gzip stream (last block, CRC-32, size) last.
            tail = codec.finish() if codec is not None else b""
            if self._chunked:
                tail = (b"%x\r\n%b\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n"
            raw.end(tail)  # with the terminating chunk
            return
        if not self._finished:
            try:
                if codec is not None:
                    self.write(codec.finish())
                self.finish()
            except Exception:  # the connection is already gone: nothing to end
                logger.debug("%r: could not finish", self, exc_info=True)

    def publish(self, message: Any) -> Any:
        """Write one message as an SSE event (the generic path)."""
        payload, _ = encode_message(message)
        self.write(sse_event(payload))
        return self.flush()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._auto_finish:
            self._resolve()  # get() has not returned yet: Tornado finishes it
        else:
            self._end_stream()  # on_finish() runs, as for any finished request

    def _tornadose_end(self, revoked: bool = False, reason: str = "store closed") -> None:
        self._end_stream()

    def _resolve(self) -> None:
        if self._heartbeat_wheel is not None:
            self._heartbeat_wheel.discard(self, self._heartbeat_slot)
            self._heartbeat_wheel = None
        self._streaming = False

    def _schedule_heartbeat(self) -> None:
        interval = self._heartbeat_interval
        if interval is None:
            interval = self.settings.get("sse_heartbeat_interval", DEFAULT_SSE_HEARTBEAT_INTERVAL)
        if interval:
            # Counts as written: the first beat comes after a whole interval of silence.
            for _, subscriber in self._targets:
                subscriber._tornadose_sink.written = True
            self._heartbeat_wheel = _heartbeat.wheel(interval)
            self._heartbeat_slot = self._heartbeat_wheel.add(self)

    def _heartbeat_visit(self) -> None:
        if not self._targets or not self._streaming:
            return
        sinks = [subscriber._tornadose_sink for _, subscriber in self._targets]
        # Only idle streams need it: anything written since the last visit, or still
        # queued, already tells the proxy the stream is alive. Every target writes to
        # the same stream, so one beat through the first serves them all.
        if not any(sink.written for sink in sinks) and not sinks[0].stream.writing():
            self._targets[0][0]._write_extra(sinks[0], _HEARTBEAT, None)  # type: ignore[attr-defined]
        for sink in sinks:
            sink.written = False
