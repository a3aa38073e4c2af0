"""Micro-benchmarks of the hot paths, each for both backends (ids c / py).

Run from the repository root, outside the test suite:

    python -m pytest bench/test_micro_benchmarks.py --benchmark-columns=min,median,mean,rounds

- frames: building the SSE event and the WebSocket frame of a ~90-byte message;
- ring: appending one message's frames to a full ring (evicting the oldest), and joining
  the last 100 SSE frames (what a subscriber one burst behind gets in one write);
- fanout: one pass that writes one new frame to 5,000 subscribers, each a real loopback
  TCP connection whose peer is drained between rounds (outside the timing); and the
  floor: the same bytes sent to the same sockets by a bare loop of ``socket.send``.
"""

from __future__ import annotations

import asyncio
import importlib
import resource
import socket

import orjson
import pytest
from tornado.iostream import IOStream

MESSAGE = {"sym": "AAPL", "bid": 189.91, "ask": 189.93, "bsz": 300, "asz": 500, "seq": 123456,
           "ts": 1795475466.6836}
assert 80 <= len(orjson.dumps(MESSAGE)) <= 100
EVENT_ID = b"5f3a9c01-123456"
MESSAGE_SSE = b"id: " + EVENT_ID + b"\ndata: " + orjson.dumps(MESSAGE) + b"\n\n"
SUBSCRIBERS = 5000


@pytest.fixture(scope="module", params=["c", "py"])
def impl(request):
    suffix = request.param
    try:
        return {n: importlib.import_module(f"tornadose.core._{n}_{suffix}")
                for n in ("frames", "ring", "fanout")}
    except ImportError as exc:
        pytest.skip(f"compiled backend not built: {exc}")


def test_build_frames(benchmark, impl):
    benchmark(impl["frames"].build_frames, MESSAGE, EVENT_ID)


def test_sse_event(benchmark, impl):
    payload = orjson.dumps(MESSAGE)
    benchmark(impl["frames"].sse_event, payload, EVENT_ID)


def test_ws_frame(benchmark, impl):
    frames = impl["frames"]
    body = frames.ws_data_body(orjson.dumps(MESSAGE))
    benchmark(frames.ws_text_frame, body)


def _full_ring(ring_mod, frames_mod):
    ring = ring_mod.Ring(4096, 1 << 24)
    sse, ws, _ = frames_mod.build_frames(MESSAGE, EVENT_ID)
    for _ in range(4096):
        ring.append(sse, ws)
    return ring, sse, ws


def test_ring_append(benchmark, impl):
    ring, sse, ws = _full_ring(impl["ring"], impl["frames"])
    benchmark(ring.append, sse, ws)


def test_ring_join_100(benchmark, impl):
    ring, _, _ = _full_ring(impl["ring"], impl["frames"])
    benchmark(ring.join, impl["ring"].SSE, ring.head - 100)


@pytest.fixture(scope="module")
def connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * SUBSCRIBERS + 100:
        pytest.skip(f"needs {2 * SUBSCRIBERS + 100} file descriptors, limit is {hard}")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    listener = socket.create_server(("127.0.0.1", 0), backlog=SUBSCRIBERS)
    pairs = []
    for _ in range(SUBSCRIBERS):
        peer = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        peer.setblocking(False)
        pairs.append((IOStream(server_side), peer))
    yield pairs
    for stream, peer in pairs:
        stream.close()
        peer.close()
    listener.close()
    asyncio.set_event_loop(None)
    loop.close()


def _drain(peers):
    for peer in peers:
        try:
            while peer.recv(65536):
                pass
        except BlockingIOError:
            pass


def test_fanout_pass_5000_subscribers(benchmark, impl, connections):
    ring_mod, fanout_mod = impl["ring"], impl["fanout"]
    ring = ring_mod.Ring(4096, 1 << 24)
    fan = fanout_mod.Fanout(ring, False)
    for stream, _ in connections:
        fan.add(fanout_mod.Sink(stream, fanout_mod.FORMAT_SSE_CHUNKED, lambda: None), ring.head)
    sse, ws, _ = impl["frames"].build_frames(MESSAGE, EVENT_ID)
    peers = [peer for _, peer in connections]

    def one_new_frame():
        _drain(peers)
        ring.append(sse, ws)
        return (), {}

    benchmark.pedantic(fan.flush, setup=one_new_frame, rounds=60, warmup_rounds=3)
    assert fan.writes == fan.delivered == 63 * SUBSCRIBERS


def test_fanout_pass_5000_subscribers_floor(benchmark, connections):
    """The floor: the same frame sent with plain non-blocking send() to the same sockets."""
    frame = b"%x\r\n%b\r\n" % (len(MESSAGE_SSE), MESSAGE_SSE)
    sends = [stream.socket.send for stream, _ in connections]
    peers = [peer for _, peer in connections]

    def send_all():
        for send in sends:
            send(frame)

    benchmark.pedantic(send_all, setup=lambda: _drain(peers), rounds=60, warmup_rounds=3)
