"""A store's bounded history of pre-built frames, with sequence numbers.

The implementation comes from the backend chosen in :mod:`tornadose.core.backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import BACKEND

if TYPE_CHECKING or BACKEND == "python":
    from ._ring_py import SSE, WS, Ring, TopicRing, TopicState
else:
    from ._ring_c import SSE, WS, Ring, TopicRing, TopicState

__all__ = ["SSE", "WS", "Ring", "TopicRing", "TopicState"]
