"""The Redis adapters, on top of the stores: a real Redis server, never a broker of ours.

``client`` (what both Redis stores share: connections, publishing, reconnecting),
``pubsub`` (``RedisStore``, over pub/sub), ``ids`` (stream ids and history checks),
``streams`` (``RedisStreamStore``, over Redis Streams, resumable on any process) and
``topics`` (a ``TopicRegistry``'s log over one stream). Importing them needs no
redis-py; using them does.
"""
