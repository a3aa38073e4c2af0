"""A QueueStore server in its own process, so that its RSS can be measured alone.

``python stall_server.py PORT [--max-bytes N]``: ``/sse`` subscribes; ``POST /publish?count=N&size=B``
submits N numbered messages of about B bytes, 100 per loop iteration; ``GET /stats``
returns the store's counters and the process's RSS in bytes.
"""

import argparse
import asyncio

import tornado.web

from tornadose.handlers import EventSource
from tornadose.stores import QueueStore

PAGE = 4096


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Publish(tornado.web.RequestHandler):
    def initialize(self, store, counter):
        self.store, self.counter = store, counter

    async def post(self):
        count = int(self.get_argument("count"))
        pad = "x" * int(self.get_argument("size", "60"))
        for i in range(count):
            self.store.submit(f"{self.counter[0]} {pad}")
            self.counter[0] += 1
            if i % 100 == 99:
                await asyncio.sleep(0)
        self.write({"next": self.counter[0]})


class Stats(tornado.web.RequestHandler):
    def initialize(self, store):
        self.store = store

    def get(self):
        self.write({**self.store.stats(), "rss": rss()})


async def main(port: int, max_bytes: int) -> None:
    store = QueueStore(max_bytes=max_bytes)
    tornado.web.Application(
        [
            (r"/sse", EventSource, {"store": store}),
            (r"/publish", Publish, {"store": store, "counter": [0]}),
            (r"/stats", Stats, {"store": store}),
        ]
    ).listen(port, "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.max_bytes))
