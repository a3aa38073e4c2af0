"""Parse WebSocket frames with the `websockets` library's own parser (not ours)."""

from __future__ import annotations

from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader


def parse_frames(data: bytes) -> list[Frame]:
    """Parse a byte string of complete unmasked server frames; raise if bytes remain."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("incomplete WebSocket frame")
    return frames


__all__ = ["Opcode", "parse_frames"]
