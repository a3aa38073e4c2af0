"""permessage-deflate (RFC 7692) on the detached WebSocket path: the offer, and what comes in.

:func:`negotiate` picks the first offer of a ``Sec-WebSocket-Extensions`` header that
this server can honour and says what to answer. The answer always carries
``client_no_context_takeover`` (RFC 7692 section 7.1.1.2 lets a server add it): each
message a client sends is then decoded on its own, so a connection keeps no inflate
state between its rare subscribe requests. The server's own stream keeps its context
unless the client asked for ``server_no_context_takeover``, and uses at most the
window the client allowed (``server_max_window_bits``, echoed only when offered: some
clients close on an unrequested one).

:func:`inflate` decodes one compressed message within a size limit.
"""

from __future__ import annotations

import re
import zlib
from typing import NamedTuple

__all__ = ["Agreement", "InflateError", "inflate", "negotiate"]

_BITS = re.compile(r"(?:8|9|1[0-5])\Z")
_TRAILER = b"\x00\x00\xff\xff"


class Agreement(NamedTuple):
    """A negotiated permessage-deflate: the header value to answer with, the window the
    server compresses with, and whether it keeps its context between messages."""

    response: str
    window_bits: int
    context: bool


def negotiate(header: str | None, window_bits: int) -> Agreement | None:
    """The agreement for the first acceptable permessage-deflate offer in ``header``
    (the request's ``Sec-WebSocket-Extensions``, all its lines joined with commas),
    compressing with at most ``window_bits``; ``None`` when nothing is offered or
    nothing offered is acceptable (an unknown or repeated parameter, a bad value, a
    window below 9 bits, which deflate encoders cannot keep to)."""
    if not header:
        return None
    for offer in header.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        agreed = _accept(params, window_bits)
        if agreed is not None:
            return agreed
    return None


def _accept(params: list[str], window_bits: int) -> Agreement | None:
    seen: dict[str, str | None] = {}
    for param in params:
        key, sep, value = param.partition("=")
        key = key.strip().lower()
        value = value.strip().strip('"') if sep else None
        if key in seen or key not in (
            "server_no_context_takeover", "client_no_context_takeover",
            "server_max_window_bits", "client_max_window_bits",
        ):
            return None
        if key.endswith("takeover") and value is not None:
            return None
        if key == "server_max_window_bits" and (value is None or not _BITS.match(value)):
            return None
        if key == "client_max_window_bits" and value is not None and not _BITS.match(value):
            return None
        seen[key] = value
    answer = ["permessage-deflate"]
    context = "server_no_context_takeover" not in seen
    if not context:
        answer.append("server_no_context_takeover")
    answer.append("client_no_context_takeover")
    bits = window_bits
    if "server_max_window_bits" in seen:
        offered = int(seen["server_max_window_bits"])  # type: ignore[arg-type]
        if offered < 9:
            return None
        bits = min(bits, offered)
        answer.append(f"server_max_window_bits={bits}")
    return Agreement("; ".join(answer), bits, context)


class InflateError(Exception):
    """A compressed message could not be decoded; ``code`` is the close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def inflate(payload: bytes, max_size: int) -> bytes:
    """Decode one message compressed without context (as :func:`negotiate` asks of
    clients). Raises :class:`InflateError`: 1009 when it decodes to more than
    ``max_size`` bytes (decoding stops there), 1007 when it is not valid deflate data."""
    decoder = zlib.decompressobj(-15)
    try:
        data = decoder.decompress(payload + _TRAILER, max_size + 1)
    except zlib.error as exc:
        raise InflateError(1007, f"compressed message is not valid deflate data ({exc})") from None
    if len(data) > max_size:
        raise InflateError(1009, f"message larger than {max_size} bytes")
    return data
