"""Load client: N raw TCP subscribers that count received frames cheaply.

    python -m bench.client --port 8888 --transport sse -n 1000 --expect 1000

Opens N sockets to ``/sse`` (HTTP GET) or ``/ws`` (hand-made RFC 6455
handshake), then reads them all from one epoll loop.  SSE messages are
counted as ``data:`` lines in the de-chunked body; WebSocket messages as
final data frames, found by walking the unmasked frame headers without
copying payloads.  Every ``--sample-every``-th connection also parses the
payloads it receives (``<seq> @<submit CLOCK_MONOTONIC ns>@``): latency of each
message (arrival minus the timestamp the server put in it), and a check that
the sequence numbers arrive in order without gaps or duplicates.

``--topics T --topics-per-conn K`` (topics mode) gives connection ``i`` its own URL,
``/sse?topics=...`` (or ``/ws?topics=...``): the K topics ``(i + (T // K) * k) % T``
for k in 0..K-1, named ``S000``..``S<T-1>`` (:func:`topic_indices`, the same formula
as the bench; K must divide T). Tick ``seq`` belongs to topic ``seq % T``, so a
connection sees an increasing subsequence of the ticks: a sampled connection then
checks, per topic, that it gets exactly its topics' ticks ``t, t + T, t + 2T, ...``
in order (a tick of another topic, a gap, a duplicate or a tick out of order within
its topic counts as disorder; so do ticks still missing at the end, ``--expect / K``
per topic) and counts as ``sampled_reordered`` the frames that arrived after a later
tick of another topic (allowed: order is kept within a topic, not across topics).

``--stalled S`` opens S more connections, with a tiny SO_RCVBUF, that send
their request and never read.  ``--hold`` keeps going after every connection
has ``--expect`` frames (for idle-memory runs).  Stops when every connection
has ``--expect`` frames, at ``--timeout`` or on SIGTERM/SIGINT, and prints one
JSON report on stdout: frames per connection (min/max), total, errors, own
CPU seconds, the CLOCK_MONOTONIC times of the first and last counted frame,
and the latency summary.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV_SIZE = 128 * 1024
STAMP = re.compile(rb"(\d{8}) @(\d+)@")


class ProtocolError(Exception):
    """The server answered something this client does not understand."""


def topic_indices(i, topics, per_conn):
    """Connection ``i``'s topics: ``(i + (topics // per_conn) * k) % topics``, k < per_conn.

    Distinct, spread evenly: with N a multiple of ``topics // per_conn`` every topic has
    ``N * per_conn / topics`` subscribers. bench/loadclient.c computes the same."""
    stride = topics // per_conn
    return [(i + stride * k) % topics for k in range(per_conn)]


def topics_path(transport, i, topics, per_conn):
    """Connection ``i``'s subscriber path in topics mode: ``/sse?topics=S000,S010,...``."""
    names = ",".join(f"S{t:03d}" for t in topic_indices(i, topics, per_conn))
    return f"/{transport}?topics={names}"


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
        self.stamps = None  # array of (seq, submit ns, latency ns) triples when sampled
        self.stamp_tail = b""
        self.next_seq = None
        self.disorder = 0
        # topics mode, sampled: per topic the next tick expected (-1: not subscribed)
        self.topic_next = None
        self.max_seq = -1
        self.reordered = 0

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
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                        "Accept: text/event-stream\r\n\r\n").encode()
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

C_SOURCE = Path(__file__).resolve().with_name("loadclient.c")
#: where the compiled C client goes (ignored by git, like the reference venv)
C_BUILD = Path(__file__).resolve().parent / ".venvs" / "bin"


