"""Scaling out over Redis: 2 server processes behind one Redis against 1 without.

    python -m bench.redis_scale [--transport sse] [-n 1000] [-m 1000] [--per-iter 100]
                                [--size 90] [--setups queue,stream,pubsub] [--repeat 1]

Setups (each run in turn, fresh processes and a fresh redis-server every time):

* ``queue``: one server process with a QueueStore and all N subscribers; the burst is
  submitted in that process. No Redis.
* ``stream``: two server processes, each with a RedisStreamStore on one redis-server
  and N/2 subscribers; the burst is submitted in the first one (XADD), and both read
  it back (XREAD) and fan it out.
* ``pubsub``: the same with RedisStore (PUBLISH / SUBSCRIBE).

Each server process has its own load client (:mod:`bench.client`, raw sockets, counts
frames). With two or more CPUs, every server process is pinned to the first CPU (so
each setup gets the same server CPU budget: one core) and the clients, redis-server
and this script to the others. The figures, for the window from the burst request
until the last client counted its last frame:

* deliveries/s: frames counted by the clients / wall time;
* server CPU us per delivery: CPU time (user+system, from
  /proc/<pid>/task/*/schedstat) summed over the server processes / frames;
* Redis CPU: redis-server's own CPU time, in total and per message and per delivery
  (reported separately: it is a shared service, not part of the servers' budget).

The servers are this file, run as ``python -m bench.redis_scale serve ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.floor import payload
from bench.harness import cpu_seconds, free_port, request, stop

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


# -- the server ------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """One benchmark server: a store on one transport, plus control routes:
    ``GET /subscribers``, ``GET /stats``, ``POST /burst?messages=M&per_iter=K&size=S``
    (answers once all are submitted) and ``GET /ready`` (once the store reads Redis)."""
    import resource

    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    import tornadose
    from tornadose.handlers import EventSource, WebSocketSubscriber
    from tornadose.stores import QueueStore, RedisStore, RedisStreamStore

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Control(tornado.web.RequestHandler):
        def initialize(self, store):
            self.store = store

    class Subscribers(Control):
        def get(self):
            self.write(str(len(self.store.subscribers)))

    class Stats(Control):
        def get(self):
            self.write({**self.store.stats(), "backend": tornadose.backend, "pid": os.getpid()})

    class Burst(Control):
        async def post(self):
            messages = int(self.get_argument("messages"))
            per_iter = int(self.get_argument("per_iter", "100"))
            size = int(self.get_argument("size", "90"))
            submit = self.store.submit
            clock = time.monotonic_ns
            for first in range(0, messages, per_iter):
                for seq in range(first, min(messages, first + per_iter)):
                    submit(payload(seq, clock(), size))
                await asyncio.sleep(0)
            self.write({"submitted": messages})

    async def main() -> None:
        if args.store == "queue":
            store = QueueStore()
        elif args.store == "stream":
            store = RedisStreamStore("bench", host="127.0.0.1", port=args.redis_port)
        else:
            store = RedisStore("bench", host="127.0.0.1", port=args.redis_port)
        if args.store != "queue":
            await store.start()
        handler = EventSource if args.transport == "sse" else WebSocketSubscriber
        app = tornado.web.Application(
            [
                (rf"/{args.transport}", handler, {"store": store}),
                (r"/subscribers", Subscribers, {"store": store}),
                (r"/stats", Stats, {"store": store}),
                (r"/burst", Burst, {"store": store}),
            ]
        )
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(tornado.netutil.bind_sockets(args.port, "127.0.0.1", backlog=4096))
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the driver --------------------------------------------------------------------------


def pin(pid: int, cpus: set[int]) -> None:
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(pid, cpus)


def wait_until(condition, timeout: float, procs: list[subprocess.Popen], what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: {proc.args[:4]} exited with {proc.returncode}")
        try:
            result = condition()
            if result:
                return result
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: timed out after {timeout} s")


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


def run_one(setup: str, args: argparse.Namespace) -> dict:
    """One burst through one setup; returns its figures."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]}
    other_cpus = set(cpus[1:]) or server_cpus
    nservers = 1 if setup == "queue" else 2
    env = dict(os.environ)
    procs: list[subprocess.Popen] = []
    redis = None
    workdir = tempfile.mkdtemp(prefix="redis-scale-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = [RESULTS / f"redis-scale-{setup}-server{i}.log" for i in range(nservers)]
    try:
        redis_port = 0
        if setup != "queue":
            redis, redis_port = start_redis(workdir)
            pin(redis.pid, other_cpus)
        servers, ports = [], []
        for i in range(nservers):
            port = free_port()
            with open(logs[i], "w") as log:
                server = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.redis_scale",
                        "serve",
                        "--port",
                        str(port),
                        "--store",
                        setup,
                        "--redis-port",
                        str(redis_port),
                        "--transport",
                        args.transport,
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            procs.append(server)
            pin(server.pid, server_cpus)
            servers.append(server)
            ports.append(port)
        for server in servers:
            line = server.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{setup}: a server did not start (see {logs[0].parent})")
        share = [args.connections // nservers] * nservers
        share[0] += args.connections - sum(share)
        clients = []
        for port, n in zip(ports, share):
            client = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.client",
                    "--port",
                    str(port),
                    "--transport",
                    args.transport,
                    "-n",
                    str(n),
                    "--expect",
                    str(args.messages),
                    "--timeout",
                    str(args.timeout + 120),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(client)
            pin(client.pid, other_cpus)
            clients.append(client)
        for port, n in zip(ports, share):
            wait_until(
                lambda port=port, n=n: int(request(port, "/subscribers")) == n,
                120,
                procs,
                "subscribers",
            )
        backend = json.loads(request(ports[0], "/stats"))["backend"]
        pids = [server.pid for server in servers]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        redis_cpu0 = cpu_seconds(redis.pid) if redis else 0.0
        t0 = time.monotonic()
        request(
            ports[0],
            f"/burst?messages={args.messages}&per_iter={args.per_iter}&size={args.size}",
            args.timeout,
            method="POST",
        )
        reports = []
        for client in clients:
            try:
                out, _ = client.communicate(timeout=max(1.0, t0 + args.timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                client.send_signal(signal.SIGTERM)
                out, _ = client.communicate(timeout=30)
            if client.returncode != 0 or not out:
                raise RuntimeError(f"{setup}: a client failed with exit code {client.returncode}")
            reports.append(json.loads(out))
        cpu1 = [cpu_seconds(pid) for pid in pids]
        redis_cpu1 = cpu_seconds(redis.pid) if redis else 0.0
        stats = [json.loads(request(port, "/stats")) for port in ports]
    finally:
        for proc in reversed(procs):
            stop(proc)
        if redis is not None:
            stop(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    delivered = sum(r["total"] for r in reports)
    t_last = max((r["t_last"] for r in reports if r["t_last"]), default=None)
    wall = (t_last - t0) if t_last else float("nan")
    server_cpu = sum(b - a for a, b in zip(cpu0, cpu1))
    redis_cpu = redis_cpu1 - redis_cpu0
    problems = [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line or "ERROR" in line or "WARNING" in line
    ]
    return {
        "setup": setup,
        "backend": backend,
        "transport": args.transport,
        "servers": nservers,
        "n": args.connections,
        "m": args.messages,
        "per_iter": args.per_iter,
        "size": args.size,
        "delivered": delivered,
        "expected": args.connections * args.messages,
        "frames_min": min(r["min"] for r in reports),
        "server_cpu_s": server_cpu,
        "server_cpu_s_each": [b - a for a, b in zip(cpu0, cpu1)],
        "us_per_delivery": server_cpu / delivered * 1e6 if delivered else float("nan"),
        "wall_s": wall,
        "deliveries_per_s": delivered / wall if wall > 0 else float("nan"),
        "redis_cpu_s": redis_cpu,
        "redis_us_per_message": redis_cpu / args.messages * 1e6,
        "redis_us_per_delivery": redis_cpu / delivered * 1e6 if delivered else float("nan"),
        "client_errors": [e for r in reports for e in r["errors"]],
        "gaps": sum(s.get("gaps", 0) for s in stats),
        "server_log_problems": problems[:20],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        parser = argparse.ArgumentParser(prog="bench.redis_scale serve")
        parser.add_argument("serve")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--store", choices=["queue", "stream", "pubsub"], required=True)
        parser.add_argument("--redis-port", type=int, default=0)
        parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
        serve(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="queue,stream,pubsub", help="comma-separated")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("-n", "--connections", type=int, default=1000, help="in total")
    parser.add_argument("-m", "--messages", type=int, default=1000)
    parser.add_argument("--per-iter", type=int, default=100, help="submits per loop iteration")
    parser.add_argument("--size", type=int, default=90, help="message size in characters")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setup, interleaved")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    results = []
    for _ in range(args.repeat):
        for setup in args.setups.split(","):
            result = run_one(setup, args)
            print(
                f"{setup}: {result['us_per_delivery']:.2f} us/delivery", file=sys.stderr, flush=True
            )
            results.append(result)
    print(
        f"redis_scale: transport={args.transport} n={args.connections} m={args.messages} "
        f"per_iter={args.per_iter} size={args.size} backend={results[0]['backend']} "
        f"cpus={len(os.sched_getaffinity(0))}"
    )
    print(
        f"{'setup':<7} {'procs':>5} {'delivered':>17} {'deliv/s':>9} {'wall s':>7} "
        f"{'srv CPU s':>9} {'us/deliv':>8} {'redis CPU s':>11} {'redis us/msg':>12} {'gaps':>4}"
    )
    for r in results:
        print(
            f"{r['setup']:<7} {r['servers']:>5} {r['delivered']:>8}/{r['expected']:<8} "
            f"{r['deliveries_per_s']:>9.0f} {r['wall_s']:>7.3f} {r['server_cpu_s']:>9.3f} "
            f"{r['us_per_delivery']:>8.3f} {r['redis_cpu_s']:>11.3f} "
            f"{r['redis_us_per_message']:>12.1f} {r['gaps']:>4}"
        )
    medians: dict[str, list[float]] = {}
    for r in results:
        medians.setdefault(r["setup"], []).append(r["us_per_delivery"])
    base = statistics.median(medians.get("queue", next(iter(medians.values()))))
    print("\nmedian server CPU us/delivery (summed over server processes), ratio to queue:")
    for setup, values in medians.items():
        value = statistics.median(values)
        print(f"  {setup:<7} {value:8.3f} us   x{value / base:.2f}")
    for r in results:
        for problem in r["client_errors"] + r["server_log_problems"]:
            print(f"  ! {r['setup']}: {problem}")
    out = RESULTS / f"redis-scale-{args.transport}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
