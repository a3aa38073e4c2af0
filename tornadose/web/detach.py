"""Detaching: once a stream is open, its socket leaves Tornado for a bare stream.

Tornado keeps ~10 KB and ~70 objects per connection for the life of a stream; a
fast-path handler whose class overrides none of the lifecycle hooks hands its socket to
:class:`~tornadose.transport.rawstream.RawStream` and lets the rest go (see
:meth:`Detaching._shed`).
"""

from __future__ import annotations

import socket
from typing import Any

from ..transport import http as _http
from ..transport.rawstream import can_take_over
from .admission import Admission

__all__ = ["Detaching"]

# Tornado's response state of a handler (RequestHandler and WebSocketHandler, 6.x), and
# ours that only opening the stream needs: dropped once a stream is detached (see
# BaseHandler._shed). Everything else stays: the request, the application's attributes.
_RESPONSE_STATE = (
    "ui", "_headers", "_write_buffer", "_transforms", "_headers_written", "_reason",
    "_xsrf_token", "_locale", "_active_modules", "_new_cookie", "open_args",
    "open_kwargs", "_outbox", "_draining", "_retry", "_heartbeat_interval",
    "_tornadose_last_event_id", "_reserved",
)


class Detaching:
    """Mixed into :class:`~tornadose.web.base.BaseHandler`: leaving Tornado."""

    def _detachable(self, base: type) -> bool:
        """Whether this connection's stream may leave Tornado once open: a fast-path
        handler whose class overrides none of ``base``'s lifecycle hooks, on a plain-TCP
        HTTP/1 connection, unless the Application setting ``tornadose_detach_streams``
        is False."""
        if not self.settings.get("tornadose_detach_streams", True):
            return False
        if self._overrides(base, "publish", "submit", *self._DETACH_HOOKS):
            return False
        connection = self.request.connection
        if not hasattr(connection, "detach") or not can_take_over(
            getattr(connection, "stream", None)
        ):
            return False
        # Stores of this package write frames to the socket themselves; any other
        # store calls publish(), which needs Tornado's connection.
        for store, _ in self._targets:
            if not hasattr(store, "_write_extra"):
                return False
        return True

    def _track(self, stream: Any) -> None:
        # A tornadose server (listen/make_server) ends detached streams in its
        # close_all_connections(), as Tornado ends the connections it still serves.
        server = getattr(stream, "_tornadose_server", None)
        if server is not None:
            server._tornadose_detached.add(self)

    def _shed(self) -> None:
        """Let go of what only answering the request needed once the stream is
        detached: Tornado's HTTP connection objects (and with them its IOStream and
        the task serving the connection), the response state, the UI namespace. What
        Tornado's ``_execute`` still reads once ``get()`` returns stays
        (``_auto_finish``, ``_finished``, ``_prepared_future``), and so does the
        request (``self.request``, ``get_argument()``, ``current_user`` work as
        before, for ``disconnect()`` predicates) and every attribute the application
        set; ``request.connection`` is None from here on."""
        request = self.request
        request.connection = None
        request.server_connection = None
        pop = self.__dict__.pop
        for name in _RESPONSE_STATE:
            pop(name, None)

    def _log_opened(self) -> None:
        # Tornado logs a request when it finishes; a detached stream is logged as it
        # opens, as Tornado logs a WebSocket's upgrade. Formatting the line is skipped
        # when nothing would write it (the usual production setting).
        if type(self)._log is not Admission._log or _http.logs_success(self.application):
            self._log()

    def _set_nodelay(self, stream: Any) -> None:
        # Writes are coalesced here, one per connection per loop turn: Nagle's
        # algorithm would only hold them back for the client's delayed ACK.
        # A tornadose server's connections may have it already, from their listener.
        server = getattr(stream, "_tornadose_server", None)
        if server is not None and server._tornadose_nodelay:
            return
        if self.settings.get("tornadose_tcp_nodelay", True) and stream.socket is not None:
            try:
                # Straight to the socket: IOStream.set_nodelay first asks for the
                # socket's family, which costs more than this call.
                stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the client is gone, or not a TCP socket (a Unix socket)
