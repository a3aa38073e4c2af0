"""Topics over one Redis stream: the log of a ``TopicRegistry(RedisStreamStore)``.

Publishing a message of topic ``T`` is ``XADD <stream> MAXLEN ~ <maxlen> * topic T data
<message>``; every process reads the stream with ``XREAD`` into its registry's one
:class:`~tornadose.core.ring.TopicRing`, and fans out from there as a local registry does.
Event ids are the stream ids, the same in every process, so a client that reconnects to
ANY process resumes every topic of its connection exactly with the one id it kept: from
the local log when it still holds what followed, from the stream itself (``XRANGE``,
filtered to the connection's topics) when only Redis does.

All of the reading, resuming and reconnecting is :class:`RedisStreamStore`'s; the class
here only routes entries by their ``topic`` field into the registry's log, and joins
connections to the registry's fan-out with their topics. Gap notices that concern
everyone (Redis lost entries this process had not read) go into the log under a
topic every connection of the registry holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.fanout import FORMAT_WS
from ..core.frames import build_frames
from ..core.ring import TopicState
from .ids import FIELD as _FIELD
from .ids import GAP as _GAP

if TYPE_CHECKING:
    from ..core.fanout import Sink
    from ..pubsub.registry import TopicRegistry

__all__ = ["TOPIC_FIELD", "stream_log_class"]

#: The stream entry field that names an entry's topic.
TOPIC_FIELD = b"topic"


class _TopicStreamLog:
    """Mixed in before a RedisStreamStore (sub)class: its ring and fan-out are the
    registry's, and its entries carry topics."""

    _registry: TopicRegistry
    _instrumented = False  # the registry is what metrics see

    def __init__(self, registry: TopicRegistry, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        store: Any = self
        store._registry = registry
        store._ring = registry._ring
        store._fanout = registry._fanout
        store._ids = [0] * (registry._ring.capacity + 1)
        #: Every connection of the registry holds this topic: notices for everyone.
        store._everyone = TopicState("tornadose-gap")

    # -- entries in ------------------------------------------------------------------

    def _fields(self, payload: bytes, route: Any) -> dict[bytes, Any]:
        return {TOPIC_FIELD: route.encode(), _FIELD: payload}

    def _append_entry(self, text: str, raw_id: bytes, fields: dict[bytes, Any]) -> None:
        registry = self._registry
        topic = fields.get(TOPIC_FIELD)
        if topic is None:
            raise ValueError(f"no {TOPIC_FIELD.decode()!r} field")
        try:
            name = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("topic is not UTF-8") from None
        state = registry._state_for(name)  # raises TopicNameError, a ValueError
        sse, ws, size = build_frames(text, raw_id, name.encode())
        store: Any = self
        if size > store.max_message_size:
            raise ValueError(
                f"message of {size} bytes exceeds max_message_size={store.max_message_size}"
            )
        registry._append_frames(state, sse, ws, text)

    def _append_notice(self, sse: bytes, ws: bytes) -> int:
        store: Any = self
        return store._ring.add_entry(sse, ws, store._everyone)

    # -- connections -----------------------------------------------------------------

    def _start_sink(
        self, sink: Sink, cursor: int, gap: dict[str, Any] | None, resumed: bool
    ) -> None:
        registry = self._registry
        handler = registry._handlers.get(sink)
        if handler is None:
            return  # it left while its resume point was looked up
        store: Any = self
        states = registry._states_of(handler)
        if gap is not None:
            registry._gaps += 1
            gap = dict(gap, topics=sorted(topic.name for topic in handler._tornadose_topics))
            sse, ws, _ = build_frames(gap, store._live_id(), _GAP)
            registry._fanout.write_extra(sink, sse, ws)
        elif resumed:
            registry._resumed += 1
        registry._fanout.add(sink, states, cursor)

    def _write_entries(self, sink: Sink, entries: list[tuple[bytes, Any]]) -> None:
        """Write history entries of the sink's topics straight to it, as the fan-out
        would."""
        registry = self._registry
        handler = registry._handlers.get(sink)
        if handler is None:
            return
        store: Any = self
        names = {topic.name.encode() for topic in handler._tornadose_topics}
        ws_format = sink.format == FORMAT_WS
        frames = []
        for raw_id, fields in entries:
            if not fields:
                continue
            topic, data = fields.get(TOPIC_FIELD), fields.get(_FIELD)
            if data is None or topic not in names:
                continue
            try:
                sse, ws, size = build_frames(data.decode("utf-8"), raw_id, topic)
            except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError)
                continue
            if size > store.max_message_size:
                continue  # skipped live too (with a WARNING there)
            frames.append(ws if ws_format else sse)
        if not frames:
            return
        fanout = registry._fanout
        fanout.write_frames(sink, frames)
        sink.written = True
        fanout.delivered += len(frames)
        fanout.writes += 1
        store._backfilled += len(frames)


_classes: dict[type, type] = {}


def stream_log_class(store_class: type) -> type:
    """The log class of a registry backed by ``store_class`` (RedisStreamStore or a
    subclass of it)."""
    cls = _classes.get(store_class)
    if cls is None:
        cls = _classes[store_class] = type(
            f"TopicStreamLog[{store_class.__name__}]", (_TopicStreamLog, store_class), {}
        )
    return cls
