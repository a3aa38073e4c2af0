"""Refusals: counted per cause, logged once per cause per interval, answered cheaply.

A server that refuses connections (its open-files headroom is reached, a store is at
``max_subscribers``, a WebSocket sends requests too fast) does so exactly when an
operator needs a readable log: a reconnect storm against a full server is thousands of
refusals a second. Each refusal is counted here (:func:`counts`, read by
:mod:`tornadose.metrics`), and logged as ONE WARNING when its cause starts, then at
most one summary per cause per interval (``"refused 4,211 subscribers in the last 10 s:
open-files headroom (RLIMIT_NOFILE=512)"``) while it goes on; never an access-log record
per refusal. :func:`shed` answers a connection with a minimal ``503`` straight on its
socket, before any request or handler exists, and :func:`open_files_limit` and
:func:`near_limit` tell when that is due.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import socket
import time
from typing import Any

from tornado.ioloop import IOLoop

__all__ = [
    "DEFAULT_FD_HEADROOM",
    "DEFAULT_INTERVAL",
    "counts",
    "near_limit",
    "open_files_limit",
    "refused",
    "shed",
]

logger = logging.getLogger("tornadose.refusals")

#: Seconds between two summaries of one cause (Application setting
#: ``tornadose_refusal_log_interval``).
DEFAULT_INTERVAL = 10.0
# Descriptors kept free below RLIMIT_NOFILE: new connections are refused (503) within
# max(this, 2% of the limit) of it, so the process never accepts itself into EMFILE.
DEFAULT_FD_HEADROOM = 32

# cause -> refusals since the process started
_totals: dict[str, int] = {}
# cause and detail -> [refusals not logged yet, what they are, cause, detail, interval,
# when its summary is due], while a window is open
_windows: dict[str, list[Any]] = {}


def counts() -> dict[str, int]:
    """Refusals per cause since the process started (``"open-files headroom"``,
    ``"max_subscribers"``, ``"request rate"``)."""
    return dict(_totals)


def refused(cause: str, what: str = "subscriber", detail: str = "",
            interval: float = DEFAULT_INTERVAL) -> None:
    """Count one refusal of ``cause``. The first of a quiet spell is logged at once;
    the rest are summed and logged once per ``interval`` seconds for as long as they
    go on (needs a running IOLoop to summarize; counts regardless)."""
    _totals[cause] = _totals.get(cause, 0) + 1
    suffix = f" ({detail})" if detail else ""
    key = cause + suffix
    window = _windows.get(key)
    now = time.monotonic()
    if window is not None and now < window[5] + interval:
        window[0] += 1
        return
    # No window, or one whose summary never came (its loop is gone): news again.
    logger.warning(
        "tornadose: refusing %ss: %s%s; further refusals are summarized every %g s",
        what, cause, suffix, interval,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread: nothing could sum up later
        return
    _windows[key] = [0, what, cause, suffix, interval, now + interval]
    IOLoop.current().call_later(interval, _summarize, key)


def _summarize(key: str) -> None:
    window = _windows.get(key)
    if window is None:
        return
    count, what, cause, suffix, interval, _ = window
    if not count:
        del _windows[key]  # the cause has stopped: the next refusal is news again
        return
    logger.warning(
        "tornadose: refused %s %s%s in the last %g s: %s%s",
        f"{count:,}", what, "" if count == 1 else "s", interval, cause, suffix,
    )
    window[0] = 0
    window[5] = time.monotonic() + interval
    IOLoop.current().call_later(interval, _summarize, key)


_limit_cache = [0.0, 0]  # [when read, RLIMIT_NOFILE soft limit]


def open_files_limit() -> int:
    """The soft ``RLIMIT_NOFILE``, read from the kernel at most once a second: every
    new connection checks it, and a change (``setrlimit``) is rare and need not be seen
    at once."""
    now = time.monotonic()
    if now - _limit_cache[0] >= 1.0:
        _limit_cache[0] = now
        _limit_cache[1] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _limit_cache[1]


def near_limit(fd: int, headroom: int | None = None) -> bool:
    """Whether descriptor ``fd`` is within ``headroom`` (default: max(32, 2% of the
    limit)) of the open-files limit: the kernel hands out the lowest free number, so a
    descriptor numbered n means n descriptors are open already."""
    soft = open_files_limit()
    if soft == resource.RLIM_INFINITY:
        return False
    if headroom is None:
        headroom = max(DEFAULT_FD_HEADROOM, soft // 50)
    return fd >= soft - headroom


_SHED_BODY = b"server busy: too close to its open-files limit\n"
# The whole answer, one per Retry-After from 2 to 10 s (jittered, so that refused
# clients do not all come back at once), built once.
_SHED_ANSWERS = tuple(
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: %d\r\nConnection: close\r\n\r\n%b"
    % (len(_SHED_BODY), retry, _SHED_BODY)
    for retry in range(2, 11)
)
# A just-accepted socket is blocking; each call says it must not wait (no fcntl pair).
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
# How long a shed connection may take to send its request and read the answer before
# its socket is closed anyway (closing with its request unread would reset it, and
# the client could lose the 503).
SHED_LINGER = 1.0


def shed(sock: socket.socket, io_loop: IOLoop | None = None) -> None:
    """Answer a just-accepted connection with ``503 Service Unavailable`` (a jittered
    ``Retry-After``, ``Connection: close``) in one ``send()``, without building a
    request, and close it once its request is read: closing with bytes of it unread
    would reset the connection, and the client could lose the answer. When the request
    has not arrived yet, the socket waits for it (at most :data:`SHED_LINGER` seconds,
    or until the client closes). Never raises."""
    try:
        if not _DONTWAIT:
            sock.setblocking(False)
        sock.send(_SHED_ANSWERS[int(random.random() * len(_SHED_ANSWERS))], _DONTWAIT)
        if _read_request(sock, b""):
            sock.close()  # the usual case in a storm: the request came with the connection
            return
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    loop = io_loop or IOLoop.current()
    fd = sock.fileno()
    state: list[Any] = [None, b""]

    def done() -> None:
        if state[0] is not None:
            loop.remove_timeout(state[0])
            state[0] = None
        loop.remove_handler(fd)
        sock.close()

    def readable(_fd: Any, _events: int) -> None:
        try:
            state[1] = _read_request(sock, state[1])
        except OSError:
            state[1] = True  # gone (EOF, reset): nothing left to wait for
        if state[1] is True:
            done()

    loop.add_handler(fd, readable, IOLoop.READ)
    state[0] = loop.call_later(SHED_LINGER, done)


def _read_request(sock: socket.socket, tail: bytes) -> Any:
    """Read what ``sock`` has; ``True`` once the end of the request's head went by (or
    the peer closed), else the last bytes read (the end may straddle two reads). Raises
    ``OSError`` for a reset."""
    while True:
        try:
            data = sock.recv(4096, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return tail
        if not data:
            return True
        tail = tail[-3:] + data
        if b"\r\n\r\n" in tail:
            return True
