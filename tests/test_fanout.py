"""The one fan-out engine over real sockets, both backends, without a running loop.

A store is the one-topic case of the topic log, so these tests drive the engine as a
store does: one ``TopicState``, every connection on it. Each subscriber is a Tornado
IOStream on one end of a connected TCP pair; the test reads the other end. Only the
drain test runs the loop, because catching up after a full socket is the loop's job.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from tornado.iostream import IOStream

from tornadose.core.engine import FanoutPaths

SSE, WS = 0, 1


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def pairs(loop):
    """``make()`` returns ``(IOStream, peer socket)`` connected over loopback TCP."""
    listener = socket.create_server(("127.0.0.1", 0))
    made = []

    def make(rcvbuf: int | None = None):
        peer = socket.socket()
        if rcvbuf:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        peer.connect(listener.getsockname())
        server_side, _ = listener.accept()
        stream = IOStream(server_side)
        made.append((stream, peer))
        return stream, peer

    yield make
    for stream, peer in made:
        stream.close()
        peer.close()
    listener.close()


def recv_exactly(peer: socket.socket, n: int) -> bytes:
    peer.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = peer.recv(n - len(data))
        assert chunk, "peer closed"
        data += chunk
    return data


def nothing_pending(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(1)
    except BlockingIOError:
        return True
    finally:
        peer.setblocking(True)
    return False


class OneTopic:
    """A log of one topic and the engine on it, built on ``impl``'s core."""

    def __init__(self, impl, conflate: bool, capacity: int) -> None:
        self.log = impl.ring.TopicRing(capacity, 1 << 20, 0, conflate)
        self.topic = impl.ring.TopicState("t")
        engine = type("Fanout", (FanoutPaths, impl.fanout.FanoutCore), {"__slots__": ()})
        self.fan = engine(self.log, conflate)

    @property
    def head(self) -> int:
        return self.log.head

    def append(self, sse: bytes, ws: bytes) -> int:
        return self.log.add_entry(sse, ws, self.topic)


class Engine:
    """What the tests hold: ``ring.append``/``ring.head`` and ``fan.add(sink, cursor)``."""

    def __init__(self, one: OneTopic) -> None:
        self._one = one

    def __getattr__(self, name):
        return getattr(self._one.fan, name)

    def __len__(self) -> int:
        return len(self._one.fan)

    def __contains__(self, sink) -> bool:
        return sink in self._one.fan

    def add(self, sink, cursor) -> None:
        self._one.fan.add(sink, (self._one.topic,), cursor)


def setup(impl, conflate=False, capacity=64):
    one = OneTopic(impl, conflate, capacity)
    return one, Engine(one)


def test_one_write_per_flush_with_everything_since_the_cursor(impl, pairs):
    ring, fan = setup(impl)
    stream, peer = pairs()
    sink = impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: None)
    fan.add(sink, ring.head)
    for i in range(3):
        ring.append(b"e%d\n\n" % i, b"w%d" % i)
    fan.flush()
    assert recv_exactly(peer, 12) == b"e0\n\ne1\n\ne2\n\n"
    assert (fan.writes, fan.delivered, fan.position(sink)) == (1, 3, 3)
    fan.flush()  # up to date: nothing more
    assert fan.writes == 1 and nothing_pending(peer)


def test_formats_and_cursors(impl, pairs):
    ring, fan = setup(impl)
    ring.append(b"a", b"A")
    ring.append(b"bb", b"BB")
    F = impl.fanout
    streams = [pairs() for _ in range(3)]
    fan.add(F.Sink(streams[0][0], F.FORMAT_SSE_CHUNKED, lambda: None), 0)
    fan.add(F.Sink(streams[1][0], F.FORMAT_WS, lambda: None), 1)
    fan.add(F.Sink(streams[2][0], F.FORMAT_SSE, lambda: None), 1)
    fan.flush()
    assert recv_exactly(streams[0][1], 8) == b"3\r\nabb\r\n"
    assert recv_exactly(streams[1][1], 2) == b"BB"
    assert recv_exactly(streams[2][1], 2) == b"bb"
    assert fan.delivered == 4 and len(fan) == 3


