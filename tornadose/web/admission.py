"""Admission: a place in every store before a stream opens, or a fast 503.

Stores with ``max_subscribers`` refuse extra clients, and every store refuses new
subscribers when the process is within its descriptor headroom of ``RLIMIT_NOFILE``,
so it never accepts itself into EMFILE; the refusal carries a jittered ``Retry-After``.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Admission", "DEFAULT_FD_HEADROOM"]

# Descriptors kept free below RLIMIT_NOFILE: new subscribers are refused (503) within
# max(this, 2% of the limit) of it, so the process never accepts itself into EMFILE.
DEFAULT_FD_HEADROOM = 32


class Admission:
    """Mixed into :class:`~tornadose.web.base.BaseHandler`: reserving places."""

    _reserved: Sequence[Any] = ()

    def _reserve(self) -> bool:
        """Take a place in every target store before the stream opens, or answer 503.

        Stores with ``max_subscribers`` refuse extra clients with 503 and a jittered
        ``Retry-After``, so a reconnect storm spreads out instead of coming back at once.
        A connection to several stores gets a place in all of them or in none.
        """
        if self._near_descriptor_limit():
            for store, _ in self._targets:
                if hasattr(store, "_rejected"):
                    store._rejected += 1
            self._refuse_busy("server busy: too close to its open-files limit\n")
            return False
        reserved: list[Any] = []
        for store, _ in self._targets:
            admit = getattr(store, "_admit", None)
            if admit is None:
                continue
            if not admit():
                for taken in reserved:
                    taken._release()
                self._refuse_busy("subscriber limit reached\n")
                return False
            reserved.append(store)
        self._reserved = reserved
        return True

    def _refuse_busy(self, reason: str) -> None:
        self.set_status(503)
        self.set_header("Retry-After", str(random.randint(2, 10)))
        self.finish(reason)

    def _near_descriptor_limit(self) -> bool:
        """Whether this connection's descriptor is within the headroom of the process's
        open-files limit (``RLIMIT_NOFILE``): the kernel hands out the lowest free
        number, so a descriptor numbered n means n descriptors are open already.
        Admitting more subscribers there would leave nothing for anything else."""
        stream = getattr(self.request.connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is None:
            return False
        soft = _open_files_limit()
        if soft == resource.RLIM_INFINITY:
            return False
        headroom = self.settings.get("tornadose_fd_headroom")
        if headroom is None:
            headroom = max(DEFAULT_FD_HEADROOM, soft // 50)
        return sock.fileno() >= soft - headroom

    def _release_reservation(self) -> None:
        reserved, self._reserved = self._reserved, ()
        for store in reserved:
            store._release()


_limit_cache = [0.0, 0]  # [when read, RLIMIT_NOFILE soft limit]


def _open_files_limit() -> int:
    """The soft ``RLIMIT_NOFILE``, read from the kernel at most once a second: every
    new subscriber checks it, and a change (``setrlimit``) is rare and need not be seen
    at once."""
    now = time.monotonic()
    if now - _limit_cache[0] >= 1.0:
        _limit_cache[0] = now
        _limit_cache[1] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _limit_cache[1]
