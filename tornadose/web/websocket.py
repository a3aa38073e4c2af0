"""WebSocketSubscriber: a store's messages as WebSocket text frames."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tornado.escape import json_encode
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..core.deflate import WEBSOCKET, Deflater
from ..core.fanout import FORMAT_WS
from ..core.frames import encode_message, ws_data_body
from ..pubsub import store as stores
from ..transport import heartbeat as _heartbeat
from ..transport.websocket import Handshake
from ..transport.wsproto import data_frame
from .base import BaseHandler

__all__ = ["DEFAULT_WS_MAX_INCOMING", "WebSocketSubscriber"]

logger = logging.getLogger("tornadose.handlers")

# Subscribe-only sockets need no large incoming messages; a bigger one closes the
# connection (code 1009) unless ``websocket_max_message_size`` says otherwise.
DEFAULT_WS_MAX_INCOMING = 64 * 1024


class WebSocketSubscriber(BaseHandler, WebSocketHandler):
    """WebSocket subscriber: each message is one text frame, the JSON ``{"data": ...}``.

    Each frame also carries the event ``id`` (the same ids SSE subscribers of the store
    see); a client that reconnects with ``?last_event_id=<id>`` resumes like an SSE
    client, or first gets ``{"id": ..., "event": "tornadose-gap", "data": {...}}``.
    Messages sent by the client are ignored (the socket is subscribe-only); one larger
    than ``websocket_max_message_size`` (default here 64 KiB) closes the connection.
    Pings follow Tornado's ``websocket_ping_interval`` setting. With
    ``tornadose_compression`` (or ``compression``) enabled and offered by the client,
    frames are compressed with permessage-deflate, one stream per connection (see
    :mod:`tornadose.web.compress`). A subclass that turns on Tornado's own compression
    (``get_compression_options``) gets Tornado's protocol and ``write_message`` path.
    """

    _ws_deflate: Any = None  # the permessage-deflate agreement of this upgrade

    def initialize(
        self,
        store: stores.BaseStore,
        allowed_origins: Sequence[str] | str | None = None,
        compression: Any = None,
    ) -> None:
        """Bind to ``store``; registration happens once the WebSocket is open.
        ``compression`` overrides the ``tornadose_compression`` setting."""
        self._bind(store)
        self._set_origins(allowed_origins)
        self._set_compression(compression)

    def prepare(self) -> None:
        self._reserve()

    def check_origin(self, origin: str) -> bool:
        """Whether a cross-origin WebSocket from ``origin`` may connect: with
        ``tornadose_allowed_origins`` (or ``allowed_origins``), exactly the origins
        listed (``"*"``: any); without, Tornado's rule (none). Same-origin requests
        never get here: Tornado always lets them in."""
        origins = self._allowed_origins()
        if origins is None:
            return super().check_origin(origin)
        return self._origin_in(origin, origins)

    @property
    def max_message_size(self) -> int:
        return self.settings.get("websocket_max_message_size", DEFAULT_WS_MAX_INCOMING)

    _DETACH_HOOKS = (
        "on_message", "on_close", "on_connection_close", "on_ws_connection_close",
        "on_ping", "on_pong", "on_finish", "select_subprotocol", "get_compression_options",
        "write_message", "close", "ping",
    )

    @property
    def _detach_base(self) -> type:
        # The class whose hooks are ours (the topic socket's is its own: its on_message
        # is the protocol).
        return WebSocketSubscriber

    def get_websocket_protocol(self) -> Any:
        # The detached path answers the upgrade itself when nothing needs Tornado's
        # protocol object for the life of the socket (compression, a subprotocol, a
        # subclass hook); Tornado has checked the request already.
        if (
            self.request.headers.get("Sec-WebSocket-Version") == "13"
            and self.get_compression_options() is None
            and self._detachable(self._detach_base)
        ):
            agreement = self._ws_agreement() if self._fast_path(WebSocketSubscriber) else None
            self._ws_deflate = agreement
            return Handshake(agreement)
        return super().get_websocket_protocol()

    def open(self, *args: Any, **kwargs: Any) -> None:
        connection = self.ws_connection
        stream: Any = self._raw
        if stream is None:
            if connection is None:
                return  # the client left during the handshake: nothing to subscribe
            stream = connection.stream  # type: ignore[attr-defined]
        if stream.closed():
            return
        self._set_nodelay(stream)
        if self._fast_path(WebSocketSubscriber):
            compressed = getattr(connection, "_compressor", None) is not None
            codec = None
            agreement, self._ws_deflate = self._ws_deflate, None
            options = self._compression() if agreement is not None else None
            if options is not None and self._raw is not None:
                codec = Deflater(
                    WEBSOCKET, agreement.window_bits, options.mem_level, agreement.context
                )
            self._attach(stream, FORMAT_WS, self._write_frames if compressed else None, codec)
            self._resume_from(self.get_query_argument("last_event_id", None, strip=False) or None)
        self._subscribe()
        if self._raw is not None:
            self._start_pinging()

    def on_message(self, message: str | bytes) -> None:
        """Ignore client messages: this socket only publishes."""

    def on_close(self) -> None:
        self._release_reservation()
        self._unsubscribe()

    def on_finish(self) -> None:
        # Status 101: the upgrade response is finished, the WebSocket lives on, and
        # open() subscribes. Anything else (a refused upgrade) is the end.
        if self.get_status() != 101:
            super().on_finish()

    def on_connection_close(self) -> None:
        # BaseHandler's comes first in the MRO; Tornado's must run too, so that
        # on_close() is called (subclasses of the original rely on it).
        self._release_reservation()
        self._unsubscribe()
        WebSocketHandler.on_connection_close(self)

    def publish(self, message: Any) -> Any:
        """Send one message as ``{"data": message}`` (the generic path)."""
        _, json_value = encode_message(message)
        return self.write_message(ws_data_body(json_value))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Stop raw writes before the close frame: nothing may follow it.
        self._unsubscribe()
        if self._raw is not None:
            self._raw.close_handshake(code, reason)  # type: ignore[attr-defined]
            return
        super().close(code, reason)

    def write_message(
        self, message: bytes | str | dict[str, Any], binary: bool = False
    ) -> Any:
        """As Tornado's; on a detached socket the frame goes after everything queued."""
        raw: Any = self._raw
        if raw is None:
            return super().write_message(message, binary)
        if raw.is_closing():
            raise WebSocketClosedError()
        if isinstance(message, dict):
            message = json_encode(message)
        payload = message.encode("utf-8") if isinstance(message, str) else message
        return raw.send_frame(data_frame(payload, binary))

    def ping(self, data: str | bytes = b"") -> None:
        """As Tornado's (at most 125 bytes)."""
        raw: Any = self._raw
        if raw is None:
            super().ping(data)
            return
        if raw.is_closing():
            raise WebSocketClosedError()
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if len(payload) > 125:
            raise ValueError("ping data must be at most 125 bytes")
        raw.ping(payload)

    _ping_wheel: _heartbeat.HeartbeatWheel | None = None
    _ping_slot = 0

    def _start_pinging(self) -> None:
        """``websocket_ping_interval`` on a detached socket: the loop's wheel visits it
        once per interval (see :mod:`tornadose.transport.heartbeat`)."""
        interval = self.ping_interval
        if interval:
            self._ping_wheel = _heartbeat.wheel(interval)
            self._ping_slot = self._ping_wheel.add(self)

    def _heartbeat_visit(self) -> None:
        # A ping per visit; an unanswered one older than websocket_ping_timeout (default
        # the interval) at a visit ends the connection, as Tornado does.
        raw: Any = self._raw
        if raw is None or raw.is_closing():
            return
        now = raw.io_loop.time()
        timeout = self.ping_timeout
        if timeout is None:
            timeout = self.ping_interval
        if timeout and raw.ping_sent is not None and now - raw.ping_sent >= timeout:
            logger.debug("%r: no pong within %s s; closing", self, timeout)
            raw.close()
            return
        raw.ping()
        if raw.ping_sent is None:
            raw.ping_sent = now

    def _ws_closed(self, code: int | None, reason: str | None) -> None:
        """The detached socket closed (for any reason): as Tornado's on_close path."""
        if self._ping_wheel is not None:
            self._ping_wheel.discard(self, self._ping_slot)
            self._ping_wheel = None
        self.close_code = code
        self.close_reason = reason
        self.on_close()

    def _write_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                self.write_message(frame[_ws_header_size(frame):])
            except WebSocketClosedError:
                return

    def _close_stream(self) -> None:
        if self._raw is not None:
            self._raw.close()
            return
        connection = self.ws_connection
        if connection is not None:
            connection.stream.close()  # type: ignore[union-attr]

    def _tornadose_end(self, revoked: bool = False, reason: str = "store closed") -> None:
        if revoked:
            self.close(1008, "revoked")  # policy violation: the server withdrew access
        else:
            self.close(1001, reason)


def _ws_header_size(frame: bytes) -> int:
    length = frame[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10
