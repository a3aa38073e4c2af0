"""A throwaway ``redis-server`` for tests: loopback only, free port, no persistence.

Use the ``redis_server`` fixture (import it into a test module, or into conftest.py):
it yields a :class:`RedisServer` that answers PING, whose ``port`` stays the same across
``stop()`` / ``start()`` (to test outages), and stops it afterwards.

Without ``redis-server`` on PATH (or redis-py) the tests using it are skipped, unless
the environment sets ``TORNADOSE_REQUIRE_REDIS=1``: then they fail, so CI cannot pass
by silently skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REQUIRED = os.environ.get("TORNADOSE_REQUIRE_REDIS", "") not in ("", "0")


def unavailable(reason: str) -> None:
    """Skip the current test, or fail it when Redis is required."""
    if REQUIRED:
        pytest.fail(f"{reason} (TORNADOSE_REQUIRE_REDIS is set)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``, restartable on that port."""

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                self.executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"redis-server exited at start (port {self.port} taken?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(0.01)

    def stop(self, kill: bool = True) -> None:
        """Stop the server: SIGKILL (a crash) by default, else SIGTERM."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str | bytes, input: bytes | None = None) -> bytes:
        """Run ``redis-cli -p PORT *args`` (commands read from ``input`` when given) in
        a real subprocess; return its output."""
        executable = shutil.which("redis-cli")
        if executable is None:
            unavailable("redis-cli is not on PATH")
        result = subprocess.run(
            [executable, "-h", "127.0.0.1", "-p", str(self.port), *args],
            input=input,
            capture_output=True,
            timeout=30,
            check=True,
        )
        return result.stdout


@pytest.fixture
def redis_py() -> None:
    """Skip (or fail, when Redis is required) without redis-py."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable('redis-py is not installed (pip install "tornadose[redis]")')


@pytest.fixture
def redis_server(redis_py: None, tmp_path: Path) -> Iterator[RedisServer]:
    """A running ``redis-server`` for this test; see :class:`RedisServer`."""
    executable = shutil.which("redis-server")
    if executable is None:
        unavailable("redis-server is not on PATH")
    for attempt in range(3):
        server = RedisServer(executable, free_port(), tmp_path)  # type: ignore[arg-type]
        try:
            server.start()
            break
        except RuntimeError:
            # Another process took the free port first: try another one.
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


# -- the multi-process recipe (tests/servers/redis_stream_server.py) --------------------

STREAM_SERVER = Path(__file__).parent / "servers" / "redis_stream_server.py"


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited orphan nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@contextlib.asynccontextmanager
async def stream_workers(
    redis_port: int, *args: str, processes: int = 2
) -> AsyncIterator[SimpleNamespace]:
    """``processes`` workers of the multi-process recipe on one free port, reading the
    Redis at ``redis_port`` (``args``: more of its options, e.g. ``--topics``). Yields
    ``port`` and the workers' ``pids`` once all are ready; afterwards stops them and
    checks that none outlived the parent and that nothing printed a traceback."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STREAM_SERVER),
        "--port",
        str(port),
        "--processes",
        str(processes),
        "--redis-port",
        str(redis_port),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pids: set[int] = set()
    try:
        for _ in range(processes):
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line.startswith(b"ready "), (line, await proc.stderr.read())
            pids.add(int(line.split()[1]))
        yield SimpleNamespace(port=port, pids=pids)
    finally:
        if proc.returncode is None:
            proc.terminate()  # the parent; its workers end with it
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        await asyncio.sleep(0.2)
        outlived = [pid for pid in pids if running(pid)]
        for pid in outlived:
            os.kill(pid, signal.SIGKILL)
    assert not outlived, f"workers {outlived} outlived the parent"
    assert b"Traceback" not in stderr, stderr.decode()


async def connect_to_worker(
    port: int, path: str, last_event_id: str | None = None, other_than: int | None = None
) -> Any:
    """A RawSSEClient on ``path`` of a worker of :func:`stream_workers`, with a
    Last-Event-ID when given, on another worker than pid ``other_than`` (the kernel
    chooses: connect again until it lands elsewhere)."""
    from .sseclient import RawSSEClient

    headers = {"Last-Event-ID": last_event_id} if last_event_id else None
    for attempt in range(100):
        client = await RawSSEClient.connect("127.0.0.1", port, path, headers=headers)
        if int(client.headers["x-worker-pid"]) != other_than:
            return client
        client.close_fin()
        # Workers sharing one listening socket race for each connection; the one that
        # just served the last is still awake and tends to win on a loaded machine (100
        # in a row once in CI). A pause lets both be idle when the next one arrives.
        await asyncio.sleep(0.01 * min(attempt + 1, 10))
    raise AssertionError("every connection landed on the same worker")