def test_lapped_subscriber_is_removed_and_told(impl, pairs):
    ring, fan = setup(impl, capacity=2)
    stream, peer = pairs()
    lapped = []
    sink = impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: lapped.append(1))
    fan.add(sink, ring.head)
    for i in range(5):
        ring.append(b"x", b"y")
    fan.flush()
    assert lapped == [1] and sink not in fan and fan.lapped == 1
    assert nothing_pending(peer)


def test_conflation_sends_only_the_newest(impl, pairs):
    ring, fan = setup(impl, conflate=True, capacity=1)
    stream, peer = pairs()
    sink = impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: pytest.fail("lapped"))
    fan.add(sink, ring.head)
    for i in range(5):
        ring.append(b"v%d;" % i, b"")
    fan.flush()
    assert recv_exactly(peer, 3) == b"v4;"
    assert (fan.conflated, fan.delivered) == (4, 1)


def test_deliver_callback_gets_the_pending_ws_frames(impl, pairs):
    ring, fan = setup(impl)
    stream, _ = pairs()
    got = []
    fan.add(impl.fanout.Sink(stream, impl.fanout.FORMAT_WS, lambda: None, got.append), 0)
    ring.append(b"s1", b"w1")
    ring.append(b"s2", b"w2")
    fan.flush()
    assert got == [[b"w1", b"w2"]]


def test_closed_stream_is_skipped(impl, pairs):
    ring, fan = setup(impl)
    stream, peer = pairs()
    fan.add(impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: None), 0)
    stream.close()
    ring.append(b"x", b"y")
    fan.flush()
    assert fan.writes == 0


def test_reset_peer_closes_the_stream_without_raising(impl, pairs):
    ring, fan = setup(impl)
    stream, peer = pairs()
    fan.add(impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: None), 0)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    for _ in range(3):  # the first send may still succeed; a later one sees the reset
        ring.append(b"x" * 1000, b"y")
        fan.flush()
    assert stream.closed()


def test_unknown_format_is_refused(impl, pairs):
    stream, _ = pairs()
    with pytest.raises(ValueError, match="format"):
        impl.fanout.Sink(stream, 7, lambda: None)


def test_full_socket_hands_the_rest_to_iostream_and_catches_up(impl, pairs, loop):
    ring, fan = setup(impl, capacity=1000)
    stream, peer = pairs(rcvbuf=4096)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sink = impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: pytest.fail("lapped"))
    fan.add(sink, 0)
    frames = [bytes([65 + i % 26]) * 50_000 for i in range(6)]
    ring.append(frames[0], b"")
    fan.flush()
    assert stream.writing(), "the first write should not fit in the socket"
    for frame in frames[1:]:
        ring.append(frame, b"")
        fan.flush()  # skipped while busy; a drain callback catches it up later
    assert fan.writes == 1 and sink.waiting

    async def read_all():
        reader, _ = await asyncio.open_connection(sock=peer)
        return await reader.readexactly(sum(map(len, frames)))

    assert loop.run_until_complete(asyncio.wait_for(read_all(), 10)) == b"".join(frames)
    assert fan.writes == 2 and fan.position(sink) == 6


def test_a_latest_value_evicted_within_its_turn_still_reaches_live_connections(impl, pairs):
    """Six topics each get a value in one turn, on a log of four entries: the values of
    the first two are evicted before the flush, yet they are those topics' current
    values, and a live connection to them gets each once."""
    log = impl.ring.TopicRing(4, 1 << 20, 0, True)
    topics = [impl.ring.TopicState(name) for name in "ABCDEF"]
    engine = type("Fanout", (FanoutPaths, impl.fanout.FanoutCore), {"__slots__": ()})(log, True)
    stream, peer = pairs()
    sink = impl.fanout.Sink(stream, impl.fanout.FORMAT_SSE, lambda: pytest.fail("lapped"))
    engine.add(sink, (topics[0], topics[5]), None)
    for topic in topics:
        log.add_entry(b"%s;" % topic.name.encode(), b"", topic)
    engine.flush()
    assert recv_exactly(peer, 4) == b"A;F;" and nothing_pending(peer)
