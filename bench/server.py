"""Benchmark server: one tornadose store served over one transport.

Run from the repository root, either as a module (imports this repository's
``tornadose``)::

    python -m bench.server --port 8888 --transport sse

or, for an installed tornadose such as the reference venv, as an isolated
script so that the repository is not on ``sys.path``::

    bench/.venvs/reference/bin/python -I bench/server.py --port 8888 --transport ws

This file must therefore only import the standard library, tornado and
tornadose (and :mod:`tornadose.topics` only in topics mode, which the reference,
tornadose 0.4.1, does not have).  The control routes are the same for every bench
server (:mod:`bench.floor`, :mod:`bench.wsbroadcast`):

* ``/sse`` or ``/ws`` (per ``--transport``): the subscriber handler; both, on one
  store, with ``--transport both`` (the ``soak`` scenario).
* ``GET /subscribers``: number of registered subscribers, as plain text.
* ``GET /info``: JSON with the tornadose/tornado versions and file locations.
* ``GET /stats``: the store's ``stats()`` where it has them, else ``{}``.
* ``GET /burst?messages=M&per_iter=K&size=S&start=SEQ&rate=R``: submits M messages
  of S characters, K per event-loop iteration (at most R per second if given), and
  answers once all are submitted.
* ``GET /metrics`` (``--metrics``): tornadose.metrics' exposition.
* ``GET /cut``: closes every subscriber's connection server-side (its IOStream) at
  once, a server blip (the ``storm`` scenario); answers how many it closed.
* ``GET /paced?messages=M&rate=R&size=S``: submits M messages on a schedule of
  R per second; a message late on its schedule is submitted as soon as the loop
  gets to it, together with any others then due, and carries its *scheduled*
  time (so a server that falls behind shows it in the latency).

Every payload is ``payload(seq, t_ns, size)`` below: a sequence number, the
submit (or scheduled) CLOCK_MONOTONIC time in ns between ``@`` signs, filler.

``--topics T`` (topics mode, this package only) serves a market feed instead of one
store: a ``TopicRegistry(QueueStore)`` with the topics ``S000``..``S<T-1>`` (created at
start), through ``TopicEventSource`` / ``TopicWebSocketSubscriber`` at the same
subscriber path, each connection naming its topics as ``?topics=S000,S010,...``.
``/burst`` and ``/paced`` then submit message ``seq`` to topic ``seq % T``
(``registry.submit("S%03d" % (seq % T), payload)``); ``/stats`` is ``registry.stats()``
and ``/subscribers`` counts connections (``registry.stats()["connections"]``).
"""

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import time

import tornado
import tornado.httpserver
import tornado.netutil
import tornado.web

import tornadose
from tornadose.handlers import EventSource, WebSocketSubscriber
from tornadose.stores import QueueStore

HANDLERS = {"sse": EventSource, "ws": WebSocketSubscriber}


def padded(seq: int, t_ns: int, size: int) -> str:
    """The benchmark message: ``00000042 @<t_ns>@ xxx...`` of ``size`` characters."""
    head = f"{seq:08d} @{t_ns}@ "
    return head + "x" * max(0, size - len(head))


_OPEN = [round(10 + (i * 7919 % 59000) / 100, 2) for i in range(500)]
_PRICE = list(_OPEN)


def tick(seq: int, t_ns: int, size: int = 0) -> dict:
    """A market tick (``--ticks``): what compression is measured on, since padding
    compresses to nothing. ~110 bytes of JSON: the stamp (as in :func:`padded`), the
    symbol of topic ``seq % 500``, and a price walking by a few cents per tick, with
    its open, change and percent change."""
    sym = seq % 500
    opened = _OPEN[sym]
    step = ((seq * 2654435761) >> 9) % 21 - 10  # -10..10 cents, spread like a hash
    price = _PRICE[sym] = round(max(1.0, _PRICE[sym] + step / 100), 2)
    change = round(price - opened, 2)
    return {"stamp": f"{seq:08d} @{t_ns}@", "symbol": f"S{sym:03d}", "price": price,
            "open": opened, "change": change, "pct": round(change / opened * 100, 2)}


payload = padded


