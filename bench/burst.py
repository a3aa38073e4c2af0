"""Burst benchmark: server CPU per delivered message.

    python -m bench.burst --contenders python,reference --transport sse \\
        -n 1000 -m 1000 --per-iter 100

For each contender: start a server (:mod:`bench.server`, pinned to one CPU),
start a load client (:mod:`bench.client`, pinned to another) with N
subscribers, wait until the server counts N subscribers, then trigger a burst
of M messages and wait until the client has counted N*M frames.  The server's
CPU time (user+system) over that window divided by the frames delivered is
the headline number.  Server logs and a JSON record of the results go to
``bench/results/``.

Contenders:

* ``reference``: tornadose 0.4.1 from PyPI, in ``bench/.venvs/reference``.
* ``python``: this repository's tornadose with TORNADOSE_NO_EXTENSIONS=1.
* ``cython``: this repository's tornadose with its compiled speedups (built
  in place beforehand).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.venvs import VENV_ROOT, venv_python

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def contender(name):
    """Return (server argv prefix, env, directory tornadose must come from,
    the ``tornadose.backend`` it must report)."""
    env = dict(os.environ)
    env.pop("TORNADOSE_NO_EXTENSIONS", None)
    if name == "reference":
        # -I keeps the repository (cwd and script dir) off sys.path.
        argv = [venv_python("reference"), "-I", "bench/server.py"]
        return argv, env, VENV_ROOT / "reference", None
    if name in ("python", "cython"):
        if name == "python":
            env["TORNADOSE_NO_EXTENSIONS"] = "1"
        return [sys.executable, "-m", "bench.server"], env, REPO / "tornadose", name
    raise SystemExit(f"unknown contender {name!r}")


def free_port():
    """A currently unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port, method, path, timeout=10.0):
    """Send one HTTP request to the server, return the body as text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {body[:200]}")
        return body
    finally:
        conn.close()


def wait_until(condition, timeout, procs, what):
    """Poll ``condition()`` until truthy; fail if a process dies or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.args[:3]} exited with {proc.returncode}")
        try:
            result = condition()
            if result:
                return result
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: timed out after {timeout} s")


def cpu_seconds(pid):
    """CPU time (user+system) of all threads of ``pid``.

    Read from /proc/<pid>/task/*/schedstat (nanoseconds) where the kernel has it:
    /proc/<pid>/stat and psutil count in 10 ms ticks, too coarse for a fast server.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return sum(
            int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            for task in tasks
        ) / 1e9
    except (FileNotFoundError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def pin(pid, index):
    """Pin ``pid`` to the index-th CPU we may use, if there are at least two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(pid, {cpus[index]})


