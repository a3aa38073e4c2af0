"""Request handlers that push a store's messages to connected clients.

The public face of the handlers, API-compatible with the original ``tornadose.handlers``:
:class:`EventSource` and :class:`WebSocketSubscriber` registered with a
:class:`~tornadose.stores.DataStore` or :class:`~tornadose.stores.QueueStore` take the
fast path (the store writes pre-built frames straight to their connection); everywhere
else (a custom store, a subclass that overrides ``publish`` or ``submit``) they take the
generic path the original documents. :class:`TopicEventSource` and
:class:`TopicWebSocketSubscriber` subscribe one connection to several topics of a
:class:`~tornadose.topics.TopicRegistry`. They live in :mod:`tornadose.web`, one module
per concern.
"""

from __future__ import annotations

from .transport.http import access_log_without

# Every name the original module (and earlier versions of this one) had.
from .web.admission import DEFAULT_FD_HEADROOM  # noqa: F401
from .web.base import DEFAULT_OUTBOX_LIMIT, BaseHandler  # noqa: F401
from .web.sse import (  # noqa: F401
    DEFAULT_SSE_HEARTBEAT_INTERVAL,
    DEFAULT_SSE_RETRY,
    DEFAULT_SSE_RETRY_JITTER,
    EventSource,
)
from .web.topic_handlers import (  # noqa: F401
    DEFAULT_WS_REQUESTS_PER_SECOND,
    ERROR_EVENT,
    SUBSCRIBED_EVENT,
    TopicEventSource,
    TopicWebSocketSubscriber,
)
from .web.websocket import DEFAULT_WS_MAX_INCOMING, WebSocketSubscriber  # noqa: F401

__all__ = [
    "BaseHandler",
    "access_log_without",
    "EventSource",
    "TopicEventSource",
    "TopicWebSocketSubscriber",
    "WebSocketSubscriber",
]
