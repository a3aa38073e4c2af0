"""A bare Tornado SSE server: the ``bare-tornado`` contender of the admission scenario.

    python -m bench.bare --port 8888 --transport sse

Its ``/sse`` handler only sets the SSE headers (``Content-Type: text/event-stream``,
``Cache-Control: no-cache``), flushes them and waits until the client goes away: what
any Tornado SSE endpoint costs per new subscriber before it does anything of its own.
Control routes as in bench/server.py: ``/subscribers`` (handlers whose headers are
flushed and that are still open), ``/info``, ``/stats`` (``{}``) and ``/cut``.
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
import tornado.iostream
import tornado.netutil
import tornado.web

OPEN = set()


def raise_nofile_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BareEventSource(tornado.web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            return
        OPEN.add(self)
        try:
            await self._done
        finally:
            OPEN.discard(self)

    def on_connection_close(self):
        OPEN.discard(self)
        done = getattr(self, "_done", None)
        if done is not None and not done.done():
            done.set_result(None)


def info():
    return {"server": "bare-tornado", "tornado": tornado.version, "python": sys.executable,
            "pid": os.getpid(), "backend": None}


class Subscribers(tornado.web.RequestHandler):
    def get(self):
        self.write(str(len(OPEN)))


class Info(tornado.web.RequestHandler):
    def get(self):
        self.write(info())


class Stats(tornado.web.RequestHandler):
    def get(self):
        self.write({})


class Cut(tornado.web.RequestHandler):
    def get(self):
        cut = 0
        for handler in list(OPEN):
            stream = handler.request.connection.stream
            if not stream.closed():
                stream.close()
                cut += 1
        self.write({"cut": cut})


async def serve(port):
    app = tornado.web.Application([(r"/sse", BareEventSource), (r"/subscribers", Subscribers),
                                   (r"/info", Info), (r"/stats", Stats), (r"/cut", Cut)])
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096))
    await asyncio.Event().wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=["sse"], default="sse")
    args = parser.parse_args()
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"bench.bare: {json.dumps(info())}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
