"""tornadose.listen: a large backlog, and an accept loop that lives through running out
of file descriptors. A real server process at RLIMIT_NOFILE=512, real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tornado.web

import tornadose
from tornadose.handlers import EventSource
from tornadose.stores import QueueStore

from .sseclient import RawSSEClient

SERVER = Path(__file__).parent / "servers" / "fd_server.py"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_out_of_descriptors_the_server_backs_off_and_recovers():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "--nofile",
        "512",
        "--rate",
        "100",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    flood: list[socket.socket] = []
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        port = int(line.split()[1])
        subscribers = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(200)]
        firsts = [int((await s.read_events(1))[0].data) for s in subscribers]
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        request = b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        for _ in range(800):  # more than the server has descriptors left, each a request
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            flood.append(sock)
        await asyncio.sleep(0.2)
        for sock in flood:
            try:
                sock.send(request)
            except OSError:
                pass  # still in the listen backlog's queue: its SYN is not answered yet
        await asyncio.sleep(3.8)
        busy = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        for sock in flood:
            sock.close()
        flood.clear()
        # Descriptors free up as the server sees the flood go; a newcomer gets in.
        late = None
        for _ in range(50):
            try:
                late = await RawSSEClient.connect("127.0.0.1", port, "/sse", timeout=5)
                break
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
        assert late is not None and late.status == 200
        assert (await late.read_events(1))[0].data.isdigit()
        proc.send_signal(signal.SIGTERM)  # closes the store: every stream ends
        for first, client in zip(firsts, subscribers):
            numbers = [int(e.data) for e in await client.read_until_closed(timeout=15)]
            # Every message since it joined, in order, through the whole flood.
            assert numbers == list(range(first + 1, first + 1 + len(numbers)))
            assert len(numbers) >= 300  # ~100 msg/s over the 4 s flood and after
        late.close_fin()
    finally:
        for sock in flood:
            sock.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    log = stderr.decode()
    records = [r for r in log.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL):", r)]
    assert busy < 0.6, f"server used {busy:.0%} of a core during the flood"
    assert 1 <= len(records) <= 20, log[-3000:]
    assert "RLIMIT_NOFILE=512" in records[0]
    assert "Traceback" not in log


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel reports it (``ss``:
    Send-Q of a listening socket)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_listen_serves_with_a_large_backlog():
    app = tornado.web.Application([(r"/sse", EventSource, {"store": QueueStore()})])
    server = tornadose.listen(app, 0, "127.0.0.1")
    plain = app.listen(0, "127.0.0.1")  # Tornado's own, for comparison
    try:
        port = next(iter(server._sockets.values())).getsockname()[1]
        client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
        assert client.status == 200
        client.close_fin()
        with open("/proc/sys/net/core/somaxconn") as f:
            somaxconn = int(f.read())
        assert listen_backlog(port) == min(tornadose.transport.server.DEFAULT_BACKLOG, somaxconn)
        plain_port = next(iter(plain._sockets.values())).getsockname()[1]
        assert listen_backlog(plain_port) == min(128, somaxconn)
    finally:
        server.stop()
        plain.stop()


async def test_near_the_descriptor_limit_new_subscribers_get_503_not_exhaustion():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "--nofile",
        "128",
        "--rate",
        "50",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    admitted, refused = [], 0
    try:
        port = int((await asyncio.wait_for(proc.stdout.readline(), 15)).split()[1])
        for _ in range(150):
            client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
            if client.status == 200:
                admitted.append(client)
                continue
            assert client.status == 503
            assert 2 <= int(client.headers["retry-after"]) <= 10
            assert b"open-files limit" in await client.read_body()
            client.close_fin()
            refused += 1
        # The headroom (32 of 128) stays free: refused, never run out.
        assert 60 <= len(admitted) <= 96 and refused == 150 - len(admitted)
        for client in admitted:  # and the admitted ones keep receiving
            assert (await client.read_events(2))[1].data.isdigit()
        for client in admitted:
            client.close_fin()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    log = stderr.decode()
    records = [r for r in log.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL):", r)]
    # One record for the whole episode (the next summary is 10 s away): no access-log
    # record per refused subscriber.
    assert len(records) == 1, log
    assert "open-files headroom (RLIMIT_NOFILE=128)" in records[0]
    assert "Traceback" not in log
