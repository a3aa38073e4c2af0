"""Redis stream ids and what a stream's history says: shared by the stream store and
the topic log over a stream.

A stream id ``<ms>-<n>`` is held as one integer (``ms << 64 | n``), so ids compare and
bisect as numbers. :func:`history_problem` tells, from ``XINFO STREAM``, whether entries
after a position were lost (trimmed, or the stream is new since).
"""

from __future__ import annotations

from typing import Any

from ..pubsub.store import GAP_EVENT

__all__ = ["FIELD", "GAP", "format_stream_id", "parse_stream_id"]

#: The ``event:`` type of gap notices, as bytes.
GAP = GAP_EVENT.encode()
#: The stream entry field that holds the message.
FIELD = b"data"
_MASK = (1 << 64) - 1


def parse_stream_id(text: str) -> int | None:
    """Return a stream id ``"<ms>-<seq>"`` as one comparable integer, or ``None`` when
    ``text`` is not exactly that (two ASCII decimal numbers below 2**64)."""
    ms, dash, seq = text.partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    if len(ms) > 20 or len(seq) > 20:
        return None
    ms_value, seq_value = int(ms), int(seq)
    if ms_value > _MASK or seq_value > _MASK:
        return None
    return ms_value << 64 | seq_value


def format_stream_id(key: int) -> bytes:
    """The stream id of an integer from :func:`parse_stream_id`."""
    return b"%d-%d" % (key >> 64, key & _MASK)


def key_of(raw: bytes) -> int:
    # An id as Redis sends it: trusted to be well-formed.
    ms, _, seq = raw.partition(b"-")
    return int(ms) << 64 | int(seq or 0)


def entries_of(reply: Any) -> list[tuple[bytes, Any]]:
    """The entries of one stream in an XREAD reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (value,) = reply.values()
        return value[0] if value and isinstance(value[0], list) else value
    return reply[0][1]


def history_problem(info: dict[str, Any] | None, after: int, upto: int = 0) -> str | None:
    """Whether entries newer than ``after`` are missing from the stream, judged from its
    ``XINFO STREAM`` (``None`` for a stream that does not exist): ``None`` when nothing
    after ``after`` was lost, ``"expired"`` when the stream was trimmed past ``after``,
    ``"restarted"`` when the stream is not the one ``after`` came from (Redis restarted
    without persistence, or the key was deleted and created again). ``upto``: the
    newest id the caller knows the stream had.

    Trimming removes the oldest entries first, so while ``after`` (or anything older)
    is still in the stream, nothing newer was trimmed. ``XDEL`` of single entries is
    not a gap: whoever deletes an entry means it.
    """
    if info is None:
        return "restarted" if max(after, upto) > 0 else None
    last = key_of(info["last-generated-id"])
    if last < after:
        return "restarted"  # ids went backwards: a new stream
    first = info.get("first-entry")
    first_key = key_of(first[0]) if first and first[0] is not None else None
    if first_key is not None and first_key <= after:
        return None
    if first_key is None and last <= after:
        return None  # nothing was ever added after `after`
    # `after` is gone and newer entries existed. Were entries removed from this stream
    # (Redis >= 7 counts every entry ever added)?
    added, length = info.get("entries-added"), info.get("length")
    if added is not None and length is not None and added == length:
        # Nothing was ever removed, yet the stream starts after `after`: it began after
        # `after` was read, unless `after` is the very beginning.
        return None if after == 0 else "restarted"
    if after == 0 and added is None:
        return None  # Redis < 7 cannot tell; the beginning is the best guess
    return "expired"
