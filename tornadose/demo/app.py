"""The demo's stores, routes and counters.

URLs (``<topics>``: symbols, comma-separated, in the path or as ``?topics=``):

- ``/``: the page (``static/``), a live ticker table.
- ``/quotes/sse/<topics>``, ``/quotes/ws/<topics>``: latest price per symbol (one
  latest-value topic per symbol): a snapshot of every requested symbol, then updates.
- ``/trades/sse/<topics>``, ``/trades/ws/<topics>``: every tick of the requested symbols
  (one every-message topic per symbol). With Redis these topics are views of one Redis
  stream, so a client resumes them exactly on any server process.
- ``/ticks/sse``, ``/ticks/ws``: every tick of every symbol; ``/latest/sse``,
  ``/latest/ws``: the newest tick of any symbol.
- ``/symbols``: the feed's symbols, JSON; ``/stats``: counters, JSON.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Any

import orjson
from tornado.ioloop import PeriodicCallback
from tornado.web import Application, HTTPError, RequestHandler, StaticFileHandler

from .. import backend
from ..core.backend import REASON
from ..handlers import EventSource, TopicEventSource, TopicWebSocketSubscriber, WebSocketSubscriber
from ..stores import DataStore, QueueStore
from ..topics import TopicRegistry
from .feed import MarketFeed

__all__ = ["CHANNEL", "STATIC", "TRADES_STREAM", "Demo", "trades_registry"]

logger = logging.getLogger("tornadose.demo")

STATIC = os.path.join(os.path.dirname(__file__), "static")
#: The Redis channel the feed travels on with ``--redis``.
CHANNEL = "tornadose-demo"
#: The Redis stream of the trades topics with ``--redis``.
TRADES_STREAM = "tornadose-demo-trades"
# The trades topics share one log: at the default 500 ticks/s, 65,536 ticks are ~2 min
# of history for a reconnecting page to resume from (~8 MiB of frames).
_TRADES_CAPACITY = 65536
#: --entitlements: how many symbols (the first ones) the "free" demo user may see.
FREE_SYMBOLS = 10
# Seconds of samples behind the rates in /stats.
_WINDOW = 5


class Demo:
    """Everything one server process of the demo holds.

    Without ``redis`` the feed runs here (when ``feed`` is true) and its ticks go
    straight into the stores. With ``redis`` (keyword arguments for
    :class:`~tornadose.redis.pubsub.RedisStore`) the ticks travel through a Redis channel:
    ``/ticks`` serves that channel's store directly, and each tick that arrives is
    passed on to the latest-value stores, so that any number of processes serve the same
    feed. The trades topics then read a Redis stream that the feed also writes to: their
    ids are the stream's, the same in every process.
    """

    def __init__(
        self,
        symbols: list[str],
        rate: float,
        *,
        redis: dict[str, Any] | None = None,
        feed: bool = True,
        processes: int = 1,
        sse_retry: int = 1000,
        entitlements: bool = False,
        compress: bool = False,
    ) -> None:
        self.symbols = symbols
        #: With entitlements: which symbols each demo user may see (see _Entitled).
        self.plans: dict[str, frozenset[str]] | None = None
        if entitlements:
            self.plans = {"pro": frozenset(symbols), "free": frozenset(symbols[:FREE_SYMBOLS])}
        self.rate = rate
        self.redis = redis
        self.processes = processes
        self.ticks: Any
        if redis is None:
            self.ticks = QueueStore(name="ticks")
        else:
            from ..stores import RedisStore

            self.ticks = RedisStore(channel=CHANNEL, name="ticks", **redis)
            self.ticks.register(_Relay(self))
        self.latest = DataStore(name="latest")
        # The symbols are known: subscribers may ask for any of them (all at once,
        # if they like), and for nothing else.
        limits = {"max_topics": len(symbols), "max_topics_per_subscriber": len(symbols)}
        self.quotes = TopicRegistry(
            DataStore, create_on_subscribe=False, name="quotes", **limits
        )
        self.trades = trades_registry(redis, **limits)
        for symbol in symbols:
            self.quotes.topic(symbol)
            self.trades.topic(symbol)
        self.feed: MarketFeed | None = None
        if feed:
            self.feed = MarketFeed(symbols, rate, self.publish)
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=_WINDOW + 1)
        self._topic_stats: dict[str, dict[str, int]] = {}
        self._rates: dict[str, float] = {}
        self._sampler: PeriodicCallback | None = None
        self.compress = compress
        self.app = Application(
            self.routes(), sse_retry=sse_retry, tornadose_compression=compress or None
        )

    def routes(self) -> list[Any]:
        quotes, trades = {"registry": self.quotes}, {"registry": self.trades}
        sse, ws = (_TopicSSE, _TopicWS) if self.plans is None else (_EntitledSSE, _EntitledWS)
        if self.plans is not None:
            quotes = {**quotes, "plans": self.plans}
            trades = {**trades, "plans": self.plans}
        return [
            (r"/quotes/sse(?:/([^/]+))?", sse, quotes),
            (r"/quotes/ws(?:/([^/]+))?", ws, quotes),
            (r"/trades/sse(?:/([^/]+))?", sse, trades),
            (r"/trades/ws(?:/([^/]+))?", ws, trades),
            (r"/ticks/sse", EventSource, {"store": self.ticks}),
            (r"/ticks/ws", WebSocketSubscriber, {"store": self.ticks}),
            (r"/latest/sse", EventSource, {"store": self.latest}),
            (r"/latest/ws", WebSocketSubscriber, {"store": self.latest}),
            (r"/symbols", SymbolsHandler, {"demo": self}),
            (r"/stats", StatsHandler, {"demo": self}),
            (r"/metrics", _metrics_handler()),
            (r"/static/(.*)", StaticFileHandler, {"path": STATIC}),
            (r"/()", StaticFileHandler, {"path": STATIC, "default_filename": "index.html"}),
        ]

    async def start(self, redis_timeout: float = 10.0) -> None:
        """Start the feed (if here) and the counters; with Redis, first wait until this
        process listens to the channel. Raises ``ConnectionError`` when Redis cannot be
        reached within ``redis_timeout`` seconds."""
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.ticks.start(), redis_timeout)
                await asyncio.wait_for(self.trades.start(), redis_timeout)
            except asyncio.TimeoutError:
                await self.ticks.aclose()
                await self.trades.aclose()
                raise ConnectionError(f"no answer within {redis_timeout:g} s") from None
        if self.feed is not None:
            self.feed.start()
        self._sample()
        self._sampler = PeriodicCallback(self._sample, 1000)
        self._sampler.start()

    async def close(self) -> None:
        """Stop the feed and end every stream cleanly (SSE responses finish,
        WebSockets close with 1001)."""
        if self.feed is not None:
            self.feed.stop()
        if self._sampler is not None:
            self._sampler.stop()
        for store in (self.ticks, self.latest):
            store.close()
        self.quotes.close()
        self.trades.close()
        if self.redis is not None:
            await self.ticks.aclose()
            await self.trades.aclose()

    def publish(self, tick: dict[str, Any]) -> None:
        """Hand one tick of the feed to every store (with Redis, to the channel and the
        trades stream, from where every process gets it)."""
        self.ticks.submit(tick)
        if self.redis is None:
            self.pass_on(tick)
        else:
            self.trades.submit(tick["symbol"], tick)

    def pass_on(self, tick: dict[str, Any]) -> None:
        """Hand one tick to the stores that are local to this process."""
        self.latest.submit(tick)
        symbol = tick["symbol"]
        self.quotes.submit(symbol, tick)
        if self.redis is None:
            self.trades.submit(symbol, tick)

    # -- counters -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters: subscribers and the plain streams' counters as of now; rates
        over the last seconds, and the topics' sums (``quotes``, ``trades``, and what
        they add to the totals) as of the last one-second sample, since summing hundreds
        of topics on every request would cost more than the answer is worth."""
        parts = {"ticks": self.ticks.stats(), "latest": self.latest.stats(), **self._topic_stats}
        return {
            "backend": backend,
            "backend_reason": REASON,
            "pid": os.getpid(),
            "processes": self.processes,
            "redis": self.redis is not None,
            "compression": self.compress,
            "symbols": len(self.symbols),
            "rate": self.rate,
            # Connections: topic connections, plus subscribers of the plain streams
            # (with Redis, the relay subscribes to /ticks: not a client).
            "subscribers": (
                self.quotes.connections
                + self.trades.connections
                + parts["latest"]["subscribers"]
                + parts["ticks"]["subscribers"]
                - (self.redis is not None)
            ),
            **self._rates,
            "max_lag": max(p["max_lag"] for p in parts.values()),
            "lapped": sum(p["lapped"] for p in parts.values()),
            "timed_out": sum(p["timed_out"] for p in parts.values()),
            **parts,
        }

    def _sample(self) -> None:
        """Once a second: sum the topics' counters, and the rates over the last seconds."""
        self._topic_stats = {"quotes": self.quotes.stats(), "trades": self.trades.stats()}
        parts = [self.ticks.stats(), self.latest.stats(), *self._topic_stats.values()]
        now = time.monotonic()
        self._samples.append((now, parts[0]["messages"], sum(p["delivered"] for p in parts)))
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[0] - first[0]
        self._rates = {
            "messages_per_second": round((last[1] - first[1]) / elapsed, 1) if elapsed else 0.0,
            "deliveries_per_second": round((last[2] - first[2]) / elapsed, 1) if elapsed else 0.0,
        }


