"""One topic of a registry, as a publisher sees it."""

from __future__ import annotations

from typing import Any

from ..core.ring import TopicState

__all__ = ["Topic"]


class Topic:
    """One topic of a :class:`TopicRegistry`, as a publisher sees it.

    ``submit(message)`` publishes to it (called plainly or awaited, as a store's);
    ``data`` is the current value of a latest-value topic; ``subscribers`` the handlers
    subscribed to it now; ``stats()`` its counters.
    """

    __slots__ = ("registry", "name", "_state", "_event", "_data", "_messages")

    def __init__(self, registry: Any, name: str) -> None:
        self.registry = registry
        self.name = name
        self._state = TopicState(name)
        self._event = name.encode()
        self._data: Any = None
        self._messages = 0

    @property
    def event(self) -> str:
        """The SSE ``event:`` type of its messages: the topic's name."""
        return self.name

    def submit(self, message: Any) -> Any:
        """Publish ``message`` to this topic; see :meth:`TopicRegistry.submit`."""
        return self.registry._publish(self, message)

    @property
    def data(self) -> Any:
        """The newest message, as given (``None`` before the first, and on queue topics
        only the newest too: the registry keeps no copy of older ones)."""
        return self._data

    @property
    def subscribers(self) -> set[Any]:
        """The handlers subscribed to this topic now."""
        handlers = self.registry._handlers
        return {handlers[sink] for sink in self._state.subs if sink in handlers}

    def stats(self) -> dict[str, int]:
        """``subscribers`` (connections subscribed now) and ``messages`` submitted."""
        return {"subscribers": len(self._state.subs), "messages": self._messages}

    def __repr__(self) -> str:
        return f"<Topic {self.name!r} of {self.registry!r}>"
