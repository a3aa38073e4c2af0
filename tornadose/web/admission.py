"""Admission: a place in every store before a stream opens, or a fast 503.

Stores with ``max_subscribers`` refuse extra clients, and every store refuses new
subscribers when the process is within its descriptor headroom of ``RLIMIT_NOFILE``,
so it never accepts itself into EMFILE; the refusal carries a jittered ``Retry-After``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..transport import refusals
from ..transport.refusals import DEFAULT_FD_HEADROOM

__all__ = ["Admission", "DEFAULT_FD_HEADROOM"]


class Admission:
    """Mixed into :class:`~tornadose.web.base.BaseHandler`: reserving places."""

    _reserved: Sequence[Any] = ()
    # Set on a refusal of ours: its access-log record is left out (it is counted and
    # summarized per cause instead).
    _tornadose_quiet = False

    def _log(self) -> None:
        if not self._tornadose_quiet:
            super()._log()  # type: ignore[misc]

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
            self._refuse_busy(
                "server busy: too close to its open-files limit\n",
                "open-files headroom",
                f"RLIMIT_NOFILE={refusals.open_files_limit()}",
            )
            return False
        reserved: list[Any] = []
        for store, _ in self._targets:
            admit = getattr(store, "_admit", None)
            if admit is None:
                continue
            if not admit():
                for taken in reserved:
                    taken._release()
                self._refuse_busy(
                    "subscriber limit reached\n",
                    "max_subscribers",
                    f"{store!r} holds {getattr(store, 'max_subscribers', None)}",
                )
                return False
            reserved.append(store)
        self._reserved = reserved
        return True

    def _refuse_busy(self, reason: str, cause: str, detail: str) -> None:
        """Answer 503 with a jittered ``Retry-After``; the refusal is counted and
        summarized per cause (:mod:`tornadose.transport.refusals`) instead of getting
        an access-log record of its own, unless the Application setting
        ``tornadose_quiet_refusals`` is False."""
        refusals.refused(
            cause, "subscriber", detail,
            self.settings.get("tornadose_refusal_log_interval", refusals.DEFAULT_INTERVAL),
        )
        self._tornadose_quiet = self.settings.get("tornadose_quiet_refusals", True)
        self.set_status(503)
        self.set_header("Retry-After", str(random.randint(2, 10)))
        self.finish(reason)

    def _near_descriptor_limit(self) -> bool:
        """Whether this connection's descriptor is within the headroom of the process's
        open-files limit (``RLIMIT_NOFILE``, see :func:`~tornadose.transport.refusals.
        near_limit`): admitting more subscribers there would leave nothing for anything
        else."""
        stream = getattr(self.request.connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is None:
            return False
        return refusals.near_limit(sock.fileno(), self.settings.get("tornadose_fd_headroom"))

    def _release_reservation(self) -> None:
        reserved, self._reserved = self._reserved, ()
        for store in reserved:
            store._release()
