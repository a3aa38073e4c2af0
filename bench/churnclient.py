"""Load client of the ``soak`` scenario: connections that come and go (Python, raw sockets).

    python -m bench.churnclient --port 8888 --rate 200 --duration 60

Opens ``--rate`` connections per second for ``--duration`` seconds, each to ``/sse`` or
``/ws`` of the bench server, keeps each for a lifetime drawn uniformly from 0 to
``--max-life`` seconds (seeded: the same run every time), then ends it in one of these
ways, in turn:

* ``sse-fin``: an SSE subscriber that closes its socket (FIN);
* ``sse-rst``: an SSE subscriber that resets it (``SO_LINGER`` 0: RST, data in flight
  dropped);
* ``sse-half``: sends half of its request head, then closes (never a subscriber);
* ``ws-close``: a WebSocket subscriber that ends with the close handshake (a masked
  close frame 1000, then waits up to 1 s for the server's);
* ``ws-fin``: a WebSocket subscriber that closes its socket without a close frame;
* ``ws-rst``: the same with RST;
* ``ws-midframe``: a WebSocket subscriber that sends the first bytes of a masked text
  frame (its header and part of its payload), then resets.

A connection still waiting for its response head when its time comes ends all the same
(mid-handshake). The bytes the server sends are read and dropped. Prints one JSON
report: connections opened and ended per kind, response heads seen (``200``/``101``),
other statuses, errors (a refused connect, a reset before the head), own CPU seconds.
"""

import argparse
import base64
import heapq
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import time

KINDS = ("sse-fin", "sse-rst", "sse-half", "ws-close", "ws-fin", "ws-rst", "ws-midframe")
RECV_SIZE = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2); payloads < 126 bytes only."""
    key = os.urandom(4)
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + key + _mask(payload, key)


class Conn:
    __slots__ = ("kind", "sock", "head", "status", "state", "close_sent")

    def __init__(self, kind, sock):
        self.kind = kind
        self.sock = sock
        self.head = b""
        self.status = None
        self.state = "open"
        self.close_sent = None


def request(kind, host):
    if kind.startswith("sse"):
        head = (f"GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n").encode()
        return head[: len(head) // 2] if kind == "sse-half" else head
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def run(host, port, rate, duration, max_life, seed=1):
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    rng = random.Random(seed)
    epoll = select.epoll()
    by_fd = {}
    due = []  # (time, sequence, conn): when to end a connection
    opened = {kind: 0 for kind in KINDS}
    ended = {kind: 0 for kind in KINDS}
    heads = {kind: 0 for kind in KINDS}
    statuses = {}
    errors = []
    t0 = time.monotonic()
    total = int(rate * duration)
    index = 0

    def forget(conn):
        fd = conn.sock.fileno()
        if fd in by_fd:
            epoll.unregister(fd)
            del by_fd[fd]

    def end(conn):
        if conn.state == "ended":
            return
        kind, sock = conn.kind, conn.sock
        try:
            if kind == "ws-close" and conn.status == 101 and conn.close_sent is None:
                sock.send(ws_client_frame(0x8, struct.pack("!H", 1000)))
                conn.close_sent = time.monotonic()
                heapq.heappush(due, (conn.close_sent + 1.0, id(conn), conn))
                return  # the server's close frame (or EOF), or 1 s, ends it
            if kind == "ws-midframe" and conn.status == 101:
                frame = ws_client_frame(0x1, b'{"subscribe": ["never-finished"]}')
                sock.send(frame[:9])
            if kind.endswith(("rst", "midframe")):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        forget(conn)
        sock.close()
        conn.state = "ended"
        ended[kind] += 1

    while not stop:
        now = time.monotonic()
        while index < total and t0 + index / rate <= now:
            kind = KINDS[index % len(KINDS)]
            index += 1
            try:
                sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(request(kind, f"{host}:{port}"))
            except OSError as exc:
                errors.append(f"{kind}: connect: {exc}")
                continue
            sock.setblocking(False)
            conn = Conn(kind, sock)
            opened[kind] += 1
            by_fd[sock.fileno()] = conn
            epoll.register(sock.fileno(), select.EPOLLIN)
            heapq.heappush(due, (now + rng.uniform(0, max_life), id(conn), conn))
        while due and due[0][0] <= now:
            end(heapq.heappop(due)[2])
        if index >= total and not due:
            break
        wake = min(due[0][0] if due else now + 0.05,
                   t0 + index / rate if index < total else now + 0.05)
        for fd, _ in epoll.poll(max(0.0, wake - time.monotonic()), 1024):
            conn = by_fd.get(fd)
            if conn is None:
                continue
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if conn.status is None:
                    errors.append(f"{conn.kind}: {exc}")
                forget(conn)
                continue
            if not data:  # the server ended it (after a close frame, or a refusal)
                forget(conn)
                if conn.kind == "ws-close" and conn.close_sent is not None:
                    end(conn)
                continue
            if conn.status is None:
                conn.head += data
                if b"\r\n\r\n" in conn.head or len(conn.head) > 4096:
                    try:
                        conn.status = int(conn.head.split(b" ", 2)[1])
                    except (IndexError, ValueError):
                        conn.status = 0
                    conn.head = b""
                    if conn.status in (200, 101):
                        heads[conn.kind] += 1
                    else:
                        statuses[str(conn.status)] = statuses.get(str(conn.status), 0) + 1
    for _, _, conn in due:  # stopped early
        end(conn)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rate": rate, "duration_s": duration, "max_life_s": max_life,
        "opened": sum(opened.values()), "ended": sum(ended.values()),
        "opened_by_kind": opened, "heads_by_kind": heads, "other_statuses": statuses,
        "errors": sorted(set(errors))[:20], "error_count": len(errors),
        "wall_s": time.monotonic() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime, "client": "python",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0, help="new connections per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of churn")
    parser.add_argument("--max-life", type=float, default=0.5,
                        help="each connection lives uniformly 0..this many seconds")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(run(args.host, args.port, args.rate, args.duration, args.max_life)),
          flush=True)


if __name__ == "__main__":
    main()
