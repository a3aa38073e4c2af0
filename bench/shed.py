"""Refusing at accept against admitting: server CPU per connection, side by side.

    python -m bench.shed [-n 2000] [--rounds 5] [--contender cython]

One server process per round (bench/server.py with ``--shed-port``) serves SSE on two
ports: on one it admits subscribers as usual, on the other it is always within its
descriptor headroom, so every connection is refused at accept with a minimal 503
(tornadose.transport.refusals.shed). Each round bursts N connections at each port
(bench/stormclient.py --admission, pinned to the other core, each reporting its own
CPU) and reads the server's CPU from before the burst until every head arrived (for
the refusals: and their sockets closed, which takes the shed linger of up to 1 s); the
order alternates from round to round. The figure is the median of the rounds' ratios,
refused / admitted, as the admission scenario pairs its rounds; the target is <= 0.3.
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import subprocess
import sys
import time

from bench.harness import REPO, BenchError, Session, free_port, pin

US = 1e6
TARGET = 0.3


def _burst(session: Session, port: int, n: int, status: int, cap: float) -> dict:
    cpu0 = session.cpu()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stormclient", "--port", str(port), "-n", str(n),
         "--admission", "--hold", "--timeout", str(cap), "--status", str(status)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    pin(proc.pid, 1)
    session.procs.append(proc)
    ready, _, _ = select.select([proc.stdout], [], [], cap + 30)
    if not ready:
        raise BenchError(f"no report from the client within {cap + 30} s")
    report = json.loads(proc.stdout.readline())
    if status == 200:
        session.wait_subscribers(n, timeout=cap)
    else:
        time.sleep(1.5)  # the shed sockets close after their linger (at most 1 s)
    cpu = session.cpu() - cpu0
    proc.terminate()
    proc.wait(10)
    session.procs.remove(proc)
    return {"server_cpu_s": cpu, "us_per_connection": cpu / n * US,
            "answered": report["answered"], "errors": report["error_count"],
            "client_cpu_s": report["cpu_s"]}


def run(contender: str, n: int, rounds: int, cap: float = 60.0) -> dict:
    results = []
    for index in range(rounds):
        shed_port = free_port()
        with Session(contender, "sse", ["--shed-port", str(shed_port)]) as session:
            time.sleep(0.3)
            order = ("refused", "admitted") if index % 2 == 0 else ("admitted", "refused")
            one = {}
            for kind in order:
                port, status = (shed_port, 503) if kind == "refused" else (session.port, 200)
                one[kind] = _burst(session, port, n, status, cap)
                if one[kind]["answered"] != n or one[kind]["errors"]:
                    raise BenchError(f"round {index + 1}, {kind}: {one[kind]}")
            one["ratio"] = one["refused"]["us_per_connection"] / one["admitted"]["us_per_connection"]
            results.append(one)
            print(f"round {index + 1}: refused {one['refused']['us_per_connection']:.1f} µs, "
                  f"admitted {one['admitted']['us_per_connection']:.1f} µs per connection "
                  f"(server CPU), ratio {one['ratio']:.3f}; client CPU "
                  f"{one['refused']['client_cpu_s']:.2f} / {one['admitted']['client_cpu_s']:.2f} s",
                  flush=True)
    ratio = statistics.median(r["ratio"] for r in results)
    return {"contender": contender, "n": n, "rounds": results, "ratio": ratio,
            "target": TARGET, "met": ratio <= TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contender", default="cython", choices=["cython", "python"])
    args = parser.parse_args()
    result = run(args.contender, args.n, args.rounds)
    print(f"refused at accept / admitted, server CPU per connection: {result['ratio']:.3f} "
          f"(median of {args.rounds} rounds; target <= {TARGET}: "
          f"{'met' if result['met'] else 'MISSED'})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
