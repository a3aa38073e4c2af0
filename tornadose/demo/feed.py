"""A synthetic market feed: random-walk prices for a set of symbols, at a steady rate."""

from __future__ import annotations

import math
import random
import string
import time
from typing import Any, Callable

from tornado.ioloop import PeriodicCallback

__all__ = ["MarketFeed", "make_symbols"]

# Well-known tickers first, so that the page's first rows look familiar.
_KNOWN = (
    "AAPL MSFT NVDA AMZN GOOGL META TSLA BRK.B JPM V UNH XOM JNJ WMT MA PG AVGO HD CVX LLY "
    "MRK ABBV KO PEP COST ADBE CSCO ORCL CRM NFLX AMD INTC QCOM TXN IBM BA CAT GE MMM DIS "
    "NKE MCD SBUX PYPL UBER SHOP PLTR SNOW ABNB COIN"
).split()
# Ticks per second of the PeriodicCallback that emits them; each call emits what the
# rate owes since the previous call, so the rate holds whatever the loop's jitter.
_STEPS_PER_SECOND = 50


def make_symbols(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct ticker symbols: well-known ones first, then made-up 3- and
    4-letter ones (the same for a given ``seed``). Raises ``ValueError`` below 1."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    symbols = list(_KNOWN[:count])
    taken = set(symbols)
    rng = random.Random(seed)
    while len(symbols) < count:
        symbol = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.choice((3, 4))))
        if symbol not in taken:
            taken.add(symbol)
            symbols.append(symbol)
    return symbols


class MarketFeed:
    """Emits ticks for random symbols at ``rate`` ticks per second, each passed to
    ``publish``: ``{"seq", "symbol", "price", "open", "change", "pct", "time"}``, where
    ``seq`` counts ticks from 1, ``change``/``pct`` are against the symbol's opening
    price and ``time`` is the Unix time of the tick.

    :meth:`start` first publishes one opening tick per symbol, so that latest-value
    subscribers get a full snapshot at once. Opening prices depend only on the symbol
    (a restarted feed opens where the last one did); then prices follow a geometric
    random walk and never reach zero. An exception from ``publish`` propagates to the
    caller of :meth:`tick` (and is logged by Tornado when it happens in the periodic
    callback; the feed goes on).
    """

    def __init__(
        self,
        symbols: list[str],
        rate: float,
        publish: Callable[[dict[str, Any]], Any],
        seed: int | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.symbols = symbols
        self.rate = rate
        self.publish = publish
        self._rng = random.Random(seed)
        self.open = {s: round(random.Random(f"open {s}").uniform(8, 600), 2) for s in symbols}
        self.price = dict(self.open)
        self.seq = 0
        self._owed = 0.0
        self._last = 0.0
        self._timer: PeriodicCallback | None = None

    def tick(self) -> dict[str, Any]:
        """Move one random symbol's price and publish the tick; returns it."""
        rng = self._rng
        symbol = rng.choice(self.symbols)
        # ~0.1 % per tick: visible moves on the page, no runaway prices.
        price = max(0.01, self.price[symbol] * math.exp(rng.gauss(0.0, 0.001)))
        self.price[symbol] = price
        return self._publish(symbol, price)

    def _publish(self, symbol: str, price: float) -> dict[str, Any]:
        opening = self.open[symbol]
        self.seq += 1
        tick = {
            "seq": self.seq,
            "symbol": symbol,
            "price": round(price, 2),
            "open": opening,
            # (+ 0.0 turns a rounded -0.0 into 0.0.)
            "change": round(price - opening, 2) + 0.0,
            "pct": round((price / opening - 1.0) * 100.0, 2) + 0.0,
            "time": round(time.time(), 3),
        }
        self.publish(tick)
        return tick

    def start(self) -> None:
        """Publish every symbol's current price, then tick on the running IOLoop."""
        for symbol in self.symbols:
            self._publish(symbol, self.price[symbol])
        self._last = time.monotonic()
        self._timer = PeriodicCallback(self._step, 1000 / _STEPS_PER_SECOND)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _step(self) -> None:
        now = time.monotonic()
        # A stalled loop does not make up for more than a second of ticks at once.
        self._owed = min(self._owed + (now - self._last) * self.rate, max(self.rate, 1.0))
        self._last = now
        while self._owed >= 1.0:
            self._owed -= 1.0
            self.tick()
