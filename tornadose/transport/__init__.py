"""Layer 4, the transport: sockets and bytes, nothing of stores or topics.

``rawstream`` (an open stream's socket detached from Tornado), ``wsproto`` (RFC 6455
frames, sans I/O), ``websocket`` (the detached WebSocket stream and its handshake),
``http`` (the response head and access log), ``heartbeat`` (one timer wheel per loop)
and ``server`` (``listen``/``make_server``: the accept loop for high fan-out).
"""
