"""The floor: pre-built frames written with plain non-blocking ``send()``, no framework.

    python -m bench.floor --port 8888 --transport sse --mode coalesced
    python -m bench.floor --port 8888 --transport sse --mode topics --topics 500 --nodelay

A single-threaded ``selectors`` (epoll) server that answers the SSE request or the
WebSocket handshake exactly as a subscriber expects, then, on the same control
routes as :mod:`bench.server` (``/subscribers``, ``/info``, ``/stats``, ``/burst``,
``/paced``, all GET), builds each message's frame once (the same payload and the
same kind of frame tornadose sends: an ``id:``/``data:`` SSE event in an HTTP chunk,
or a WebSocket text frame holding ``{"id": ..., "data": ...}``) and writes it to
every subscriber socket:

* ``--mode coalesced``: the frames of all messages submitted in one loop iteration
  are joined once and written with **one** ``send()`` per subscriber;
* ``--mode per-message``: one ``send()`` per message per subscriber;
* ``--mode topics`` (``floor-topics``, with ``--topics T``): a market feed. A
  subscriber names its topics in its URL (``/sse?topics=S000,S010,...``, names
  ``S000``..``S<T-1>``); message ``seq`` goes to topic ``seq % T``. Each message's frame
  is built once, labelled with its topic as tornadose's topic frames are (SSE
  ``event: S042``, WebSocket ``"event":"S042"``), and appended to the pending list of
  each connection subscribed to that topic, found through a topic -> connections
  index (so the cost follows deliveries, not connections x topics). At the end of the
  loop iteration each connection that got something has its frames joined, in submit
  order, and written with **one** ``send()``.

A send that does not take everything is the only bookkeeping: the rest waits in a
per-connection buffer for EPOLLOUT. Nothing else (no parsing of messages, no
objects per message, no timers, no per-subscriber state beyond that buffer) runs,
so this is the least CPU any Python server can spend on the same sockets.
Standard library only.
"""

import argparse
import base64
import hashlib
import json
import os
import resource
import selectors
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


def payload(seq, t_ns, size):
    """The benchmark message; the same function as in :mod:`bench.server`."""
    head = f"{seq:08d} @{t_ns}@ "
    return head + "x" * max(0, size - len(head))


def sse_event(seq, text):
    return b"id: floor-%d\ndata: %s\n\n" % (seq, text.encode())


def sse_topic_event(seq, topic, text):
    """The SSE event of a topic frame: ``id:``, ``event: <topic>``, ``data:``."""
    return b"id: floor-%d\nevent: %s\ndata: %s\n\n" % (seq, topic, text.encode())


def ws_frame(seq, text):
    return ws_text_frame(b'{"id":"floor-%d","data":"%s"}' % (seq, text.encode()))


def ws_topic_frame(seq, topic, text):
    """The WebSocket frame of a topic message: ``{"id":..,"event":"<topic>","data":..}``."""
    return ws_text_frame(b'{"id":"floor-%d","event":"%s","data":"%s"}'
                         % (seq, topic, text.encode()))


def topic_name(index):
    """Topic ``index``'s name, as :mod:`bench.server` and the load client spell it."""
    return f"S{index:03d}"


def ws_text_frame(body):
    n = len(body)
    if n < 126:
        return bytes((0x81, n)) + body
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + body
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + body


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class Conn:
    __slots__ = ("sock", "send", "head", "out", "subscriber", "topics", "pending")

    def __init__(self, sock):
        self.sock = sock
        self.send = sock.send
        self.head = b""
        self.out = None  # bytes not yet taken by the kernel
        self.subscriber = False
        self.topics = ()  # topic indices (--mode topics)
        self.pending = []  # this iteration's frames (--mode topics)


