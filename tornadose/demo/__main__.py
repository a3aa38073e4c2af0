"""Serve the tornadose demo: a synthetic market feed and a live ticker page.

Then open the printed address. With --redis, the feed travels through a Redis channel;
with --processes N as well, N server processes share the port and one more process
generates the feed into Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from .. import backend
from ..core.backend import REASON
from .app import CHANNEL, Demo, trades_registry
from .feed import MarketFeed, make_symbols

logger = logging.getLogger("tornadose.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tornadose.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--symbols", type=int, default=500, metavar="N", help="symbols in the feed (default 500)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="ticks per second, all symbols together (default 500)",
    )
    parser.add_argument(
        "--interval", type=float, help="seconds between ticks (the same as --rate 1/INTERVAL)"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="carry the feed through Redis, e.g. redis://127.0.0.1:6379/0"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="server processes (default 1; more need --redis)",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="compress every stream whose client accepts it (gzip SSE, permessage-deflate)",
    )
    parser.add_argument(
        "--entitlements",
        action="store_true",
        help="quotes and trades need ?user=pro (every symbol) or ?user=free (the first 10)",
    )
    args = parser.parse_args(argv)
    if args.interval is not None:
        if args.interval <= 0:
            parser.error("--interval must be positive")
        args.rate = 1.0 / args.interval
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if args.symbols < 1:
        parser.error("--symbols must be at least 1")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes > 1 and not args.redis:
        parser.error(
            "--processes N needs --redis URL: the processes share one feed through Redis "
            "(e.g. --processes 4 --redis redis://127.0.0.1:6379)"
        )
    if args.redis:
        try:
            args.redis_kwargs = redis_kwargs(args.redis)
        except ImportError as exc:
            parser.error(f"--redis: {exc}")
        except ValueError as exc:
            parser.error(f"--redis: bad URL {args.redis!r}: {exc}")
    else:
        args.redis_kwargs = None
    return args


def _redis() -> Any:
    """The redis package, once RedisStore and redis-py are known to be there; else
    ``ImportError`` saying what is missing."""
    try:
        from ..stores import RedisStore  # noqa: F401  (only: is it there?)
    except ImportError as exc:
        raise ImportError(f"RedisStore is not available in this tornadose ({exc})") from exc
    try:
        import redis
        import redis.asyncio.connection
    except ImportError as exc:
        raise ImportError('it needs redis-py: pip install "tornadose[redis]"') from exc
    return redis


def redis_kwargs(url: str) -> dict[str, Any]:
    """RedisStore keyword arguments for a ``redis://``, ``rediss://`` or ``unix://``
    URL. Raises ``ImportError`` (saying what to install) without RedisStore or
    redis-py, ``ValueError`` for a bad URL."""
    connection = _redis().asyncio.connection
    kwargs = connection.parse_url(url)
    connection_class = kwargs.pop("connection_class", None)
    if connection_class is connection.UnixDomainSocketConnection:
        kwargs["unix_socket_path"] = kwargs.pop("path")
    elif connection_class is connection.SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def check_redis(args: argparse.Namespace) -> None:
    """Exit with a clear message now, rather than from every process later, when Redis
    does not answer."""
    client = _redis().Redis(**args.redis_kwargs, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        sys.exit(f"tornadose demo: cannot reach Redis at {args.redis}: {exc}")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.redis:
        check_redis(args)
    from tornado.netutil import bind_sockets

    from ..transport.server import DEFAULT_BACKLOG

    try:
        sockets = bind_sockets(args.port, args.address, backlog=DEFAULT_BACKLOG)
    except OSError as exc:
        sys.exit(f"cannot listen on {args.address}:{args.port}: {exc.strerror}")
    port = sockets[0].getsockname()[1]
    how = f"{args.processes} processes, " if args.processes > 1 else ""
    via = f", feed through Redis at {args.redis}" if args.redis else ""
    via += ", compressed streams" if args.compress else ""
    args.banner = (
        f"tornadose demo ({backend} backend, {how}{args.symbols} symbols, "
        f"{args.rate:g} ticks/s{via}): http://{args.address}:{port}/"
    )
    if REASON is not None:
        args.banner += f"\n  pure-Python backend: {REASON}"
    try:
        if args.processes == 1:
            run(serve(args, sockets))
        else:
            # The parent only watches its children: it says where to go before forking.
            print(args.banner, flush=True)
            fork(args, sockets)
    except KeyboardInterrupt:
        pass


def fork(args: argparse.Namespace, sockets: list[socket.socket]) -> None:
    """Process 0 generates the feed into Redis, processes 1..N serve HTTP on the shared
    sockets. Tornado restarts a process that dies; each exits when the parent does."""
    from tornado.process import fork_processes

    parent = os.getpid()
    task = fork_processes(args.processes + 1)
    if task == 0:
        for sock in sockets:
            sock.close()
        run(publish_only(args), parent)
    else:
        run(serve(args, sockets, feed=False), parent)


def run(job: Any, parent: int | None = None) -> None:
    """Run ``job(stop)`` until SIGTERM or SIGINT (or the parent process going away)
    sets ``stop``; exit with a clear message when it raises ConnectionError."""

    async def supervised() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if parent is not None:
            watch = asyncio.ensure_future(_exit_with(parent, stop))
        try:
            await job(stop)
        finally:
            if parent is not None:
                watch.cancel()

    try:
        asyncio.run(supervised())
    except ConnectionError as exc:
        sys.exit(f"tornadose demo: {exc}")


async def _exit_with(parent: int, stop: asyncio.Event) -> None:
    # A child whose parent is gone (killed, not interrupted) must not serve on alone.
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def serve(args: argparse.Namespace, sockets: list[socket.socket], feed: bool = True) -> Any:
    async def serving(stop: asyncio.Event) -> None:
        from .. import make_server

        demo = Demo(
            make_symbols(args.symbols),
            args.rate,
            redis=args.redis_kwargs,
            feed=feed,
            processes=args.processes,
            entitlements=args.entitlements,
            compress=args.compress,
        )
        try:
            await demo.start()
        except ConnectionError as exc:
            raise ConnectionError(f"cannot reach Redis at {args.redis}: {exc}") from None
        server = make_server(demo.app)
        server.add_sockets(sockets)
        if args.processes == 1:  # ready: say where to go
            print(args.banner, flush=True)
        await stop.wait()
        # Streams end cleanly first (Tornado's close_all_connections does not reach
        # WebSockets), then the server stops.
        await demo.close()
        server.stop()
        await server.close_all_connections()

    return serving


def publish_only(args: argparse.Namespace) -> Any:
    async def publishing(stop: asyncio.Event) -> None:
        from ..stores import RedisStore

        symbols = make_symbols(args.symbols)
        store = RedisStore(channel=CHANNEL, **args.redis_kwargs)
        limits = {"max_topics": len(symbols), "max_topics_per_subscriber": len(symbols)}
        trades = trades_registry(args.redis_kwargs, **limits)
        for symbol in symbols:
            trades.topic(symbol)
        try:
            await asyncio.wait_for(store.start(), 10)
            await asyncio.wait_for(trades.start(), 10)
        except asyncio.TimeoutError:
            await store.aclose()
            await trades.aclose()
            raise ConnectionError(f"cannot reach Redis at {args.redis}") from None
        await _servers_listening(args, stop)

        def publish(tick: dict[str, Any]) -> None:
            store.submit(tick)
            trades.submit(tick["symbol"], tick)

        feed = MarketFeed(symbols, args.rate, publish)
        feed.start()
        await stop.wait()
        feed.stop()
        await store.aclose()
        await trades.aclose()

    return publishing


async def _servers_listening(
    args: argparse.Namespace, stop: asyncio.Event, timeout: float = 10.0
) -> None:
    """Wait (at most ``timeout`` seconds) until every server process listens to the
    channel, so that the opening ticks, the snapshot of every symbol, reach them all.
    Redis pub/sub keeps nothing for late listeners."""
    client = _redis().asyncio.Redis(**args.redis_kwargs)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        # The servers, and this process's own store.
        while asyncio.get_running_loop().time() < deadline and not stop.is_set():
            [(_, listening)] = await client.pubsub_numsub(CHANNEL)
            if listening >= args.processes + 1:
                return
            await asyncio.sleep(0.05)
        logger.info("not every server listens to Redis yet; starting the feed anyway")
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
