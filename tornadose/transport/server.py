"""Serving: an HTTP server that lives through running out of file descriptors.

A high-fan-out server holds one descriptor per subscriber, so it meets its open-files
limit (``RLIMIT_NOFILE``) sooner than most. Tornado's accept loop then raises ``EMFILE``
every time the listening socket is readable: the event loop logs a traceback per turn
and spins a core, while the subscribers it already has pay for it. The accept loop here
backs off instead (5 ms, doubling up to 1 s, as Go's net/http does), logs ONE warning
per episode naming the limit, and resumes by itself when descriptors free up; the
connections waiting meanwhile stay in the kernel's listen backlog.

:func:`listen` is the documented way to serve: a large listen backlog (4096; the kernel
caps it at ``net.core.somaxconn``) so that a reconnect storm does not drop SYNs, and the
accept loop above. :func:`make_server` gives the same server for ``bind_sockets`` +
``fork_processes`` setups.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import sys
import weakref
from collections.abc import Iterable
from typing import Any, Callable

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.web import Application

from . import refusals

__all__ = ["DEFAULT_BACKLOG", "listen", "make_server"]

logger = logging.getLogger("tornadose.server")

#: The listen backlog :func:`listen` asks for.
DEFAULT_BACKLOG = 4096
# Accept errors that mean "no descriptor (or memory) for a new connection right now".
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_MIN = 0.005
_BACKOFF_MAX = 1.0
# Connections accepted per readable event at most, so that a flood of them cannot
# starve the subscribers' writes (Tornado uses its default backlog, 128).
_ACCEPT_BATCH = 128


def listen(
    app: Application,
    port: int,
    address: str = "",
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    **server_kwargs: Any,
) -> HTTPServer:
    """Serve ``app`` on ``port`` (``address``: all interfaces by default) and return the
    server, as ``app.listen()`` does, with a listen backlog of ``backlog`` and an accept
    loop that survives ``EMFILE``/``ENFILE`` (see the module). ``server_kwargs`` go to
    ``HTTPServer`` (``xheaders``, ``ssl_options``, ``idle_connection_timeout``...).
    Raises ``OSError`` when the address cannot be bound."""
    server = make_server(app, **server_kwargs)
    server.add_sockets(bind_sockets(port, address or None, backlog=backlog, reuse_port=reuse_port))
    return server


def make_server(app: Application, **server_kwargs: Any) -> HTTPServer:
    """An ``HTTPServer`` for ``app`` whose ``add_sockets`` uses the accept loop of this
    module: for ``bind_sockets`` + ``fork_processes`` setups, where :func:`listen` does
    not fit (bind with ``backlog=DEFAULT_BACKLOG``)."""
    return _Server(app, **server_kwargs)


class _Server(HTTPServer):
    """Tornado's HTTPServer with the accept loop of this module, which also ends the
    streams its handlers detached (see ``tornadose.transport.rawstream``) in
    :meth:`close_all_connections`: Tornado no longer knows them."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._tornadose_detached: weakref.WeakSet[Any] = weakref.WeakSet()
        # Whether every connection arrives with TCP_NODELAY already set, inherited from
        # its listening socket (Linux copies it to accepted sockets): the handlers,
        # which want it on every subscriber socket (``tornadose_tcp_nodelay``), then
        # skip one setsockopt() per new subscriber.
        app = self.request_callback
        self._tornadose_nodelay = sys.platform.startswith("linux") and (
            isinstance(app, Application) and app.settings.get("tornadose_tcp_nodelay", True)
        )

    def handle_stream(self, stream: Any, address: Any) -> None:
        # Read by a handler: where to register a detached stream, whether the socket
        # has TCP_NODELAY from its listener.
        stream._tornadose_server = self
        super().handle_stream(stream, address)

    async def close_all_connections(self) -> None:
        """Close every connection, SSE streams and WebSockets included (SSE responses
        end with their terminating chunk, WebSockets close with 1001)."""
        await super().close_all_connections()
        for handler in list(self._tornadose_detached):
            handler._tornadose_end(reason="server stopping")

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            if self._tornadose_nodelay and not _listen_nodelay(sock):
                self._tornadose_nodelay = False
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_loop(sock, self._accept)

    def _accept(self, connection: socket.socket, address: Any) -> None:
        # Within the descriptor headroom a connection is answered 503 straight on its
        # socket: no request, no handler, no access-log record (the refusal is counted
        # and summarized per cause).
        settings = getattr(self.request_callback, "settings", {})
        if refusals.near_limit(connection.fileno(), settings.get("tornadose_fd_headroom")):
            refusals.refused(
                "open-files headroom", "connection",
                f"RLIMIT_NOFILE={refusals.open_files_limit()}",
                settings.get("tornadose_refusal_log_interval", refusals.DEFAULT_INTERVAL),
            )
            refusals.shed(connection)
            return
        self._handle_connection(connection, address)


def accept_loop(
    sock: socket.socket, callback: Callable[[socket.socket, Any], None]
) -> Callable[[], None]:
    """Accept connections on ``sock`` and pass each to ``callback(connection, address)``,
    like ``tornado.netutil.add_accept_handler``, but pause with a growing delay instead
    of failing when no descriptor is left. Returns the function that stops it."""
    io_loop = IOLoop.current()
    state = {"stopped": False, "paused": False, "delay": _BACKOFF_MIN, "episode": False}

    def on_readable(fd: Any, events: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            if state["stopped"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                pause(exc)
                return
            if state["episode"]:
                state["episode"] = False
                logger.info("tornadose: accepting connections again on %s", _name(sock))
            state["delay"] = _BACKOFF_MIN
            callback(connection, address)

    def pause(exc: OSError) -> None:
        if not state["episode"]:
            state["episode"] = True
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            logger.warning(
                "tornadose: cannot accept connections on %s: %s (open-files limit "
                "RLIMIT_NOFILE=%d); pausing accept, new connections wait in the listen "
                "backlog until descriptors free up",
                _name(sock),
                exc.strerror,
                soft,
            )
        io_loop.remove_handler(sock)
        state["paused"] = True
        io_loop.call_later(state["delay"], resume)
        state["delay"] = min(state["delay"] * 2, _BACKOFF_MAX)

    def resume() -> None:
        if state["stopped"] or not state["paused"]:
            return
        state["paused"] = False
        io_loop.add_handler(sock, on_readable, IOLoop.READ)

    def stop() -> None:
        state["stopped"] = True
        if not state["paused"]:
            io_loop.remove_handler(sock)

    io_loop.add_handler(sock, on_readable, IOLoop.READ)
    return stop


def _listen_nodelay(sock: socket.socket) -> bool:
    """Set TCP_NODELAY on a listening socket, for the connections it accepts to inherit;
    True when they will have it or do not need it (a Unix socket)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except (OSError, ValueError):
        return "a listening socket"
    return f"{host}:{port}"
