"""Layer 5: stores and topic registries over the core.

``store`` (``BaseStore``, ``DataStore``, ``QueueStore``: a store is a log of one
topic), ``names`` (topic names and topic errors) and ``registry`` (``TopicRegistry``:
many topics over one log). Public names are re-exported by :mod:`tornadose.stores`
and :mod:`tornadose.topics`; adapters (Redis) build on this package, never the reverse.
"""
