"""A RedisStore server in its own process, for the multi-process Redis tests.

``python redis_store_server.py HTTP_PORT REDIS_PORT``: ``/sse`` and ``/ws`` subscribe to
a RedisStore on channel ``tornadose``; ``GET /stats`` returns the store's counters.
Prints ``ready`` once the store is subscribed and the server listens.
"""

import asyncio
import sys

import tornado.web

from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import RedisStore

# Created at import time, before any loop runs, as applications do.
store = RedisStore(port=int(sys.argv[2]), host="127.0.0.1")


class Stats(tornado.web.RequestHandler):
    def get(self):
        self.write(store.stats())


async def main(port: int) -> None:
    await store.start()
    tornado.web.Application(
        [
            (r"/sse", EventSource, {"store": store}),
            (r"/ws", WebSocketSubscriber, {"store": store}),
            (r"/stats", Stats),
        ]
    ).listen(port, "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
