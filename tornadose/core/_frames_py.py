"""Frame building, pure-Python backend: a message becomes wire bytes exactly once.

A message is turned into two values: the *payload* (the text an SSE client sees as
``event.data``) and its *JSON* (the value a WebSocket client finds under ``"data"``).
``str`` is sent as its UTF-8 text, ``bytes`` must already be UTF-8 text, anything else
goes through orjson. From these, ready-to-write SSE events and RFC 6455 text frames are
built, so fan-out never formats per subscriber.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import orjson

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# Per the HTML spec a line ends at CRLF, lone CR or lone LF. Each payload line becomes
# its own ``data:`` field, so no byte of a payload can start a field of its own.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_WS_DATA_OPEN = b'{"data":'
_WS_TEXT_FIN = 0x81


def encode_message(message: Any) -> tuple[bytes, bytes]:
    """Return ``(payload, json)`` for ``message``.

    Raises ``ValueError`` for text that cannot be UTF-8 (lone surrogates) or bytes that
    are not valid UTF-8, and ``TypeError`` for an object orjson cannot serialize.
    """
    if isinstance(message, str):
        try:
            payload = message.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"message is not encodable as UTF-8: {exc}") from None
        return payload, orjson.dumps(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        payload = bytes(message)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"bytes message is not valid UTF-8: {exc}") from None
        return payload, orjson.dumps(text)
    try:
        payload = orjson.dumps(message, option=_JSON_OPTIONS)
    except TypeError as exc:
        raise TypeError(
            f"cannot serialize message of type {type(message).__name__!r} to JSON: {exc}"
        ) from None
    return payload, payload


def sse_event(payload: bytes, event_id: bytes | None = None, event: bytes | None = None) -> bytes:
    """Return one complete SSE event (ending with the blank line) carrying ``payload``.

    ``event_id`` and ``event`` are written as ``id:`` and ``event:`` fields; the caller
    guarantees they hold no CR, LF or NUL. Payload line ends (CR, LF, CRLF) each start a
    new ``data:`` line, which a conforming client joins back with LF.
    """
    head = b""
    if event_id is not None:
        head = b"id: " + event_id + b"\n"
    if event is not None:
        head += b"event: " + event + b"\n"
    if b"\n" not in payload and b"\r" not in payload:
        return head + b"data: " + payload + b"\n\n"
    lines = _LINE_END.split(payload)
    return head + b"data: " + b"\ndata: ".join(lines) + b"\n\n"


def ws_text_frame(body: bytes) -> bytes:
    """Return an unmasked, final RFC 6455 text frame holding ``body``."""
    n = len(body)
    if n < 126:
        return bytes((_WS_TEXT_FIN, n)) + body
    if n < 0x10000:
        return struct.pack("!BBH", _WS_TEXT_FIN, 126, n) + body
    return struct.pack("!BBQ", _WS_TEXT_FIN, 127, n) + body


def ws_data_body(json_value: bytes, event_id: bytes | None = None, event: bytes | None = None) -> bytes:
    """Return the JSON object ``{"id": ..., "event": ..., "data": <json_value>}`` as bytes.

    ``id`` and ``event`` appear only when given; ``event_id`` must need no JSON escaping
    (the stores' ids are ASCII letters, digits and dashes).
    """
    if event_id is None and event is None:
        return _WS_DATA_OPEN + json_value + b"}"
    head = b'{"id":"' + event_id + b'",' if event_id is not None else b"{"
    if event is not None:
        head += b'"event":' + orjson.dumps(event.decode()) + b","
    return head + b'"data":' + json_value + b"}"


def build_frames(
    message: Any, event_id: bytes | None = None, event: bytes | None = None
) -> tuple[bytes, bytes, int]:
    """Serialize ``message`` once into ``(sse_event, ws_frame, payload_size)``.

    The WebSocket frame holds ``{"id": event_id, "event": event, "data": message}``
    (``id``/``event`` only when given). Raises what :func:`encode_message` raises.
    """
    payload, json_value = encode_message(message)
    return (
        sse_event(payload, event_id, event),
        ws_text_frame(ws_data_body(json_value, event_id, event)),
        len(payload),
    )