def raise_nofile_limit() -> None:
    """Raise the soft open-files limit to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _backend_reason():
    # Why the pure-Python backend serves, from versions that say (None otherwise).
    try:
        from tornadose.core.backend import REASON
    except ImportError:
        return None
    return REASON


def provenance() -> dict:
    """Which tornadose and tornado this process imported."""
    version = getattr(tornadose, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version("tornadose")
        except PackageNotFoundError:
            version = "unknown"
    return {
        "server": "tornadose",
        "tornadose": version,
        "tornadose_file": tornadose.__file__,
        "backend": getattr(tornadose, "backend", None),
        "backend_reason": _backend_reason(),
        "tornado": tornado.version,
        "python": sys.executable,
        "pid": os.getpid(),
    }


def topic_name(index: int) -> str:
    """Topic ``index``'s name: ``S000``.. (the same in bench.floor and the load client)."""
    return f"S{index:03d}"


class ControlHandler(tornado.web.RequestHandler):
    """Base for the control endpoints; holds the store, or in topics mode the registry
    and its topic names (message ``seq`` goes to ``names[seq % len(names)]``)."""

    def initialize(self, store, registry=None, names=()):
        self.store = store
        self.registry = registry
        self.names = names


class SubscribersHandler(ControlHandler):
    def get(self):
        if self.registry is not None:
            self.write(str(self.registry.stats()["connections"]))
        else:
            self.write(str(len(self.store.subscribers)))


class InfoHandler(ControlHandler):
    def get(self):
        self.write({**provenance(), "topics": len(self.names)})


class StatsHandler(ControlHandler):
    def get(self):
        if self.registry is not None:
            self.write(self.registry.stats())
            return
        stats = getattr(self.store, "stats", None)
        self.write(stats() if stats else {})


class BurstHandler(ControlHandler):
    async def get(self):
        messages = int(self.get_argument("messages"))
        per_iter = int(self.get_argument("per_iter", "100"))
        size = int(self.get_argument("size", "90"))
        start = int(self.get_argument("start", "0"))
        rate = float(self.get_argument("rate", "0"))
        clock = time.monotonic_ns
        end = start + messages
        make = payload
        t0 = clock()
        if self.registry is not None:
            # Topics mode: tick seq goes to topic seq % T.
            submit_to = self.registry.submit
            names = self.names
            count = len(names)
            for first in range(start, end, per_iter):
                for seq in range(first, min(end, first + per_iter)):
                    submit_to(names[seq % count], make(seq, clock(), size))
                ahead = (t0 + (first + per_iter - start) * 1e9 / rate - clock()) if rate else 0
                await asyncio.sleep(max(0.0, ahead / 1e9))
            self.write({"submitted": messages})
            return
        submit = self.store.submit
        for first in range(start, end, per_iter):
            for seq in range(first, min(end, first + per_iter)):
                submit(make(seq, clock(), size))
            ahead = (t0 + (first + per_iter - start) * 1e9 / rate - clock()) if rate else 0
            await asyncio.sleep(max(0.0, ahead / 1e9))
        self.write({"submitted": messages})


class CutHandler(ControlHandler):
    """Close every subscriber's connection at once, server-side (storm scenario)."""

    def get(self):
        if self.registry is not None:
            raise tornado.web.HTTPError(404, "no /cut in topics mode")
        cut = 0
        for handler in list(self.store.subscribers):
            # Abruptly, as a network blip would: the socket closes, nothing is ended.
            handler._close_stream()
            cut += 1
        self.write({"cut": cut})


class PacedHandler(ControlHandler):
    async def get(self):
        messages = int(self.get_argument("messages"))
        rate = float(self.get_argument("rate"))
        size = int(self.get_argument("size", "90"))
        if self.registry is not None:
            names, submit_to = self.names, self.registry.submit

            def submit(message, seq=None):
                return submit_to(names[seq % len(names)], message)
        else:
            store_submit = self.store.submit

            def submit(message, seq=None):
                return store_submit(message)
        interval = round(1e9 / rate)
        t0 = time.monotonic_ns() + 10_000_000
        seq = late = 0
        while seq < messages:
            now = time.monotonic_ns()
            due = t0 + seq * interval
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            if now - due > interval:
                late += 1
            while seq < messages and t0 + seq * interval <= now:
                submit(payload(seq, t0 + seq * interval, size), seq)
                seq += 1
        self.write({"submitted": messages, "late": late})