class Job:
    """A burst (``per_iter`` messages per loop iteration) or a paced schedule."""

    def __init__(self, kind, args, reply_to):
        self.reply_to = reply_to
        self.messages = int(args["messages"])
        self.size = int(args.get("size", 90))
        self.seq = int(args.get("start", 0))
        self.end = self.seq + self.messages
        self.per_iter = int(args.get("per_iter", 100))
        self.paced = kind == "paced"
        self.rate = float(args.get("rate", 0)) if not self.paced else 0
        self.t0 = time.monotonic_ns()
        self.first = self.seq
        self.late = 0
        if self.paced:
            self.interval = round(1e9 / float(args["rate"]))
            self.t0 = time.monotonic_ns() + 10_000_000

    def due(self, seq):
        return self.t0 + (seq - self.first) * self.interval

    def wait(self):
        """Seconds until the next message is due (0: now)."""
        if not self.paced:
            if not self.rate:
                return 0.0
            due = self.t0 + (self.seq - self.first) * 1e9 / self.rate
            return max(0.0, (due - time.monotonic_ns()) / 1e9)
        return max(0.0, (self.due(self.seq) - time.monotonic_ns()) / 1e9)

    def batch(self):
        """The (seq, payload) pairs to submit in this loop iteration."""
        if not self.paced:
            stop = min(self.end, self.seq + self.per_iter)
            now = time.monotonic_ns
            out = [(seq, payload(seq, now(), self.size)) for seq in range(self.seq, stop)]
            self.seq = stop
            return out
        now = time.monotonic_ns()
        out = []
        if now - self.due(self.seq) > self.interval:
            self.late += 1
        while self.seq < self.end and self.due(self.seq) <= now:
            out.append((self.seq, payload(self.seq, self.due(self.seq), self.size)))
            self.seq += 1
        return out

    @property
    def done(self):
        return self.seq >= self.end


