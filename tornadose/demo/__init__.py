"""A runnable demo: ``python -m tornadose.demo`` serves a live page on http://127.0.0.1:8000/.

A DataStore (latest value) and a QueueStore (every tick) receive a generated value every
second; each is served over Server-Sent Events and WebSocket, and the page shows both.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from tornado.ioloop import PeriodicCallback
from tornado.web import Application, RequestHandler, StaticFileHandler

from .. import backend
from ..handlers import EventSource, WebSocketSubscriber
from ..stores import DataStore, QueueStore

STATIC = os.path.join(os.path.dirname(__file__), "static")


class StatsHandler(RequestHandler):
    """``GET /stats``: the stores' counters as JSON."""

    def initialize(self, stores: dict[str, Any]) -> None:
        self.stores = stores

    def get(self) -> None:
        self.write({"backend": backend, **{name: s.stats() for name, s in self.stores.items()}})


class Ticker:
    """Generates a random-walk price and submits it to both stores."""

    def __init__(self, latest: DataStore, ticks: QueueStore) -> None:
        self.latest = latest
        self.ticks = ticks
        self.seq = 0
        self.price = 100.0

    def tick(self) -> None:
        self.seq += 1
        self.price = max(0.01, self.price * (1 + random.gauss(0, 0.002)))
        message = {"seq": self.seq, "price": round(self.price, 2), "time": time.time()}
        self.latest.submit(message)
        self.ticks.submit(message)


def make_app(interval: float = 1.0) -> tuple[Application, PeriodicCallback]:
    """Return the demo application and the (not yet started) ticker callback."""
    latest = DataStore()
    ticks = QueueStore()
    ticker = Ticker(latest, ticks)
    app = Application(
        [
            (r"/latest/sse", EventSource, {"store": latest}),
            (r"/latest/ws", WebSocketSubscriber, {"store": latest}),
            (r"/ticks/sse", EventSource, {"store": ticks}),
            (r"/ticks/ws", WebSocketSubscriber, {"store": ticks}),
            (r"/stats", StatsHandler, {"stores": {"latest": latest, "ticks": ticks}}),
            (r"/()", StaticFileHandler, {"path": STATIC, "default_filename": "index.html"}),
        ]
    )
    return app, PeriodicCallback(ticker.tick, interval * 1000)