class NoDelayHTTPServer(tornado.httpserver.HTTPServer):
    """Sets TCP_NODELAY on every accepted socket (``--nodelay``, a diagnostic: Tornado
    leaves Nagle on for a streaming response; an SSE response never finishes, so it
    stays off; WebSocket upgrades turn it back on, hence SSE only)."""

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        super().handle_stream(stream, address)


async def serve(port: int, transport: str, capacity: int, nodelay: bool = False,
                topics: int = 0, metrics: bool = False, shed_port: int = 0,
                compress: bool = False) -> None:
    kwargs = {"capacity": capacity} if capacity and "backend" in vars(tornadose) else {}
    if topics:
        # Only this package has topics (not the reference, tornadose 0.4.1).
        from tornadose.handlers import TopicEventSource, TopicWebSocketSubscriber
        from tornadose.topics import TopicRegistry

        registry = TopicRegistry(QueueStore, **kwargs)
        names = [topic_name(t) for t in range(topics)]
        for name in names:  # created now, not while measuring
            registry.topic(name)
        handler = {"sse": TopicEventSource, "ws": TopicWebSocketSubscriber}[transport]
        subscriber = (rf"/{transport}", handler, {"registry": registry})
        control = {"store": None, "registry": registry, "names": names}
    else:
        store = QueueStore(**kwargs)
        routes = HANDLERS if transport == "both" else {transport: HANDLERS[transport]}
        subscriber = [(rf"/{name}", handler, {"store": store}) for name, handler in routes.items()]
        control = {"store": store}
    if not isinstance(subscriber, list):
        subscriber = [subscriber]
    app = tornado.web.Application(
        [
            *subscriber,
            (r"/subscribers", SubscribersHandler, control),
            (r"/info", InfoHandler, control),
            (r"/stats", StatsHandler, control),
            (r"/burst", BurstHandler, control),
            (r"/paced", PacedHandler, control),
            (r"/cut", CutHandler, control),
        ],
        **({"tornadose_compression": True} if compress else {}),
    )
    if metrics:
        from tornadose.metrics import MetricsHandler, install

        install()  # times every fan-out pass from now on
        app.add_handlers(r".*", [(r"/metrics", MetricsHandler)])
    if nodelay:
        server = NoDelayHTTPServer(app)
    elif hasattr(tornadose, "make_server"):
        server = tornadose.make_server(app)  # how this package says to serve
    else:  # the reference, tornadose 0.4.1
        server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096))
    if shed_port:
        # The same subscriber routes, on a server that is always within its descriptor
        # headroom: every connection is refused (bench/shed.py).
        shed_app = tornado.web.Application(subscriber, tornadose_fd_headroom=1 << 30)
        shedding = tornadose.make_server(shed_app)
        shedding.add_sockets(tornado.netutil.bind_sockets(shed_port, "127.0.0.1", backlog=4096))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=[*sorted(HANDLERS), "both"], required=True,
                        help="both: /sse and /ws on one store (soak scenario)")
    parser.add_argument("--capacity", type=int, default=0,
                        help="QueueStore ring capacity (this package only; 0: its default)")
    parser.add_argument("--nodelay", action="store_true",
                        help="TCP_NODELAY on accepted sockets (SSE only; a diagnostic)")
    parser.add_argument("--metrics", action="store_true",
                        help="install tornadose.metrics and serve /metrics (this package only)")
    parser.add_argument("--shed-port", type=int, default=0,
                        help="also serve, on this port, a server that refuses every "
                             "connection at accept (this package only; bench/shed.py)")
    parser.add_argument("--topics", type=int, default=0,
                        help="topics mode: a TopicRegistry(QueueStore) of T topics S000.. "
                             "(this package only; 0: one QueueStore)")
    parser.add_argument("--compress", action="store_true",
                        help="tornadose_compression=True: gzip'd SSE, permessage-deflate "
                             "(this package only; bench/compression.py)")
    parser.add_argument("--ticks", action="store_true",
                        help="submit market ticks (JSON objects, see tick()) instead of "
                             "padded text")
    args = parser.parse_args()
    if args.ticks:
        global payload
        payload = tick
    if args.topics and not 1 <= args.topics <= 1000:
        parser.error("--topics must be 1..1000 (names S000..S999)")
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"bench.server: {json.dumps(provenance())}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.port, args.transport, args.capacity, args.nodelay, args.topics,
                      args.metrics, args.shed_port, args.compress))


if __name__ == "__main__":
    main()
