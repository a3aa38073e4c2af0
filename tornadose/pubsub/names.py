"""Topic names, the errors a topic request can get, and the registry's default limits.

A topic name is 1 to 64 characters from ``A-Z a-z 0-9 . _ : -`` starting with a letter
or a digit, so it needs no escaping in a URL, an SSE ``event:`` field or JSON; names a
browser's EventSource gives a meaning of its own, and this package's notices, are
reserved.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_MAX_TOPICS_PER_SUBSCRIBER",
    "TOPIC_PATTERN",
    "TopicError",
    "TopicLimitError",
    "TopicNameError",
    "UnknownTopicError",
    "check_topic_name",
    "parse_topics",
]

DEFAULT_MAX_TOPICS = 10_000
DEFAULT_MAX_TOPICS_PER_SUBSCRIBER = 100

#: What a topic name looks like: 1 to 64 characters from ``A-Z a-z 0-9 . _ : -``,
#: starting with a letter or a digit. Such names need no escaping in a URL path, a
#: query string, an SSE ``event:`` field or JSON.
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Event types a browser's EventSource gives a meaning of its own ("open", "error"),
# the default type ("message"), and this package's notices ("tornadose-gap"): a topic
# of that name would be mistaken for them.
_RESERVED = frozenset({"open", "error", "message"})
_RESERVED_PREFIX = "tornadose-"
# Longest name echoed back in an error message.
_ECHO_LIMIT = 80


class TopicError(ValueError):
    """A topic request that cannot be served; the message says why, for the client."""


class TopicNameError(TopicError):
    """A topic name that does not match :data:`TOPIC_PATTERN` or is reserved."""


class TopicLimitError(TopicError):
    """Too many topics: for one subscriber, or for the registry."""


class UnknownTopicError(TopicError):
    """A subscriber asked for a topic that does not exist, in a registry that does not
    create topics for subscribers (``create_on_subscribe=False``)."""


def echo(name: str) -> str:
    return repr(name if len(name) <= _ECHO_LIMIT else name[:_ECHO_LIMIT] + "...")


def check_topic_name(name: str) -> str:
    """Return ``name`` when it is a valid topic name; raise :class:`TopicNameError`
    (saying what is wrong) otherwise."""
    if not isinstance(name, str) or not TOPIC_PATTERN.fullmatch(name):
        raise TopicNameError(
            f"bad topic name {echo(str(name))}: a topic name is 1 to 64 characters from "
            "A-Z a-z 0-9 . _ : - and starts with a letter or a digit"
        )
    if name in _RESERVED or name.startswith(_RESERVED_PREFIX):
        raise TopicNameError(
            f"bad topic name {echo(name)}: 'open', 'error', 'message' and names starting "
            f"with {_RESERVED_PREFIX!r} are reserved"
        )
    return name


def parse_topics(specs: Iterable[str], limit: int, allow_empty: bool = False) -> list[str]:
    """Topic names from URL pieces, each a comma-separated list: in order, without
    duplicates or empty pieces. Raises :class:`TopicError` when there are none (unless
    ``allow_empty``), :class:`TopicLimitError` for more than ``limit``,
    :class:`TopicNameError` for a bad name."""
    names: dict[str, None] = {}
    for spec in specs:
        for name in spec.split(","):
            if name and name not in names:
                names[name] = None
                if len(names) > limit:
                    raise TopicLimitError(f"too many topics: at most {limit} per subscriber")
    if not names and not allow_empty:
        raise TopicError(
            "no topic requested: name one or several topics in the path or as ?topics=NAME,NAME"
        )
    for name in names:
        check_topic_name(name)
    return list(names)
