"""Many subscribers, slow and vanishing clients, bounded memory: real server, real clients."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct

import psutil

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import DataStore, QueueStore

from .helpers import LibWS, TornadoWS, server_stream, submit_in_bursts, wait_until
from .sseclient import RawSSEClient


async def test_200_mixed_subscribers_get_1000_messages_in_order(serve):
    queue, latest = QueueStore(), DataStore()
    port = await serve(
        [
            (r"/q/sse", EventSource, {"store": queue}),
            (r"/q/ws", WebSocketSubscriber, {"store": queue}),
            (r"/d/sse", EventSource, {"store": latest}),
        ]
    )
    sse = [await RawSSEClient.connect("127.0.0.1", port, "/q/sse") for _ in range(100)]
    tws = [await TornadoWS.connect(port, "/q/ws") for _ in range(50)]
    lws = [await LibWS.connect(port, "/q/ws") for _ in range(50)]
    data_clients = [await RawSSEClient.connect("127.0.0.1", port, "/d/sse") for _ in range(10)]
    await wait_until(lambda: len(queue.subscribers) == 200 and len(latest.subscribers) == 10)

    messages = [{"seq": i, "pad": "p" * 60} for i in range(1000)]

    async def publish():
        for start in range(0, 1000, 100):
            for m in messages[start : start + 100]:
                queue.submit(m)
                latest.submit(m)
            await asyncio.sleep(0)

    async def read_sse(client):
        return [json.loads(e.data) for e in await client.read_events(1000, timeout=60)]

    results = await asyncio.gather(
        publish(),
        *(read_sse(c) for c in sse),
        *(c.read(1000, timeout=60) for c in tws + lws),
    )
    for received in results[1:]:
        assert received == messages
    stats = queue.stats()
    assert stats["delivered"] == 200 * 1000
    assert stats["writes"] < stats["delivered"] / 10, "bursts were not coalesced"

    for client in data_clients:
        events = await client.read_events(1, timeout=10)
        while client.parser.events_dispatched < 2 or json.loads(events[-1].data)["seq"] != 999:
            events = await client.read_events(1, timeout=10)
        assert json.loads(events[-1].data) == messages[-1]
    assert latest.stats()["conflated"] > 0

    for c in sse + data_clients:
        c.close_fin()
    for c in tws + lws:
        await c.close()
    await wait_until(lambda: len(queue.subscribers) == 0 and len(latest.subscribers) == 0)


async def test_slow_reader_with_tiny_buffer_gets_every_byte_in_order(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store})])
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=2048, limit=1024)
    await wait_until(lambda: len(store.subscribers) == 1)
    sent = [f"{i}:" + "é" * random.randrange(1, 400) for i in range(3000)]
    publisher = asyncio.ensure_future(submit_in_bursts(store, sent, 50))
    received = []
    while len(received) < len(sent):
        received += [e.data for e in await client.read_events(1, timeout=30)]
        if len(received) % 97 == 0:
            await asyncio.sleep(0.002)  # read slowly now and then
    await publisher
    assert received == sent
    assert store.stats()["lapped"] == 0
    client.close_fin()


async def test_reset_in_the_middle_of_a_write_drops_the_subscriber_cleanly(serve):
    store = QueueStore()
    port = await serve([(r"/sse", EventSource, {"store": store}), (r"/ws", WebSocketSubscriber, {"store": store})])
    sse = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=2048, limit=256)
    ws = await TornadoWS.connect(port, "/ws")
    await wait_until(lambda: len(store.subscribers) == 2)
    sse_handler = next(h for h in store.subscribers if isinstance(h, EventSource))
    stream = server_stream(sse_handler)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # no autotuning
    store.submit("x" * 500_000)  # far more than the socket takes: the rest waits in IOStream
    await asyncio.sleep(0.05)
    assert stream.writing(), "expected a partial write with the remainder pending"
    sse.close_rst()
    await wait_until(lambda: len(store.subscribers) == 1, what="reset subscriber dropped")
    store.submit("after")
    assert await ws.read(2) == ["x" * 500_000, "after"]
    await ws.close()


async def test_lapped_subscriber_is_disconnected_not_skipped(serve):
    store = QueueStore(capacity=500)
    port = await serve([(r"/sse", EventSource, {"store": store})])
    reader = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    stalled = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=1024, limit=256)
    await wait_until(lambda: len(store.subscribers) == 2)
    received = []
    # The reader keeps pace; the stalled client never reads. Kernel socket buffers on
    # loopback absorb megabytes, so keep going until the stall reaches the ring.
    for round_ in range(100):
        await submit_in_bursts(store, [f"{round_}-{i} " + "z" * 1000 for i in range(200)], 100)
        received += [e.data for e in await reader.read_events(200, timeout=10)]
        if len(store.subscribers) == 1:
            break
    assert len(received) == 200 * (round_ + 1) and received[-1].startswith(f"{round_}-199")
    await wait_until(lambda: len(store.subscribers) == 1, what="stalled client dropped")
    assert store.stats()["lapped"] == 1
    events = await stalled.read_until_closed(timeout=10)
    assert stalled.closed_by_server
    # What it did get is a gap-free prefix: never a silent skip.
    assert [e.data for e in events] == received[: len(events)]
    reader.close_fin()


async def test_clients_vanishing_mid_stream_leave_no_subscriber_and_no_noise(serve):
    queue, latest = QueueStore(), DataStore(initial_data=0)
    port = await serve(
        [
            (r"/sse", EventSource, {"store": queue}),
            (r"/ws", WebSocketSubscriber, {"store": queue}),
            (r"/d", EventSource, {"store": latest}),
        ]
    )
    process = psutil.Process()

    def server_side_sockets():
        return [c for c in process.net_connections() if c.laddr.port == port and c.status != "LISTEN"]

    clients = [await RawSSEClient.connect("127.0.0.1", port, random.choice(["/sse", "/d"])) for _ in range(24)]
    ws_clients = [await TornadoWS.connect(port, "/ws") for _ in range(3)]
    # A client closing normally while unread data is queued waits for the server's close
    # frame behind that data; bound that client-side wait.
    ws_clients += [await LibWS.connect(port, "/ws", close_timeout=0.2) for _ in range(3)]
    await wait_until(lambda: len(queue.subscribers) + len(latest.subscribers) == 30)

    stop = asyncio.Event()

    async def publish():
        i = 0
        while not stop.is_set():
            for _ in range(100):
                queue.submit({"i": i, "pad": "q" * 200})
                latest.submit(i)
                i += 1
            await asyncio.sleep(0)

    publisher = asyncio.ensure_future(publish())
    random.shuffle(clients)
    for n, client in enumerate(clients):
        await client.read_events(1, timeout=10)  # mid-stream: data is flowing to it
        (client.close_rst if n % 2 else client.close_fin)()
        await asyncio.sleep(0.002)
    for ws in ws_clients:
        if isinstance(ws, TornadoWS):  # abrupt: RST without a closing handshake
            sock = ws.conn.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.conn.stream.close()
        else:  # a normal closing handshake
            await ws.close()
    await wait_until(lambda: len(queue.subscribers) == 0 and len(latest.subscribers) == 0, timeout=10)
    stop.set()
    await publisher
    await wait_until(lambda: not server_side_sockets(), timeout=10, what="server sockets closed")
