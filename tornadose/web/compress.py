"""Compression of a subscriber's stream, when the application enables it and the client accepts.

The ``tornadose_compression`` Application setting (or a handler's ``compression``
argument, which wins) turns it on: ``True`` for the defaults, or a dict such as
``{"window_bits": 12}`` (see :class:`~tornadose.core.deflate.Compression`). Off (the
default) means exactly the bytes of an uncompressed stream.

- SSE: a client whose ``Accept-Encoding`` takes gzip gets ``Content-Encoding: gzip``,
  one gzip stream for the life of the response (every write ends with a sync flush);
  responses of a compressing handler all carry ``Vary: Accept-Encoding``.
- WebSocket: permessage-deflate when the client offers it (see
  :mod:`tornadose.transport.permessage`), on the detached path.

Compression applies to the fast path: a handler that publishes itself (overrides
``publish``) writes through Tornado as before, uncompressed.
"""

from __future__ import annotations

from typing import Any

from ..core.deflate import GZIP, Compression, Deflater, compression_options
from ..transport.permessage import Agreement, negotiate

__all__ = ["Compressing", "accepts_gzip"]

# id(setting) -> (the setting, what it means): a setting is read once per new
# connection, and parsing a dict each time would cost more than the check.
_PARSED: dict[int, tuple[Any, Compression | None]] = {}


def _options(value: Any) -> Compression | None:
    cached = _PARSED.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    options = compression_options(value)
    if len(_PARSED) > 64:
        _PARSED.clear()
    _PARSED[id(value)] = (value, options)
    return options


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (``gzip``, ``x-gzip`` or
    ``*``, with a quality above 0)."""
    if not header:
        return False
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if name.lower() not in ("gzip", "x-gzip", "*"):
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


class Compressing:
    """Mixed into the subscriber handlers: their compression setting and codecs."""

    _compression_arg: Any = None
    # The connection's compressed stream (SSE), once it has one.
    _codec: Deflater | None = None

    def _set_compression(self, value: Any) -> None:
        """Keep a handler's ``compression`` argument; raises ``TypeError`` or
        ``ValueError`` at once for a bad one."""
        if value is not None:
            _options(value)
            self._compression_arg = value

    def _compression(self) -> Compression | None:
        value = self._compression_arg
        if value is None:
            value = self.settings.get("tornadose_compression")  # type: ignore[attr-defined]
        return _options(value)

    def _sse_codec(self) -> Deflater | None:
        """The gzip stream of this response, when enabled and the client accepts it
        (the response headers say so); otherwise ``None``."""
        options = self._compression()
        if options is None:
            return None
        handler: Any = self
        handler._headers.add("Vary", "Accept-Encoding")
        if not accepts_gzip(handler.request.headers.get("Accept-Encoding")):
            return None
        handler._headers["Content-Encoding"] = "gzip"
        self._codec = options.deflater(GZIP)
        return self._codec

    def _ws_agreement(self) -> Agreement | None:
        """permessage-deflate for this upgrade, when enabled and offered."""
        options = self._compression()
        if options is None:
            return None
        headers = self.request.headers  # type: ignore[attr-defined]
        offers = headers.get_list("Sec-WebSocket-Extensions")
        return negotiate(",".join(offers), options.window_bits) if offers else None
