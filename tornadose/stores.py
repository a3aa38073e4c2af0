"""Data stores: where messages are submitted and from where they reach subscribers.

The public face of the stores, API-compatible with the original ``tornadose.stores``:
:class:`DataStore` (latest value) and :class:`QueueStore` (every message) live in
:mod:`tornadose.pubsub.store`, the Redis stores in :mod:`tornadose.redis`, imported
only when asked for, so that importing the stores never needs redis-py.
"""

from __future__ import annotations

from typing import Any

# Every name the original module (and earlier versions of this one) had.
from .pubsub.store import (  # noqa: F401
    DEFAULT_CAPACITY,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_WRITE_TIMEOUT,
    GAP_EVENT,
    MAX_WRITE_DELAY,
    SUBMITTED,
    BaseStore,
    DataStore,
    QueueStore,
    check_write_delay,
)

__all__ = ["GAP_EVENT", "BaseStore", "DataStore", "QueueStore", "RedisStore", "RedisStreamStore"]

_REDIS = {"RedisStore": "pubsub", "RedisStreamStore": "streams"}


def __getattr__(name: str) -> Any:
    module = _REDIS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"tornadose.redis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_REDIS))
