"""The fan-out's hot part (flush pass, writes), from the backend chosen at import time.

The implementation comes from the backend chosen in :mod:`tornadose.core.backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import BACKEND

if TYPE_CHECKING or BACKEND == "python":
    from ._fanout_py import (
        FORMAT_SSE,
        FORMAT_SSE_CHUNKED,
        FORMAT_WS,
        FanoutCore,
        Sink,
    )
else:
    from ._fanout_c import (
        FORMAT_SSE,
        FORMAT_SSE_CHUNKED,
        FORMAT_WS,
        FanoutCore,
        Sink,
    )

__all__ = [
    "FORMAT_SSE",
    "FORMAT_SSE_CHUNKED",
    "FORMAT_WS",
    "Sink",
    "FanoutCore",
]
