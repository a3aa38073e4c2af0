"""The two backends cannot drift: the same scenario, run on the compiled and on the
pure-Python hot path, puts the same bytes on every wire and counts the same.

The scenario drives the one engine (``tornadose.core.engine.FanoutPaths`` on each
backend's ``FanoutCore``, ring and frames) over real sockets: one-topic runs (a store's
case), interleaved topics, chunked SSE, WebSocket frames, a ``deliver`` callback,
notices, a connection resuming from a cursor, one joining between a submit and its
flush, and a turn that overruns the log (lapping queue connections, conflating
latest-value ones).
"""

from __future__ import annotations

import importlib
import socket

import pytest
from tornado.iostream import IOStream

from tornadose.core.engine import FanoutPaths

NAMES = ("frames", "ring", "fanout")


def _backends():
    try:
        c = [importlib.import_module(f"tornadose.core._{n}_c") for n in NAMES]
    except ImportError:
        pytest.skip("compiled backend not built")
    py = [importlib.import_module(f"tornadose.core._{n}_py") for n in NAMES]
    return {"c": c, "py": py}


def _drain(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _run(frames, ring, fanout, conflate: bool) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    peers, streams = {}, []
    log = ring.TopicRing(8, 1 << 20, 1, conflate)
    topics = {name: ring.TopicState(name) for name in "ABC"}
    engine = type("Fanout", (FanoutPaths, fanout.FanoutCore), {"__slots__": ()})(log, conflate)
    dropped, delivered = [], []

    def connect(name, fmt, deliver=None):
        peer = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        stream = IOStream(server_side)
        streams.append(stream)
        peers[name] = peer
        return fanout.Sink(stream, fmt, lambda: dropped.append(name), deliver)

    def submit(topic, n):
        sse, ws, _ = frames.build_frames({"n": n, "t": topic}, b"e-%d" % log.head, topic.encode())
        log.add_entry(sse, ws, topics[topic])

    sinks = {
        "sse": connect("sse", fanout.FORMAT_SSE),
        "chunked": connect("chunked", fanout.FORMAT_SSE_CHUNKED),
        "ws": connect("ws", fanout.FORMAT_WS),
        "cb": connect("cb", fanout.FORMAT_WS, delivered.append),
    }
    engine.add(sinks["sse"], (topics["A"],), log.head)
    engine.add(sinks["chunked"], (topics["A"], topics["B"]), log.head)
    engine.add(sinks["ws"], tuple(topics.values()), log.head)
    engine.add(sinks["cb"], (topics["B"],), log.head)
    for n in range(3):  # one topic: the run path
        submit("A", n)
    engine.flush()
    for n in range(6):  # interleaved topics: the pass over entries
        submit("ABC"[n % 3], n)
    engine.flush()
    for sink in sinks.values():
        engine.write_extra(sink, b": notice\n\n", b"\x81\x02{}")
    submit("A", 100)  # a connection joins between a submit and its flush
    late = connect("late", fanout.FORMAT_SSE)
    engine.add(late, (topics["A"], topics["C"]), log.head - 4)
    submit("C", 101)
    engine.flush()
    for n in range(12):  # more than the log holds in one turn
        submit("AB"[n % 2], 200 + n)
    engine.flush()
    out = {name: _drain(peer) for name, peer in peers.items()}
    out["deliver"] = delivered
    out["dropped"] = sorted(dropped)
    out["counts"] = (engine.delivered, engine.writes, engine.lapped, engine.conflated)
    for stream in streams:
        stream.close()
    for peer in peers.values():
        peer.close()
    listener.close()
    return out


@pytest.mark.parametrize("conflate", [False, True], ids=["queue", "latest"])
def test_both_backends_put_the_same_bytes_on_the_wire(conflate):
    runs = {name: _run(*mods, conflate) for name, mods in _backends().items()}
    assert runs["c"] == runs["py"]
    assert all(runs["c"][name] for name in ("sse", "chunked", "ws", "late"))
    if not conflate:
        assert runs["c"]["dropped"], "the overrun should lap the queue connections"
