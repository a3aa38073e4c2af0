"""An app that ends with 20 subscribers open on each of its four handlers.

    python tests/servers/shutdown_app.py return|close

``return``: ``asyncio.run`` returns while every stream is open (what Ctrl-C or the end of
``main()`` does in a typical app: asyncio cancels the handlers' tasks). ``close``: the
documented clean shutdown first (stores and registries closed, the server stopped, its
connections closed), then ``asyncio.run`` returns. Logging is configured as a typical
app's (WARNING and above to stderr): a normal end must leave stderr empty. Prints
``ready`` to stdout once every subscriber is registered and has received a message.
"""

import asyncio
import logging
import socket
import sys

import tornado.web
from tornado.websocket import websocket_connect

from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import QueueStore
from tornadose.topics import TopicRegistry

N = 20


async def main(mode: str) -> None:
    store, registry = QueueStore(), TopicRegistry(QueueStore)
    app = tornado.web.Application(
        [
            (r"/sse", EventSource, {"store": store}),
            (r"/ws", WebSocketSubscriber, {"store": store}),
            (r"/topics/sse", TopicEventSource, {"registry": registry}),
            (r"/topics/ws", TopicWebSocketSubscriber, {"registry": registry}),
        ]
    )
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    clients = []
    for path in ("/sse", "/topics/sse?topics=A"):
        for _ in range(N):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            clients.append(sock)
    for path in ("/ws", "/topics/ws?topics=A"):
        for _ in range(N):
            clients.append(await websocket_connect(f"ws://127.0.0.1:{port}{path}"))
    while len(store.subscribers) < 2 * N or registry.connections < 2 * N:
        await asyncio.sleep(0.01)
    store.submit("hello")
    registry.submit("A", "hello")
    for client in clients[2 * N :]:
        assert "hello" in await client.read_message()
    print("ready", flush=True)
    if mode == "close":
        store.close()
        registry.close()
        server.stop()
        await server.close_all_connections()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1]))
