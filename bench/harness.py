"""Process plumbing shared by the scenarios: contender servers, the load client,
CPU and RSS accounting of the server process.

A :class:`Session` starts one contender's server (pinned to the first CPU we may
use), checks it is the code it claims to be, and starts load clients (pinned to
the second CPU). Everything it started is stopped when the ``with`` block ends.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import client as loadclient
from bench.venvs import VENV_ROOT, venv_python

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

#: contender -> what it is, for the table's legend
CONTENDERS = {
    "cython": "this package, compiled backend",
    "python": "this package, pure-Python backend (TORNADOSE_NO_EXTENSIONS=1)",
    "reference": "tornadose 0.4.1 from PyPI (bench/.venvs/reference)",
    "floor": "raw floor: pre-built frames, one send() per subscriber per loop iteration",
    "floor-msg": "raw floor: pre-built frames, one send() per message per subscriber",
    "websockets": "websockets library, broadcast() per message (WebSocket only)",
    "floor-topics": "raw floor for topics: each tick's frame built once, a connection's "
                    "frames joined, one send() per connection per loop iteration; TCP_NODELAY",
    "floor+nodelay": "the floor with TCP_NODELAY on its sockets, as tornadose's subscriber "
                     "sockets have (the latency target's floor)",
    "floor-msg+nodelay": "the per-message floor with TCP_NODELAY on its sockets",
    "bare-tornado": "a bare Tornado SSE handler: sets the headers, flushes them, waits "
                    "(bench/bare.py; the admission scenario's baseline)",
    "cython+nodelay": "cython with TCP_NODELAY set by the bench server (a diagnostic; "
                      "opt-in: TCP_NODELAY is the core's own default after its rewrite)",
}


class BenchError(RuntimeError):
    """A contender could not be run (missing backend, crashed server...)."""


def contender_command(name, transport):
    """(argv, env, check) for a contender's server; ``check(info)`` raises if wrong.

    A ``+nodelay`` suffix (``floor+nodelay``, ``cython+nodelay``) runs the same server
    with TCP_NODELAY set on its subscriber sockets (a diagnostic for latency);
    ``cython+metrics`` runs it with tornadose.metrics installed (fan-out passes timed)."""
    base, _, variant = name.partition("+")
    if variant not in ("", "nodelay", "metrics") or (
        variant and base in ("reference", "websockets")
    ) or (variant == "metrics" and base not in ("cython", "python")):
        raise BenchError(f"unknown contender {name!r}")
    argv, env, check = _contender_command(base, transport)
    if variant == "metrics":
        argv = [*argv, "--metrics"]
    if variant == "nodelay":
        if transport != "sse" and base in ("cython", "python"):
            raise BenchError("+nodelay is for SSE only with tornado servers")
        argv = [*argv, "--nodelay"]
    return argv, env, check


def _contender_command(name, transport):
    env = dict(os.environ)
    env.pop("TORNADOSE_NO_EXTENSIONS", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    py = sys.executable
    if name == "reference":
        # -I keeps the repository (cwd and script dir) off sys.path.
        argv = [venv_python("reference"), "-I", "bench/server.py"]
        origin = VENV_ROOT / "reference"

        def check(info):
            if not Path(info["tornadose_file"]).resolve().is_relative_to(origin.resolve()):
                raise BenchError(f"reference imported tornadose from {info['tornadose_file']}")

    elif name in ("python", "cython"):
        if name == "python":
            env["TORNADOSE_NO_EXTENSIONS"] = "1"
        argv = [py, "-m", "bench.server"]

        def check(info):
            origin = (REPO / "tornadose").resolve()
            if not Path(info["tornadose_file"]).resolve().is_relative_to(origin):
                raise BenchError(f"{name}: tornadose imported from {info['tornadose_file']}")
            if info["backend"] != name:
                why = info.get("backend_reason") or "compiled backend not built?"
                raise BenchError(f"{name}: tornadose.backend is {info['backend']!r} ({why})")

    elif name in ("floor", "floor-msg"):
        mode = "coalesced" if name == "floor" else "per-message"
        argv = [py, "-m", "bench.floor", "--mode", mode]

        def check(info):
            pass

    elif name == "floor-topics":
        # TCP_NODELAY on, as on tornadose's subscriber sockets (DESIGN: coalescing is
        # ours, not the kernel's); the topics come with --topics T (scenarios.topics).
        argv = [py, "-m", "bench.floor", "--mode", "topics", "--nodelay"]

        def check(info):
            if not info.get("topics"):
                raise BenchError("floor-topics: the floor is not in topics mode")

    elif name == "bare-tornado":
        if transport != "sse":
            raise BenchError("bare-tornado is an SSE-only contender")
        argv = [py, "-m", "bench.bare"]

        def check(info):
            if info.get("server") != "bare-tornado":
                raise BenchError("bare-tornado: not bench/bare.py")

    elif name == "websockets":
        if transport != "ws":
            raise BenchError("websockets broadcast() is a WebSocket-only contender")
        argv = [py, "-m", "bench.wsbroadcast"]

        def check(info):
            pass

    else:
        raise BenchError(f"unknown contender {name!r}")
    return argv, env, check


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port, path, timeout=10.0, method="GET"):
    """Send ``method`` ``path`` to the server; return the body as text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise BenchError(f"{method} {path}: HTTP {response.status} {body[:200]}")
        return body
    finally:
        conn.close()


