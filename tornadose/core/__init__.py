"""The core, layers 1-3: frames, the log, the fan-out engine and what they need.

``frames`` (a message serialized once into its SSE event and WebSocket frame), ``ring``
(the bounded log of those frames, one sequence for all topics), ``fanout`` (the hot
flush pass and its writes), ``engine`` (the one fan-out engine: joining, leaving,
catching up), ``drain`` (waiting for a full socket), ``backend`` (which twin runs) and
``instruments`` (counters the metrics read). Nothing here imports the layers above.
"""
