"""Load client: N raw TCP subscribers that count received frames cheaply.

    python -m bench.client --port 8888 --transport sse -n 1000 --expect 1000

Opens N sockets to ``/sse`` (HTTP GET) or ``/ws`` (hand-made RFC 6455
handshake), then reads them all from one selector loop.  SSE messages are
counted as ``data:`` lines in the de-chunked body; WebSocket messages as
final data frames, found by walking the unmasked frame headers without
copying payloads.  Stops when every connection has ``--expect`` frames, at
``--timeout`` or on SIGTERM/SIGINT, and prints one JSON report on stdout:
frames per connection (min/max), total, errors, own CPU seconds, and the
CLOCK_MONOTONIC times of the first and last counted frame.
"""

import argparse
import base64
import hashlib
import json
import os
import resource
import selectors
import signal
import socket
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV_SIZE = 256 * 1024


class ProtocolError(Exception):
    """The server answered something this client does not understand."""


class Subscriber:
    """One connection: parses the response head, then counts body frames.

    Subclasses set ``request`` (bytes to send) and implement ``check_head`` and
    ``feed_body``.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.frames = 0
        self.head = b""
        self.in_body = False

    def feed(self, data: bytes) -> None:
        """Consume received bytes, updating ``self.frames``."""
        if self.in_body:
            self.feed_body(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self.head[:end].decode("latin-1"), self.head[end + 4 :]
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.check_head(lines[0], headers)
        self.head = b""
        self.in_body = True
        if rest:
            self.feed_body(rest)


class SseSubscriber(Subscriber):
    """Counts ``data:`` lines in a chunked or identity SSE body.

    Each single-line message is one event with one ``data:`` line; ``retry:``,
    ``id:`` and comment lines (heartbeats) are not counted.  Occurrences that
    straddle a chunk or recv boundary are found via the last body bytes.
    """

    TOKEN = b"\ndata:"

    def __init__(self, sock, path, host):
        super().__init__(sock)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        self.chunk_left = 0  # data bytes left in the current chunk
        self.line = b""  # partial chunk-size line
        self.tail = b"\n"  # last body bytes (len(TOKEN) - 1 at most); the body starts a line

    def check_head(self, status, headers):
        if status.split(" ", 2)[1:2] != ["200"]:
            raise ProtocolError(f"SSE status line: {status!r}")
        if "chunked" not in headers.get("transfer-encoding", ""):
            self.chunk_left = float("inf")

    def feed_body(self, data):
        if self.line:
            data, self.line = self.line + data, b""
        pos, n = 0, len(data)
        while pos < n:
            if self.chunk_left:
                end = n if pos + self.chunk_left >= n else pos + self.chunk_left
                keep = len(self.TOKEN) - 1
                self.frames += data.count(self.TOKEN, pos, end)
                self.frames += (self.tail + data[pos : min(end, pos + keep)]).count(self.TOKEN)
                self.tail = (self.tail + data[max(pos, end - keep) : end])[-keep:]
                self.chunk_left -= end - pos
                pos = end
                continue
            # Between chunks: b"\r\n" ending the previous chunk, then "<hex>\r\n".
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.line = data[pos:]
                return
            line = data[pos:eol]
            pos = eol + 2
            if line:
                self.chunk_left = int(line.split(b";")[0], 16)
                if not self.chunk_left:
                    raise ProtocolError("SSE stream ended by the server")


class WsSubscriber(Subscriber):
    """Counts final WebSocket data frames (text, binary, continuation)."""

    def __init__(self, sock, path, host):
        super().__init__(sock)
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.skip = 0  # payload bytes of the current frame still to skip
        self.partial = b""  # incomplete frame header

    def check_head(self, status, headers):
        if status.split(" ", 2)[1:2] != ["101"]:
            raise ProtocolError(f"WebSocket status line: {status!r}")
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise ProtocolError("bad Sec-WebSocket-Accept")

    def feed_body(self, data):
        if self.partial:
            data, self.partial = self.partial + data, b""
        pos, n = 0, len(data)
        while True:
            if self.skip:
                if pos + self.skip > n:
                    self.skip -= n - pos
                    return
                pos += self.skip
                self.skip = 0
            if n - pos < 2:
                break
            b0, length = data[pos], data[pos + 1]
            if length & 0x80:
                raise ProtocolError("masked frame from server")
            header = 2 if length < 126 else 4 if length == 126 else 10
            if n - pos < header:
                break
            if header > 2:
                length = int.from_bytes(data[pos + 2 : pos + header], "big")
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ProtocolError("WebSocket closed by the server")
            if b0 & 0x80 and opcode <= 2:
                self.frames += 1
            pos += header
            self.skip = length
        self.partial = data[pos:]


PROTOCOLS = {"sse": SseSubscriber, "ws": WsSubscriber}


def run(host, port, transport, n, expect, timeout):
    """Connect ``n`` subscribers and count frames; return the report dict."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    subs, errors = [], []
    for _ in range(n):
        sock = socket.create_connection((host, port))
        sub = PROTOCOLS[transport](sock, f"/{transport}", f"{host}:{port}")
        sock.sendall(sub.request)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sub)
        subs.append(sub)
    pending = n  # connections that have not yet counted `expect` frames
    t_first = t_last = None
    while pending and not stop and time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            sub = key.data
            before = sub.frames
            try:
                data = sub.sock.recv(RECV_SIZE)
                if not data:
                    raise ProtocolError("connection closed by the server")
                sub.feed(data)
            except (OSError, ProtocolError) as exc:
                errors.append(str(exc))
                selector.unregister(sub.sock)
                if before < expect:
                    pending -= 1
                continue
            if sub.frames > before:
                t_last = time.monotonic()
                t_first = t_first or t_last
                if before < expect <= sub.frames:
                    pending -= 1
    frames = [sub.frames for sub in subs]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "connections": n,
        "expect": expect,
        "total": sum(frames),
        "min": min(frames),
        "max": max(frames),
        "complete": min(frames) >= expect,
        "errors": sorted(set(errors)),
        "error_count": len(errors),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "t_first": t_first,
        "t_last": t_last,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("-n", "--connections", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True, help="frames per connection")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = run(args.host, args.port, args.transport, args.connections, args.expect, args.timeout)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
