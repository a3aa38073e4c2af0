"""What one connection's compressed stream costs: bytes, CPU per tick and memory, per encoder.

    python -m bench.deflate_cost

Feeds one connection's share of the topics workload (its ticks of 50 of 500 topics,
``bench/server.py --ticks`` shaped, framed as the server frames them) to each encoder
and window, one write per turn with 10 ticks (100 per turn overall) and with 1 (10 per
turn): the ratio of compressed to framed bytes, the µs per tick (one thread, no I/O),
and the state the stream holds. ``c`` is the compiled backend's encoder
(``_speedups/tdeflate.h``); ``zlib`` is Python's zlib module at level 1 (the
pure-Python backend), whose figure includes the cost of calling it from Python.
"""

from __future__ import annotations

import time

import orjson

from bench.server import tick
from tornadose.core import _deflate_py
from tornadose.core._frames_py import build_frames

GRID = [(9, 1), (10, 2), (11, 3), (12, 3), (12, 5), (14, 8)]


def frames(count: int = 20_000, topics: int = 500) -> tuple[list[bytes], list[bytes]]:
    """SSE events and WebSocket frames of connection 0's ticks (topics 0, 10, 20...)."""
    sse, ws = [], []
    for seq in range(count):
        message = tick(seq, 1733241600_000_000_000 + seq * 137_000)
        if seq % topics % 10:
            continue
        s, w, _ = build_frames(orjson.dumps(message).decode(), b"1a2b3c4d-%d" % (seq + 1),
                               message["symbol"].encode())
        sse.append(s)
        ws.append(w)
    return sse, ws


def measure(deflater: type, wire: int, data: list[bytes], per_write: int, bits: int,
            level: int) -> tuple[float, float, int]:
    codec = deflater(wire, bits, level)
    writes = [data[i:i + per_write] for i in range(0, len(data), per_write)]
    start = time.perf_counter()
    out = sum(len(codec.pack(w)) for w in writes)
    elapsed = time.perf_counter() - start
    return out / sum(map(len, data)), elapsed / len(data) * 1e6, codec.memory


def main() -> None:
    sse, ws = frames()
    encoders = {"zlib": _deflate_py.Deflater}
    try:
        from tornadose.core import _deflate_c

        encoders = {"c": _deflate_c.Deflater, **encoders}
    except ImportError:
        print("(compiled backend not built: zlib only)")
    print(f"{len(sse)} ticks of one connection; ratio = compressed / framed bytes")
    print(f"{'encoder':<7} {'bits':>4} {'mem':>3} {'state':>8}   "
          f"{'SSE x10':>15} {'SSE x1':>15} {'WS x10':>15} {'WS x1':>15}")
    for name, deflater in encoders.items():
        for bits, level in GRID:
            cells = []
            memory = 0
            for wire, data in ((_deflate_py.GZIP, sse), (_deflate_py.WEBSOCKET, ws)):
                for per in (10, 1):
                    ratio, us, memory = measure(deflater, wire, data, per, bits, level)
                    cells.append(f"{ratio:.3f} {us:5.2f} µs")
            print(f"{name:<7} {bits:>4} {level:>3} {memory / 1024:6.1f} KB   "
                  + " ".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
