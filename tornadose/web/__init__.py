"""Layer 6, the Tornado glue: request handlers, split by concern.

``base`` (``BaseHandler``: subscribing, the generic path), ``admission`` (places,
descriptor headroom, 503), ``origins`` (CORS and WebSocket origins), ``detach``
(leaving Tornado once a stream is open), ``sse`` (``EventSource``), ``websocket``
(``WebSocketSubscriber``) and ``topic_handlers`` (``TopicEventSource``,
``TopicWebSocketSubscriber``). :mod:`tornadose.handlers` re-exports them.
"""
