"""The demo: ``python -m tornadose.demo``, then open http://127.0.0.1:8000/.

A synthetic market feed (500 symbols by default, random-walk prices) served over
Server-Sent Events and WebSockets, with a page showing a live ticker table. See
:mod:`tornadose.demo.app` for the URLs and ``python -m tornadose.demo --help`` for the
options (port, symbols, rate, Redis, processes).
"""

from .app import Demo
from .feed import MarketFeed, make_symbols

__all__ = ["Demo", "MarketFeed", "make_symbols"]