class FloorServer:
    def __init__(self, port, transport, mode, nodelay=False, topics=0):
        self.nodelay = nodelay
        self.transport = transport
        self.coalesced = mode == "coalesced"
        self.mode = mode
        if mode == "topics" and topics < 1:
            raise SystemExit("--mode topics needs --topics T (T >= 1)")
        self.topics = topics if mode == "topics" else 0
        # topic name -> index, and the index: topic index -> subscribed connections
        self.topic_index = {topic_name(t): t for t in range(self.topics)}
        self.by_topic = [[] for _ in range(self.topics)]
        self.topic_labels = [topic_name(t).encode() for t in range(self.topics)]
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        self.listener.setblocking(False)
        self.sel.register(self.listener, READ, None)
        self.conns = {}  # fd -> Conn, handshake pending or control
        self.subs = {}  # fd -> Conn, streaming subscribers
        self.job = None
        self.deliveries = self.sends = 0

    # -- connections ------------------------------------------------------------------

    def accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            # Socket options as Tornado leaves a streaming response's socket: Nagle on,
            # unless --nodelay.
            sock.setblocking(False)
            if self.nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, READ, conn)

    def close(self, conn):
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        if self.subs.pop(fd, None) is not None:
            for t in conn.topics:
                self.by_topic[t].remove(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        if conn.subscriber:
            return  # nothing a subscriber sends matters here
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end >= 0:
            self.request(conn, conn.head[:end].decode("latin-1"))

    def request(self, conn, head):
        lines = head.split("\r\n")
        _, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == f"/{self.transport}":
            if self.topics:
                names = [name for name in args.get("topics", "").split(",") if name]
                topics = [self.topic_index.get(name) for name in dict.fromkeys(names)]
                if not topics or None in topics:
                    self.reply(conn, f"bad topics: {args.get('topics')!r}", 400)
                    return
                conn.topics = topics
                for t in topics:
                    self.by_topic[t].append(conn)
            if self.transport == "sse":
                response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                key = headers.get("sec-websocket-key", "").encode()
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            conn.sock.sendall(response)
            conn.subscriber = True
            conn.head = b""
            self.subs[conn.sock.fileno()] = conn
        elif path == "/subscribers":
            self.reply(conn, str(len(self.subs)))
        elif path == "/info":
            self.reply(conn, json.dumps({"server": "floor", "mode": self.mode, "pid": os.getpid(),
                                         "python": sys.executable, "topics": self.topics,
                                         "nodelay": self.nodelay}))
        elif path == "/stats":
            # writes: send() calls made (coalesced, per-message: those attempted)
            self.reply(conn, json.dumps({"subscribers": len(self.subs), "sends": self.sends,
                                         "writes": self.sends, "delivered": self.deliveries,
                                         "connections": len(self.subs),
                                         "topics": self.topics}))
        elif path in ("/burst", "/paced") and self.job is None:
            self.job = Job(path[1:], args, conn)
        else:
            self.reply(conn, "not found", 404)

    def reply(self, conn, body, status=200):
        body = body.encode()
        conn.sock.setblocking(True)
        conn.sock.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (status, len(body), body))
        self.close(conn)

    # -- fan-out ----------------------------------------------------------------------

    def writable(self, conn):
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn)
            return
        self.sends += 1
        del conn.out[:sent]
        if not conn.out:
            conn.out = None
            self.sel.modify(conn.sock, READ, conn)

    def backlog(self, conn, data):
        """Keep what the kernel did not take until EPOLLOUT."""
        if conn.out is None:
            conn.out = bytearray(data)
            self.sel.modify(conn.sock, READ | WRITE, conn)
        else:
            conn.out += data

    def fanout_topics(self, batch):
        """--mode topics: each frame once, to the connections of its topic; then one
        send() per connection that got something, its frames joined in submit order."""
        topics = self.topics
        labels = self.topic_labels
        by_topic = self.by_topic
        build = sse_topic_event if self.transport == "sse" else ws_topic_frame
        touched = []
        deliveries = 0
        for seq, text in batch:
            t = seq % topics
            frame = build(seq, labels[t], text)
            conns = by_topic[t]
            deliveries += len(conns)
            for conn in conns:
                pending = conn.pending
                if not pending:
                    touched.append(conn)
                pending.append(frame)
        sse = self.transport == "sse"
        dead = []
        # The hot loop: one plain non-blocking send() per connection that got frames.
        for conn in touched:
            data = b"".join(conn.pending)
            conn.pending.clear()
            if sse:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            if conn.out is None:
                try:
                    sent = conn.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    dead.append(conn)
                    continue
                if sent == len(data):
                    continue
                data = data[sent:]
            self.backlog(conn, data)
        self.sends += len(touched)
        self.deliveries += deliveries
        for conn in dead:
            self.close(conn)

    def fanout(self, batch):
        if self.topics:
            self.fanout_topics(batch)
            return
        if self.transport == "sse":
            events = [sse_event(seq, text) for seq, text in batch]
            frames = [chunk(b"".join(events))] if self.coalesced else [chunk(e) for e in events]
        else:
            frames = [ws_frame(seq, text) for seq, text in batch]
            if self.coalesced:
                frames = [b"".join(frames)]
        dead = []
        # The hot loop: one plain non-blocking send() per frame per subscriber.
        for conn in self.subs.values():
            send = conn.send
            for frame in frames:
                if conn.out is None:
                    try:
                        sent = send(frame)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        dead.append(conn)
                        break
                    if sent == len(frame):
                        continue
                    frame = frame[sent:]
                self.backlog(conn, frame)
        self.sends += len(frames) * len(self.subs)
        self.deliveries += len(batch) * len(self.subs)
        for conn in dead:
            self.close(conn)

    # -- loop -------------------------------------------------------------------------

    def run(self):
        select = self.sel.select
        while True:
            job = self.job
            timeout = None if job is None else job.wait()
            for key, events in select(timeout):
                conn = key.data
                if conn is None:
                    self.accept()
                    continue
                if events & WRITE and conn.out is not None:
                    self.writable(conn)
                if events & READ:
                    self.readable(conn)
            if job is not None and job.wait() == 0.0:
                batch = job.batch()
                if batch:
                    self.fanout(batch)
                if job.done:
                    self.job = None
                    result = {"submitted": job.messages, "late": job.late}
                    if job.reply_to.sock.fileno() >= 0:
                        self.reply(job.reply_to, json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=["sse", "ws"], required=True)
    parser.add_argument("--mode", choices=["coalesced", "per-message", "topics"],
                        default="coalesced")
    parser.add_argument("--topics", type=int, default=0,
                        help="--mode topics: number of topics T (S000..S<T-1>)")
    parser.add_argument("--nodelay", action="store_true", help="set TCP_NODELAY (Nagle off)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    FloorServer(args.port, args.transport, args.mode, args.nodelay, args.topics).run()


if __name__ == "__main__":
    main()
