"""A subscriber server living at a low open-files limit, served by tornadose.listen.

    python tests/servers/fd_server.py --nofile 512 [--rate 100]

Sets RLIMIT_NOFILE to ``--nofile``, serves ``/sse`` (EventSource of a QueueStore) on a
free port and publishes ``<n>`` (n = 0, 1, ...) at ``--rate`` messages per second.
Prints ``port <port>`` once it serves. Logs WARNING and above to stderr, as an app
would. SIGTERM ends it.
"""

import argparse
import asyncio
import logging
import resource
import signal

import tornado.web

import tornadose
from tornadose.handlers import EventSource
from tornadose.stores import QueueStore


async def main(rate: float) -> None:
    store = QueueStore()
    app = tornado.web.Application([(r"/sse", EventSource, {"store": store})])
    server = tornadose.listen(app, 0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    n = 0
    while not stop.is_set():
        store.submit(str(n))
        n += 1
        await asyncio.sleep(1 / rate)
    store.close()
    server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=512)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.rate))
