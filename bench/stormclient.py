"""Load client of the ``storm`` and ``admission`` scenarios (SSE only, Python).

    python -m bench.stormclient --port 8888 -n 1000 --expect 1000          # storm
    python -m bench.stormclient --port 8888 -n 2000 --admission            # admission

**storm**: opens N subscribers to ``/sse`` and reads them from one epoll loop. When
the server closes a stream (the scenario's ``GET /cut``), the subscriber reconnects
like a browser's ``EventSource``: after the ``retry:`` hint its stream carried (in
milliseconds; 3000 if it carried none), with the header ``Last-Event-ID`` set to the
id of the last *complete* event it got. Each subscriber checks that it gets the
messages ``0 .. expect-1`` exactly once, in order, across its reconnections: every
complete event's ``data:`` is counted, the first and last sequence number of each
``recv()``'s complete events are parsed (``payload()`` of bench/server.py: 8 digits
first), and a ``recv()`` is in order when its first number follows the previous one and
its last minus its first plus one is its number of events. A ``tornadose-gap`` event,
a number that does not follow, or a count that does not match is counted (``gaps``,
``disorder``). Stops when every subscriber has message ``expect-1`` (and every
reconnection was answered), at ``--timeout`` or on SIGTERM, and prints one JSON report:
per reconnection the CLOCK_MONOTONIC time the close was seen, the hint, and the time
the new stream's ``200`` head arrived.

**admission** (``--admission``): opens N connections as fast as it can (non-blocking
``connect()`` and request, all in one burst) and waits for every ``200`` head; reports
the connect-to-head times (p50, p99, max) and the time of the first connect and of the
last head. Then holds the connections until SIGTERM (``--hold``) or returns.
"""

import argparse
import errno
import json
import resource
import select
import signal
import socket
import time

RECV_SIZE = 64 * 1024
DATA = b"\ndata: "
GAP = b"tornadose-gap"


def _retry_hint(body):
    pos = body.find(b"retry: ")
    if pos < 0:
        return None
    end = body.find(b"\n", pos)
    if end < 0:
        return None
    try:
        return int(body[pos + 7:end])
    except ValueError:
        return None


class Stream:
    """One subscriber across its reconnections."""

    __slots__ = ("index", "sock", "head", "in_body", "carry", "last_id", "next_seq",
                 "frames", "gaps", "disorder", "retry_ms", "closed_at", "due", "sent_at",
                 "backs", "done", "reconnecting")

    def __init__(self, index):
        self.index = index
        self.sock = None
        self.head = b""
        self.in_body = False
        self.carry = b""
        self.last_id = None
        self.next_seq = 0
        self.frames = 0
        self.gaps = 0
        self.disorder = 0
        self.retry_ms = None
        self.closed_at = None
        self.due = None
        self.sent_at = None
        self.backs = []  # (closed at, retry ms, head 200 at), CLOCK_MONOTONIC s
        self.done = False
        self.reconnecting = False

    def request(self, port):
        extra = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id is not None else ""
        return (f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n{extra}\r\n").encode()

    def _slow(self, done):
        """Event by event: gap notices counted apart, every sequence number checked."""
        for event in done.split(b"\n\n"):
            at = event.find(b"data: ")
            if at < 0:
                continue
            if GAP in event:
                self.gaps += 1
                continue
            self.frames += 1
            try:
                seq = int(event[at + 6:at + 14])
            except ValueError:
                self.disorder += 1
                continue
            if seq != self.next_seq:
                self.disorder += 1
            self.next_seq = seq + 1

    def feed(self, data, now):
        """Consume bytes; returns True once the head was seen in this call."""
        got_head = False
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return False
            status = self.head[:self.head.find(b"\r\n")]
            if status.split(b" ", 2)[1:2] != [b"200"]:
                raise OSError(f"status {status!r}")
            data = self.head[end + 4:]
            self.head = b""
            self.in_body = True
            got_head = True
            self.carry = b"\n"  # the body starts a line
            if self.reconnecting:
                self.backs.append((self.closed_at, self.retry_ms, now))
                self.reconnecting = False
        buf = self.carry + data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.carry = buf
            return got_head
        done, self.carry = buf[:cut + 1], buf[cut + 1:]
        if b"retry: " in done:  # the latest hint counts, as in a browser
            hint = _retry_hint(done)
            if hint is not None:
                self.retry_ms = hint
        count = done.count(DATA)
        if GAP in done:
            self._slow(done)
        elif count:
            first_at = done.find(DATA) + 7
            last_at = done.rfind(DATA) + 7
            try:
                first, last = int(done[first_at:first_at + 8]), int(done[last_at:last_at + 8])
            except ValueError:
                self._slow(done)
            else:
                if first != self.next_seq or last - first + 1 != count:
                    self.disorder += 1
                self.next_seq = last + 1
                self.frames += count
        id_at = done.rfind(b"\nid: ")
        if id_at >= 0:
            self.last_id = done[id_at + 5:done.find(b"\n", id_at + 5)].decode()
        return got_head


def storm(port, n, expect, timeout):
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    deadline = time.monotonic() + timeout
    epoll = select.epoll()
    streams = [Stream(i) for i in range(n)]
    by_fd = {}
    errors = []

    def connect(s):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(s.request(port))
        sock.setblocking(False)
        s.sock = sock
        s.in_body = False
        s.head = b""
        by_fd[sock.fileno()] = s
        epoll.register(sock.fileno(), select.EPOLLIN)

    for s in streams:
        connect(s)
    pending = n  # streams without message expect-1 yet
    waiting = []  # streams waiting for their reconnection, by due time (appended in order)
    clock = time.monotonic
    while not stop and clock() < deadline and pending:
        now = clock()
        while waiting and waiting[0].due <= now:
            s = waiting.pop(0)
            try:
                connect(s)
            except OSError as exc:
                errors.append(f"reconnect: {exc}")
        timeout_s = 0.2 if not waiting else max(0.0, min(0.2, waiting[0].due - now))
        for fd, _ in epoll.poll(timeout_s, 4096):
            s = by_fd[fd]
            now = clock()
            try:
                data = s.sock.recv(RECV_SIZE)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN,):
                    continue
                data = b""
            if data:
                try:
                    s.feed(data, now)
                except (OSError, ValueError) as exc:
                    errors.append(str(exc))
                    data = b""
                else:
                    if not s.done and s.next_seq >= expect:
                        s.done = True
                        pending -= 1
                    continue
            # closed by the server: reconnect after the hint, as a browser does
            epoll.unregister(fd)
            del by_fd[fd]
            s.sock.close()
            s.sock = None
            s.closed_at = now
            s.reconnecting = True
            s.due = now + (s.retry_ms if s.retry_ms is not None else 3000) / 1000
            # keep ``waiting`` sorted by due time (hints differ per stream)
            i = len(waiting)
            while i and waiting[i - 1].due > s.due:
                i -= 1
            waiting.insert(i, s)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    backs = [b for s in streams for b in s.backs]
    return {
        "mode": "storm",
        "connections": n,
        "expect": expect,
        "frames_min": min(s.frames for s in streams) if streams else 0,
        "frames_max": max(s.frames for s in streams) if streams else 0,
        "total": sum(s.frames for s in streams),
        "complete": all(s.next_seq >= expect for s in streams),
        "exact": all(s.frames == expect and not s.gaps and not s.disorder
                     and s.next_seq == expect for s in streams),
        "gaps": sum(s.gaps for s in streams),
        "disorder": sum(s.disorder for s in streams),
        "streams_reconnected": sum(1 for s in streams if s.backs),
        "reconnections": len(backs),
        "still_reconnecting": sum(1 for s in streams if s.reconnecting),
        "backs": backs,
        "retry_ms_min": min((b[1] for b in backs), default=None),
        "retry_ms_max": max((b[1] for b in backs), default=None),
        "errors": sorted(set(errors))[:20],
        "error_count": len(errors),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "client": "python",
    }


