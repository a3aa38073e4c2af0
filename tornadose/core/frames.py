"""Message to wire bytes: SSE events and WebSocket text frames, built once per message.

The implementation comes from the backend chosen in :mod:`tornadose.core.backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import BACKEND

if TYPE_CHECKING or BACKEND == "python":
    from ._frames_py import build_frames, encode_message, sse_event, ws_data_body, ws_text_frame
else:
    from ._frames_c import build_frames, encode_message, sse_event, ws_data_body, ws_text_frame

__all__ = ["build_frames", "encode_message", "sse_event", "ws_data_body", "ws_text_frame"]