def _metrics_handler() -> type[RequestHandler]:
    """tornadose.metrics.MetricsHandler, or, without prometheus_client, a handler that
    says how to get it."""
    try:
        from ..metrics import MetricsHandler, install
    except ImportError:

        class NoMetrics(RequestHandler):
            def get(self) -> None:
                self.set_status(501)
                self.finish('metrics need prometheus_client: pip install "tornadose[metrics]"\n')

        return NoMetrics
    install()  # now, so that fan-out passes are timed before the first scrape
    return MetricsHandler


def trades_registry(redis: dict[str, Any] | None, **limits: Any) -> TopicRegistry:
    """The trades topics: a local log, or with ``redis`` one Redis stream."""
    if redis is None:
        return TopicRegistry(
            QueueStore,
            create_on_subscribe=False,
            capacity=_TRADES_CAPACITY,
            name="trades",
            **limits,
        )
    from ..stores import RedisStreamStore

    return TopicRegistry(
        RedisStreamStore,
        create_on_subscribe=False,
        capacity=_TRADES_CAPACITY,
        stream=TRADES_STREAM,
        name="trades",
        **limits,
        **redis,
    )


class _TopicSSE(TopicEventSource):
    # Which of several server processes serves this stream (X-Served-By: <pid>).
    def set_default_headers(self) -> None:
        self.set_header("X-Served-By", str(os.getpid()))


