"""Topics: many named streams on one connection, as views of ONE log.

The public face of the topics: :class:`TopicRegistry` (:mod:`tornadose.pubsub.registry`,
whose documentation tells how topics, kinds and resuming with one id work), its
:class:`Topic` objects, topic names and their errors (:mod:`tornadose.pubsub.names`).
"""

from __future__ import annotations

from .pubsub.names import (
    DEFAULT_MAX_TOPICS,
    DEFAULT_MAX_TOPICS_PER_SUBSCRIBER,
    TOPIC_PATTERN,
    TopicError,
    TopicLimitError,
    TopicNameError,
    UnknownTopicError,
    check_topic_name,
)
from .pubsub.registry import TopicRegistry
from .pubsub.topic import Topic

__all__ = [
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_MAX_TOPICS_PER_SUBSCRIBER",
    "TOPIC_PATTERN",
    "Topic",
    "TopicError",
    "TopicLimitError",
    "TopicNameError",
    "TopicRegistry",
    "UnknownTopicError",
    "check_topic_name",
]
