"""Benchmark server: one tornadose store served over one transport.

Run from the repository root, either as a module (imports this repository's
``tornadose``)::

    python -m bench.server --port 8888 --transport sse --store queue

or, for an installed tornadose such as the reference venv, as an isolated
script so that the repository is not on ``sys.path``::

    .venvs/reference/bin/python -I bench/server.py --port 8888 --transport ws

This file must therefore only import the standard library, tornado and
tornadose.  Routes:

* ``/sse`` or ``/ws`` (per ``--transport``): the subscriber handler.
* ``GET /subscribers``: number of registered subscribers, as plain text.
* ``GET /info``: JSON with the tornadose/tornado versions and file locations.
* ``POST /burst?messages=M&per_iter=K&size=S``: submits M messages of S
  characters (zero-padded sequence number, then filler), K per event-loop
  iteration, and answers once all are submitted.
"""

import argparse
import asyncio
import json
import logging
import os
import resource
import sys

import tornado
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornadose
from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import QueueStore

HANDLERS = {"sse": EventSource, "ws": WebSocketSubscriber}
STORES = {"queue": QueueStore}


def raise_nofile_limit() -> None:
    """Raise the soft open-files limit to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def provenance() -> dict:
    """Which tornadose and tornado this process imported."""
    version = getattr(tornadose, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        try:
            version = dist_version("tornadose")
        except PackageNotFoundError:
            version = "unknown"
    return {
        "tornadose": version,
        "tornadose_file": tornadose.__file__,
        "backend": getattr(tornadose, "backend", None),
        "tornado": tornado.version,
        "python": sys.executable,
        "pid": os.getpid(),
    }


class ControlHandler(tornado.web.RequestHandler):
    """Base for the control endpoints; holds the store."""

    def initialize(self, store):
        self.store = store


class SubscribersHandler(ControlHandler):
    def get(self):
        self.write(str(len(self.store.subscribers)))


class InfoHandler(ControlHandler):
    def get(self):
        self.write(provenance())


class BurstHandler(ControlHandler):
    async def post(self):
        messages = int(self.get_argument("messages"))
        per_iter = int(self.get_argument("per_iter", "100"))
        size = int(self.get_argument("size", "90"))
        filler = "x" * max(0, size - 9)
        submit = self.store.submit
        for start in range(0, messages, per_iter):
            for seq in range(start, min(messages, start + per_iter)):
                submit(f"{seq:08d} {filler}")
            await asyncio.sleep(0)
        self.write({"submitted": messages})


async def serve(port: int, transport: str, store_name: str) -> None:
    store = STORES[store_name]()
    app = tornado.web.Application(
        [
            (rf"/{transport}", HANDLERS[transport], {"store": store}),
            (r"/subscribers", SubscribersHandler, {"store": store}),
            (r"/info", InfoHandler, {"store": store}),
            (r"/burst", BurstHandler, {"store": store}),
        ]
    )
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=sorted(HANDLERS), required=True)
    parser.add_argument("--store", choices=sorted(STORES), default="queue")
    args = parser.parse_args()
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"bench.server: {json.dumps(provenance())}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.port, args.transport, args.store))


if __name__ == "__main__":
    main()