class _TopicWS(TopicWebSocketSubscriber):
    def set_default_headers(self) -> None:
        self.set_header("X-Served-By", str(os.getpid()))


class _Entitled:
    """``--entitlements``: who may see which symbols, as a licensed feed does it. The
    user is the ``user`` query parameter (a stand-in for a signed cookie or a token:
    this is a demo), ``pro`` sees every symbol, ``free`` the first FREE_SYMBOLS;
    anyone else gets 401, and a symbol outside the plan 403 (or, over a WebSocket, a
    ``forbidden`` error)."""

    plans: dict[str, frozenset[str]]

    def initialize(self, plans: dict[str, frozenset[str]], **kwargs: Any) -> None:
        self.plans = plans
        super().initialize(**kwargs)  # type: ignore[misc]

    def get_current_user(self) -> str | None:
        user = self.get_query_argument("user", None)  # type: ignore[attr-defined]
        return user if user in self.plans else None

    def prepare(self) -> Any:
        if not self.current_user:  # type: ignore[attr-defined]
            raise HTTPError(401, "demo users: ?user=pro or ?user=free")
        return super().prepare()  # type: ignore[misc]

    def authorize_topics(self, topics: list[str]) -> list[str]:
        allowed = self.plans[self.current_user]  # type: ignore[attr-defined]
        return [topic for topic in topics if topic in allowed]


class _EntitledSSE(_Entitled, _TopicSSE):
    pass


class _EntitledWS(_Entitled, _TopicWS):
    pass


class _Relay:
    """With Redis: a subscriber of the channel's store that passes each tick on."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo

    def submit(self, message: Any) -> None:
        try:
            tick = orjson.loads(message)
            symbol = tick["symbol"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            # Another program publishing on the channel; not a tick of ours.
            logger.debug("ignored a message that is not a tick: %.80r", message)
            return
        if symbol in self.demo.quotes:
            self.demo.pass_on(tick)


class SymbolsHandler(RequestHandler):
    """``GET /symbols``: the feed's symbols, in order, as a JSON list."""

    def initialize(self, demo: Demo) -> None:
        self.demo = demo

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        symbols = self.demo.symbols
        plans = self.demo.plans
        if plans is not None:  # --entitlements: only what ?user= may see
            allowed = plans.get(self.get_query_argument("user", ""), frozenset())
            symbols = [symbol for symbol in symbols if symbol in allowed]
        self.write(orjson.dumps(symbols))


class StatsHandler(RequestHandler):
    """``GET /stats``: backend, subscribers, messages/s, lag and drop counters, summed
    over all stores, then each group's own counters, as JSON."""

    def initialize(self, demo: Demo) -> None:
        self.demo = demo

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.write(orjson.dumps(self.demo.stats()))