def stop(proc):
    """Terminate a child process, killing it if it does not exit promptly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_problems(path):
    """Lines of a server log that indicate errors."""
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if "Traceback" in line or "ERROR" in line or "Error" in line]


def run_one(name, transport, n, m, per_iter, size, timeout):
    """Run one burst for one contender; return a result dict."""
    argv, env, origin, backend = contender(name)
    port = free_port()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"server-{name}-{transport}.log"
    procs = []
    try:
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [*argv, "--port", str(port), "--transport", transport, "--store", "queue"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        procs.append(server)
        pin(server.pid, 0)
        info = wait_until(lambda: json.loads(request(port, "GET", "/info")), 30, procs, "server start")
        if not Path(info["tornadose_file"]).resolve().is_relative_to(origin.resolve()):
            raise RuntimeError(f"{name}: tornadose imported from {info['tornadose_file']}, not {origin}")
        if info["backend"] != backend:
            raise RuntimeError(f"{name}: tornadose backend is {info['backend']!r}, not {backend!r}")
        client = subprocess.Popen(
            [sys.executable, "-m", "bench.client", "--port", str(port), "--transport", transport,
             "-n", str(n), "--expect", str(m), "--timeout", str(timeout + 120)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        procs.append(client)
        pin(client.pid, 1)
        wait_until(lambda: int(request(port, "GET", "/subscribers")) == n, 120, procs, "subscribers")
        cpu0 = cpu_seconds(server.pid)
        t0 = time.monotonic()
        try:
            request(port, "POST", f"/burst?messages={m}&per_iter={per_iter}&size={size}", timeout)
        except TimeoutError:
            pass  # still submitting after `timeout`: the client reports what arrived
        try:
            out, _ = client.communicate(timeout=max(1.0, t0 + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            client.send_signal(signal.SIGTERM)
            out, _ = client.communicate(timeout=30)
        cpu1 = cpu_seconds(server.pid)
    finally:
        for proc in reversed(procs):
            stop(proc)
    if client.returncode != 0 or not out:
        raise RuntimeError(f"{name}: client failed with exit code {client.returncode}")
    report = json.loads(out)
    delivered = report["total"]
    wall = (report["t_last"] - t0) if report["t_last"] else float("nan")
    return {
        "contender": name,
        "transport": transport,
        "n": n,
        "m": m,
        "per_iter": per_iter,
        "size": size,
        "tornadose": f"{info['tornadose']} backend={info['backend']} ({info['tornadose_file']})",
        "delivered": delivered,
        "expected": n * m,
        "frames_min": report["min"],
        "frames_max": report["max"],
        "client_errors": [f"{report['error_count']} connection errors: {e}" for e in report["errors"]],
        "server_cpu_s": cpu1 - cpu0,
        "us_per_delivery": (cpu1 - cpu0) / delivered * 1e6 if delivered else float("nan"),
        "wall_s": wall,
        "deliveries_per_s": delivered / wall if wall > 0 else float("nan"),
        "first_frame_ms": (report["t_first"] - t0) * 1e3 if report["t_first"] else float("nan"),
        "client_cpu_s": report["cpu_s"],
        "server_log_problems": log_problems(log_path)[:20],
    }


def print_table(results, baseline):
    """Print one row per run, then the median µs/delivery per contender."""
    header = f"{'contender':<10} {'delivered':>17} {'min/max':>11} {'srv CPU s':>9} {'us/deliv':>8} {'wall s':>7} {'deliv/s':>9} {'1st ms':>7} {'cli CPU s':>9}"
    print(header)
    for r in results:
        print(
            f"{r['contender']:<10} {r['delivered']:>8}/{r['expected']:<8} "
            f"{r['frames_min']:>5}/{r['frames_max']:<5} {r['server_cpu_s']:>9.3f} "
            f"{r['us_per_delivery']:>8.3f} {r['wall_s']:>7.2f} {r['deliveries_per_s']:>9.0f} "
            f"{r['first_frame_ms']:>7.1f} {r['client_cpu_s']:>9.2f}"
        )
    medians = {}
    for r in results:
        medians.setdefault(r["contender"], []).append(r["us_per_delivery"])
    medians = {name: statistics.median(values) for name, values in medians.items()}
    base = medians[baseline]
    print(f"\nmedian server CPU us/delivery, ratio to {baseline}:")
    for name, value in medians.items():
        print(f"  {name:<10} {value:8.3f} us   x{value / base:.3f}")
    for r in results:
        for problem in r["client_errors"] + r["server_log_problems"]:
            print(f"  ! {r['contender']}: {problem}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="python,reference", help="comma-separated")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument("-m", "--messages", type=int, default=1000)
    parser.add_argument("--per-iter", type=int, default=100, help="messages per loop iteration")
    parser.add_argument("--size", type=int, default=90, help="message size in characters")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender, interleaved")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for delivery")
    args = parser.parse_args()
    # Turn SIGTERM into SystemExit so run_one's cleanup stops the child processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    names = args.contenders.split(",")
    results = []
    for _ in range(args.repeat):
        for name in names:
            result = run_one(name, args.transport, args.connections, args.messages,
                             args.per_iter, args.size, args.timeout)
            print(f"{name}: {result['us_per_delivery']:.2f} us/delivery, tornadose {result['tornadose']}",
                  file=sys.stderr, flush=True)
            results.append(result)
    print(f"burst: transport={args.transport} n={args.connections} m={args.messages} "
          f"per_iter={args.per_iter} size={args.size} repeat={args.repeat}")
    print_table(results, "reference" if "reference" in names else names[0])
    out = RESULTS / f"burst-{args.transport}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
