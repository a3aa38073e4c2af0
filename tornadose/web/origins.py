"""Origins: which pages may open a stream (SSE CORS, WebSocket origin checks).

The handler's ``allowed_origins``, else the Application's ``tornadose_allowed_origins``;
by default same-origin only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Origins"]

class Origins:
    """Mixed into :class:`~tornadose.web.base.BaseHandler`: the allowed origins."""

    _origins: frozenset[str] | str | None = None

    def _set_origins(self, allowed_origins: Sequence[str] | str | None) -> None:
        if allowed_origins is not None:
            self._origins = _check_origins(allowed_origins)

    def _allowed_origins(self) -> frozenset[str] | str | None:
        """The handler's ``allowed_origins``, else the Application's
        ``tornadose_allowed_origins``; None when neither is set."""
        if self._origins is not None:
            return self._origins
        setting = self.settings.get("tornadose_allowed_origins")
        if setting is None:
            return None
        # Checked once per Application, not per request.
        app: Any = self.application
        checked = getattr(app, "_tornadose_origins", None)
        if checked is None or checked[0] is not setting:
            checked = app._tornadose_origins = (setting, _check_origins(setting))
        return checked[1]

    @staticmethod
    def _origin_in(origin: str, origins: frozenset[str] | str) -> bool:
        return origins == "*" or origin.lower() in origins

    def _grant_cors(self, preflight: bool = False) -> None:
        """CORS for a cross-origin EventSource (``withCredentials`` too): the request's
        Origin echoed back when it is allowed, nothing otherwise."""
        origins = self._allowed_origins()
        if origins is None:
            return
        self.add_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if not origin or not self._origin_in(origin, origins):
            return
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Access-Control-Allow-Credentials", "true")
        if preflight:
            self.set_header("Access-Control-Allow-Methods", "GET")
            asked = self.request.headers.get("Access-Control-Request-Headers")
            if asked:
                self.set_header("Access-Control-Allow-Headers", asked)
            self.set_header("Access-Control-Max-Age", "600")


def _check_origins(origins: Sequence[str] | str) -> frozenset[str] | str:
    """``"*"``, or the origins (``scheme://host[:port]``) in lower case. Raises
    ``TypeError`` for anything else."""
    if origins == "*":
        return "*"
    if isinstance(origins, str) or not all(isinstance(o, str) and "://" in o for o in origins):
        raise TypeError(
            f'allowed origins must be "*" or a list of origins like "https://example.com", '
            f"got {origins!r}"
        )
    return frozenset(origin.lower().rstrip("/") for origin in origins)
