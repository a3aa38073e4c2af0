"""Subscriber set and write scheduling: one write per subscriber per flush.

The implementation comes from the backend chosen in :mod:`tornadose._backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import BACKEND

if TYPE_CHECKING or BACKEND == "python":
    from ._fanout_py import (
        FORMAT_SSE,
        FORMAT_SSE_CHUNKED,
        FORMAT_WS,
        Fanout,
        Sink,
        TopicFanoutCore,
        TopicSink,
    )
else:
    from ._fanout_c import (
        FORMAT_SSE,
        FORMAT_SSE_CHUNKED,
        FORMAT_WS,
        Fanout,
        Sink,
        TopicFanoutCore,
        TopicSink,
    )

__all__ = [
    "FORMAT_SSE",
    "FORMAT_SSE_CHUNKED",
    "FORMAT_WS",
    "Fanout",
    "Sink",
    "TopicFanoutCore",
    "TopicSink",
]