def admission(port, n, timeout, hold, status=200):
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    epoll = select.epoll()
    request = (f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    clock = time.monotonic
    socks, started, heads, errors = {}, {}, {}, []
    t_first = clock()
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        started[sock.fileno()] = clock()
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks[sock.fileno()] = [sock, b"", False]  # socket, head so far, request sent
        epoll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)
    deadline = clock() + timeout
    while len(heads) + len(errors) < n and not stop and clock() < deadline:
        for fd, ev in epoll.poll(0.2, 4096):
            entry = socks[fd]
            sock = entry[0]
            try:
                if not entry[2] and ev & select.EPOLLOUT:
                    sock.send(request)
                    entry[2] = True
                    epoll.modify(fd, select.EPOLLIN)
                    continue
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise OSError("closed by the server")
            except BlockingIOError:
                continue
            except OSError as exc:
                errors.append(str(exc))
                epoll.unregister(fd)
                continue
            if fd in heads:
                continue
            entry[1] += data
            if b"\r\n\r\n" in entry[1]:
                line = entry[1][:entry[1].find(b"\r\n")]
                if line.split(b" ", 2)[1:2] != [b"%d" % status]:
                    errors.append(f"status {line!r}")
                else:
                    heads[fd] = clock()
                entry[1] = b""
                epoll.unregister(fd)  # the body is not read (heartbeats, if any, pile up)
    waits = sorted(heads[fd] - started[fd] for fd in heads)

    def pct(q):
        return waits[min(len(waits) - 1, int(q * len(waits)))] if waits else None

    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "mode": "admission", "connections": n, "answered": len(heads),
        "complete": len(heads) == n, "errors": sorted(set(errors))[:20],
        "error_count": len(errors), "t_first": t_first,
        "t_last_head": max(heads.values()) if heads else None,
        "head_p50_s": pct(0.5), "head_p99_s": pct(0.99),
        "head_max_s": waits[-1] if waits else None,
        "cpu_s": usage.ru_utime + usage.ru_stime, "client": "python",
    }
    print(json.dumps(report), flush=True)
    while hold and not stop:
        time.sleep(0.05)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", "--connections", type=int, required=True)
    parser.add_argument("--expect", type=int, default=0, help="storm: messages 0..expect-1")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--admission", action="store_true")
    parser.add_argument("--hold", action="store_true",
                        help="admission: keep the connections open until SIGTERM")
    parser.add_argument("--status", type=int, default=200,
                        help="admission: the status every head must have (503: refusals)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.admission:
        admission(args.port, args.connections, args.timeout, args.hold, args.status)
    else:
        print(json.dumps(storm(args.port, args.connections, args.expect, args.timeout)),
              flush=True)


if __name__ == "__main__":
    main()