def cpu_seconds(pid):
    """CPU time (user+system) of all threads of ``pid``, in ns resolution.

    From /proc/<pid>/task/*/schedstat: /proc/<pid>/stat counts 10 ms ticks, too
    coarse for a fast server.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def cpus():
    return sorted(os.sched_getaffinity(0))


def pin(pid, index):
    """Pin ``pid`` to the index-th CPU we may use, if there are at least two."""
    mine = cpus()
    if len(mine) >= 2:
        os.sched_setaffinity(pid, {mine[index % len(mine)]})


def stop(proc, sig=signal.SIGTERM, wait=5.0):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_problems(path):
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    bad = ("Traceback", "ERROR", "Error", "Exception")
    return [line for line in lines if any(word in line for word in bad)][:20]


class Client:
    """A running load client: bench/loadclient.c where a C compiler is available,
    else :mod:`bench.client` (the same report)."""

    def __init__(self, port, transport, n, expect, timeout, sample_every=0, stalled=0,
                 hold=False, topics=0, topics_per_conn=0, compress=False):
        args = ["--port", str(port), "--transport", transport, "-n", str(n),
                "--expect", str(expect), "--timeout", str(timeout),
                "--sample-every", str(sample_every), "--stalled", str(stalled)]
        if hold:
            args.append("--hold")
        if topics:
            args += ["--topics", str(topics), "--topics-per-conn", str(topics_per_conn)]
        if compress:
            args.append("--compress")  # the C client only
        exe = loadclient.c_client()
        if compress and not exe:
            raise BenchError("--compress needs the C load client: a C compiler and zlib.h")
        self.stamps = None
        if exe:
            fd, self.stamps = tempfile.mkstemp(prefix="bench-stamps-", dir=RESULTS)
            os.close(fd)
            argv = [str(exe), *args, "--stamps", self.stamps]
        else:
            argv = [sys.executable, "-m", "bench.client", *args]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        pin(self.proc.pid, 1)

    def cpu(self):
        try:
            return cpu_seconds(self.proc.pid)
        except FileNotFoundError:
            return None

    def report(self, wait):
        """The client's JSON report; SIGTERM it (partial report) after ``wait`` s."""
        try:
            out, _ = self.proc.communicate(timeout=max(0.5, wait))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        try:
            if self.proc.returncode != 0 or not out:
                raise BenchError(f"load client failed with exit code {self.proc.returncode}")
            report = json.loads(out)
            if self.stamps:
                stamps = loadclient.read_stamps(self.stamps)
                report["latency"] = loadclient.latency_summary([stamps])
            return report
        finally:
            if self.stamps:
                os.unlink(self.stamps)
                self.stamps = None


class Session:
    """One contender's server for one transport, plus the clients started on it."""

    def __init__(self, contender, transport, extra_args=()):
        self.contender = contender
        self.transport = transport
        self.extra_args = list(extra_args)
        self.procs = []

    def __enter__(self):
        argv, env, check = contender_command(self.contender, self.transport)
        self.port = free_port()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log_path = RESULTS / f"server-{self.contender}-{self.transport}.log"
        with open(self.log_path, "w") as log:
            self.server = subprocess.Popen(
                [*argv, "--port", str(self.port), "--transport", self.transport,
                 *self.extra_args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.procs.append(self.server)
        pin(self.server.pid, 0)
        try:
            self.info = self.wait_until(lambda: json.loads(self.get("/info")), 60, "server start")
            check(self.info)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()

    def get(self, path, timeout=10.0):
        return request(self.port, path, timeout)

    def wait_until(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    problems = log_problems(self.log_path)
                    raise BenchError(f"{what}: {proc.args[:3]} exited with {proc.returncode}"
                                     + (f": {problems[-1]}" if problems else ""))
            try:
                result = condition()
                if result:
                    return result
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last_error = exc
            time.sleep(0.05)
        raise BenchError(f"{what}: timed out after {timeout} s ({last_error})")

    def client(self, n, expect, timeout, **kwargs):
        client = Client(self.port, self.transport, n, expect, timeout, **kwargs)
        self.procs.append(client.proc)
        return client

    def wait_subscribers(self, n, timeout=120):
        self.wait_until(lambda: int(self.get("/subscribers", 30)) >= n, timeout,
                        f"{n} subscribers")

    def cpu(self):
        return cpu_seconds(self.server.pid)

    def rss(self):
        return rss_bytes(self.server.pid)

    def stats(self):
        try:
            return json.loads(self.get("/stats", 30))
        except (OSError, http.client.HTTPException, BenchError, ValueError):
            return {}

    def problems(self):
        return log_problems(self.log_path)
