"""A WebSocket peer: the ``websockets`` library's ``broadcast()`` (asyncio implementation).

    python -m bench.wsbroadcast --port 8888

Serves ``/ws`` with :func:`websockets.asyncio.server.serve` (no compression, no
keepalive pings: the load client neither negotiates the one nor answers the other)
and the same control routes as :mod:`bench.server`, answered from
``process_request``.  Each message is sent to every open connection with one
``broadcast()`` call, as a text frame holding ``{"id": ..., "data": ...}`` like
tornadose's, with the same payload.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import broadcast, serve

from bench.floor import payload

CONNECTIONS = set()


def message(seq, text):
    return f'{{"id":"wsb-{seq}","data":"{text}"}}'


async def burst(args):
    messages = int(args["messages"])
    per_iter = int(args.get("per_iter", 100))
    size = int(args.get("size", 90))
    start = int(args.get("start", 0))
    rate = float(args.get("rate", 0))
    end = start + messages
    clock = time.monotonic_ns
    t0 = clock()
    for first in range(start, end, per_iter):
        for seq in range(first, min(end, first + per_iter)):
            broadcast(CONNECTIONS, message(seq, payload(seq, clock(), size)))
        ahead = (t0 + (first + per_iter - start) * 1e9 / rate - clock()) if rate else 0
        await asyncio.sleep(max(0.0, ahead / 1e9))
    return {"submitted": messages}


async def paced(args):
    messages = int(args["messages"])
    size = int(args.get("size", 90))
    interval = round(1e9 / float(args["rate"]))
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
            broadcast(CONNECTIONS, message(seq, payload(seq, t0 + seq * interval, size)))
            seq += 1
    return {"submitted": messages, "late": late}


async def process_request(connection, request):
    url = urlsplit(request.path)
    if url.path == "/ws":
        return None
    args = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if url.path == "/subscribers":
        body = str(len(CONNECTIONS))
    elif url.path == "/info":
        body = json.dumps({"server": "websockets", "websockets": websockets.__version__,
                           "pid": os.getpid(), "python": sys.executable})
    elif url.path == "/stats":
        body = "{}"
    elif url.path == "/burst":
        body = json.dumps(await burst(args))
    elif url.path == "/paced":
        body = json.dumps(await paced(args))
    else:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return connection.respond(HTTPStatus.OK, body)


async def handler(connection):
    CONNECTIONS.add(connection)
    try:
        await connection.wait_closed()
    finally:
        CONNECTIONS.discard(connection)


async def main_async(port):
    # open_timeout=None: a /burst trigger is answered once every message is sent, which
    # takes longer than websockets' default 10 s opening handshake at N=1000.
    async with serve(handler, "127.0.0.1", port, process_request=process_request,
                     compression=None, ping_interval=None, max_size=2**16, backlog=4096,
                     open_timeout=None):
        await asyncio.Event().wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=["ws"], default="ws")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args.port))


if __name__ == "__main__":
    main()