def c_client():
    """The C twin of this client (bench/loadclient.c), compiled on first use.

    Returns its path, or None when there is no C compiler or BENCH_PY_CLIENT=1 (then
    this module's Python loop is used: same report, more client CPU).
    """
    if os.environ.get("BENCH_PY_CLIENT") == "1":
        return None
    digest = hashlib.sha1(C_SOURCE.read_bytes()).hexdigest()[:12]
    exe = C_BUILD / f"loadclient-{digest}"
    if exe.exists():
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    C_BUILD.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
    done = subprocess.run([*cc.split(), "-O2", "-o", str(tmp), str(C_SOURCE), "-lz"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"bench.client: building the C client failed, using Python:\n{done.stderr}",
              file=sys.stderr)
        return None
    tmp.replace(exe)
    return exe


def read_stamps(path):
    """The latency triples the C client wrote to ``path``."""
    stamps = array("q")
    data = Path(path).read_bytes()
    stamps.frombytes(data[: len(data) // 8 * 8])
    return stamps


def take_stamps(sub, data, now):
    """Record (seq, submit time, latency) of every payload in ``data``."""
    buf = sub.stamp_tail + data
    last = 0
    stamps = sub.stamps
    topic_next = sub.topic_next
    for match in STAMP.finditer(buf):
        seq, t = int(match[1]), int(match[2])
        if topic_next is not None:
            # Topics: exactly this connection's ticks, in order within each topic.
            topic = seq % len(topic_next)
            expected = topic_next[topic]
            if seq != expected:
                sub.disorder += 1
            if expected >= 0:
                topic_next[topic] = seq + len(topic_next)
            if seq < sub.max_seq:
                sub.reordered += 1
            else:
                sub.max_seq = seq
        else:
            if sub.next_seq is not None and seq != sub.next_seq:
                sub.disorder += 1
            sub.next_seq = seq + 1
        stamps.extend((seq, t, now - t))
        last = match.end()
    sub.stamp_tail = buf[max(last, len(buf) - 48):]


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_summary(stamp_arrays):
    """p50/p99/max over every (sampled connection, message), and whether it grows.

    ``stamp_arrays``: flat sequences of (seq, submit ns, latency ns) triples.
    """
    points = []
    for s in stamp_arrays:
        if s:
            points.extend(zip(s[1::3], s[2::3]))
    if not points:
        return None
    lat = sorted(p[1] for p in points)
    points.sort()
    third = max(1, len(points) // 3)
    first = sorted(p[1] for p in points[:third])
    last = sorted(p[1] for p in points[-third:])
    # Least-squares slope of latency against submit time: ms of latency per s of run.
    t0 = points[0][0]
    n = len(points)
    mx = sum(p[0] - t0 for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - t0 - mx) ** 2 for p in points)
    sxy = sum((p[0] - t0 - mx) * (p[1] - my) for p in points)
    ms = 1e-6
    return {
        "samples": n,
        "p50_ms": percentile(lat, 0.50) * ms,
        "p99_ms": percentile(lat, 0.99) * ms,
        "max_ms": lat[-1] * ms,
        "p50_first_third_ms": percentile(first, 0.5) * ms,
        "p50_last_third_ms": percentile(last, 0.5) * ms,
        "p99_last_third_ms": percentile(last, 0.99) * ms,
        "slope_ms_per_s": (sxy / sxx) * 1e3 if sxx else 0.0,
        "span_s": (points[-1][0] - t0) / 1e9,
    }


def missing_ticks(sub, expect, per_conn):
    """Ticks of a sampled topics connection still missing at the end: each of its
    topics should have reached ``expect / per_conn`` ticks in order."""
    topic_next = sub.topic_next
    if topic_next is None or not per_conn:
        return 0
    share = expect // per_conn
    count = len(topic_next)
    return sum(max(0, share - (nxt - t) // count)
               for t, nxt in enumerate(topic_next) if nxt >= 0)


def run(host, port, transport, n, expect, timeout, sample_every=0, stalled=0,
        stalled_rcvbuf=1024, hold=False, topics=0, topics_per_conn=0):
    """Connect ``n`` subscribers (and ``stalled`` never-reading ones); return the report.

    With ``topics``, connection i subscribes to the topics :func:`topic_indices` gives."""
    if topics and not (0 < topics_per_conn <= topics and topics % topics_per_conn == 0):
        raise SystemExit("--topics-per-conn must divide --topics")
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    deadline = time.monotonic() + timeout
    epoll = select.epoll()
    subs, errors, by_fd, parked = [], [], {}, []
    for i in range(n + stalled):
        if i < n:
            sock = socket.create_connection((host, port))
        else:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, stalled_rcvbuf)
            sock.connect((host, port))
        path = topics_path(transport, i, topics, topics_per_conn) if topics else f"/{transport}"
        sub = PROTOCOLS[transport](sock, path, f"{host}:{port}")
        sock.sendall(sub.request)
        if i >= n:
            parked.append(sub)
            continue
        sock.setblocking(False)
        if sample_every and i % sample_every == 0:
            sub.stamps = array("q")
            if topics:
                sub.topic_next = [-1] * topics
                for t in topic_indices(i, topics, topics_per_conn):
                    sub.topic_next[t] = t
        by_fd[sock.fileno()] = sub
        epoll.register(sock.fileno(), select.EPOLLIN)
        subs.append(sub)
    cpu_connected = resource.getrusage(resource.RUSAGE_SELF)
    pending = n if expect else 0  # connections that have not yet counted `expect` frames
    t_first = t_last = None
    clock = time.monotonic_ns
    poll = epoll.poll
    while (pending or hold) and not stop:
        if time.monotonic() >= deadline:
            break
        for fd, _ in poll(0.2, 4096):
            sub = by_fd[fd]
            before = sub.frames
            try:
                data = sub.sock.recv(RECV_SIZE)
                if not data:
                    raise ProtocolError("connection closed by the server")
                sub.feed(data)
            except (OSError, ProtocolError) as exc:
                errors.append(str(exc))
                epoll.unregister(fd)
                del by_fd[fd]
                if before < expect:
                    pending -= 1
                continue
            if sub.stamps is not None:  # every recv: a payload may straddle two
                take_stamps(sub, data, clock())
            if sub.frames > before:
                t_last = clock()
                t_first = t_first or t_last
                if before < expect <= sub.frames:
                    pending -= 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    frames = [sub.frames for sub in subs]
    sampled = [sub for sub in subs if sub.stamps is not None]
    return {
        "connections": n,
        "stalled": stalled,
        "expect": expect,
        "total": sum(frames),
        "min": min(frames) if frames else 0,
        "max": max(frames) if frames else 0,
        "complete": bool(frames) and min(frames) >= expect,
        "errors": sorted(set(errors)),
        "error_count": len(errors),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "cpu_connected_s": cpu_connected.ru_utime + cpu_connected.ru_stime,
        "t_first": t_first / 1e9 if t_first else None,
        "t_last": t_last / 1e9 if t_last else None,
        "sampled_connections": len(sampled),
        "sampled_disorder": sum(sub.disorder + missing_ticks(sub, expect, topics_per_conn)
                                for sub in sampled),
        "sampled_reordered": sum(sub.reordered for sub in sampled),
        "sampled_seen": sum(len(sub.stamps) // 3 for sub in sampled),
        "latency": latency_summary([sub.stamps for sub in sampled]),
        "client": "python",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("-n", "--connections", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True, help="frames per connection")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--sample-every", type=int, default=0,
                        help="parse payloads (latency, order) on every k-th connection; 0: none")
    parser.add_argument("--stalled", type=int, default=0, help="extra connections that never read")
    parser.add_argument("--stalled-rcvbuf", type=int, default=1024)
    parser.add_argument("--hold", action="store_true", help="run until SIGTERM or --timeout")
    parser.add_argument("--topics", type=int, default=0,
                        help="topics mode: T topics S000..; tick seq is topic seq %% T")
    parser.add_argument("--topics-per-conn", type=int, default=0,
                        help="topics mode: K topics per connection (K divides T)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = run(args.host, args.port, args.transport, args.connections, args.expect,
                 args.timeout, args.sample_every, args.stalled, args.stalled_rcvbuf, args.hold,
                 args.topics, args.topics_per_conn)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
