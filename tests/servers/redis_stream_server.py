"""N server processes on one port, each fanning out one Redis stream: the multi-process
recipe of the README, runnable.

    python tests/servers/redis_stream_server.py --port 8000 --processes 4 \\
        --redis-port 6379 [--redis-host 127.0.0.1] [--stream tornadose] [--reuse-port]

The listening socket is bound once, then ``tornado.process.fork_processes`` starts N
worker processes that share it (the kernel gives each new connection to one of them);
with ``--reuse-port`` each worker binds its own ``SO_REUSEPORT`` socket instead and the
kernel balances connections by address. Every worker creates its own
``RedisStreamStore`` after the fork (a Redis connection must not cross a fork) and reads
the stream; a client may therefore land on any worker on each reconnect and resume with
its ``Last-Event-ID`` exactly.

Routes of every worker: ``/sse`` (EventSource), ``/ws`` (WebSocketSubscriber), ``GET
/stats`` (the store's counters and the worker's pid), ``POST /publish`` (the request body
is submitted; answers the event id). With ``--topics`` the store is a
``TopicRegistry(RedisStreamStore)``: ``/sse?topics=A,B`` and ``/ws?topics=A,B`` are
``TopicEventSource`` / ``TopicWebSocketSubscriber``, and ``POST /publish?topic=A``.
Responses carry ``X-Worker-Pid``. Each worker prints ``ready <pid>`` once it reads the
stream and listens. SIGTERM (or SIGINT) to the parent ends every worker cleanly: stores
closed (SSE responses end, WebSockets close with 1001), then the server stopped. On Linux workers also end when the parent dies.
"""

import argparse
import asyncio
import ctypes
import os
import signal
import sys

import tornado.netutil
import tornado.process
import tornado.web

import tornadose
from tornadose.handlers import (
    EventSource,
    TopicEventSource,
    TopicWebSocketSubscriber,
    WebSocketSubscriber,
)
from tornadose.stores import RedisStreamStore
from tornadose.topics import TopicRegistry


class WorkerSSE(EventSource):
    def prepare(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        super().prepare()


class WorkerWS(WebSocketSubscriber):
    def prepare(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        super().prepare()


class WorkerTopicSSE(TopicEventSource):
    def prepare(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        super().prepare()


class WorkerTopicWS(TopicWebSocketSubscriber):
    def prepare(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        super().prepare()


class Stats(tornado.web.RequestHandler):
    def initialize(self, store):
        self.store = store

    def get(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        self.write({**self.store.stats(), "pid": os.getpid()})


class Publish(tornado.web.RequestHandler):
    def initialize(self, store):
        self.store = store

    async def post(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        topic = self.get_query_argument("topic", None)
        message = self.request.body.decode()
        if topic is not None:
            self.write(await self.store.submit(topic, message))
        else:
            self.write(await self.store.submit(message))


def die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the parent process dies, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        sys.exit(0)


async def worker(args, sockets) -> None:
    redis = {"host": args.redis_host, "port": args.redis_port}
    if args.topics:
        store = TopicRegistry(RedisStreamStore, stream=args.stream, **redis)
        handlers = [
            (r"/sse", WorkerTopicSSE, {"registry": store}),
            (r"/ws", WorkerTopicWS, {"registry": store}),
        ]
    else:
        store = RedisStreamStore(args.stream, **redis)
        handlers = [(r"/sse", WorkerSSE, {"store": store}), (r"/ws", WorkerWS, {"store": store})]
    await store.start()
    app = tornado.web.Application(
        handlers
        + [
            (r"/stats", Stats, {"store": store}),
            (r"/publish", Publish, {"store": store}),
        ]
    )
    server = tornadose.make_server(app)
    if args.reuse_port:
        sockets = tornado.netutil.bind_sockets(args.port, args.host, reuse_port=True, backlog=4096)
    server.add_sockets(sockets)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    os.write(1, b"ready %d\n" % os.getpid())  # one write: workers share the pipe
    await stopping.wait()
    # The clean shutdown recipe: stores first, then the server.
    store.close()
    server.stop()
    await server.close_all_connections()
    await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--processes", type=int, default=0, help="0: one per CPU")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--stream", default="tornadose")
    parser.add_argument(
        "--reuse-port", action="store_true", help="one SO_REUSEPORT socket per worker"
    )
    parser.add_argument(
        "--topics", action="store_true", help="a TopicRegistry(RedisStreamStore) and topic handlers"
    )
    args = parser.parse_args()
    # Bind before forking (unless each worker binds its own): one socket, all workers.
    sockets = (
        [] if args.reuse_port else tornado.netutil.bind_sockets(args.port, args.host, backlog=4096)
    )
    parent = os.getpid()
    # The parent only watches the workers: a signal ends it quietly, and its death ends
    # them (die_with_parent). Workers replace these handlers with their own.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    # Nothing that opens connections or creates an event loop may run before this.
    tornado.process.fork_processes(args.processes, max_restarts=0)
    die_with_parent(parent)
    asyncio.run(worker(args, sockets))


if __name__ == "__main__":
    main()
