"""One throughput scenario, several contenders, repeated: for quick A/B comparisons.

    python -m bench.burst --contenders cython,floor --transport sse -n 1000 -m 1000 \\
        --per-iter 100 --repeat 5

The same measurement as ``python -m bench`` (see :func:`bench.scenarios.throughput`):
server CPU per delivery over a burst of M messages to N subscribers, ``--per-iter``
per loop iteration (1 for the per-message scenario). Runs are interleaved across
contenders; prints each run, then the median per contender and its ratio to the
first contender. JSON goes to ``bench/results/burst-<transport>-<time>.json``.
"""

import argparse
import json
import signal
import statistics
import sys
import time

from bench.harness import CONTENDERS, RESULTS
from bench.scenarios import throughput


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="cython,floor",
                        help=f"comma-separated, from: {', '.join(CONTENDERS)}")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument("-m", "--messages", type=int, default=1000)
    parser.add_argument("--per-iter", type=int, default=100, help="messages per loop iteration")
    parser.add_argument("--size", type=int, default=90, help="message size in characters")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender, interleaved")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds before a run is cut")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    names = args.contenders.split(",")
    results = []
    for _ in range(args.repeat):
        for name in names:
            r = throughput(name, args.transport, args.connections, args.messages,
                           args.per_iter, args.size, args.cap)
            r.pop("info", None)
            r["contender"] = name
            results.append(r)
            print(f"{name:<15} {r['us_per_delivery']:8.3f} µs/delivery  "
                  f"{r['delivered']}/{r['expected']}  client CPU "
                  f"{(r['client_busy'] or 0) * 100:.0f}%  {'; '.join(r['notes'])}", flush=True)
    medians = {name: statistics.median(r["us_per_delivery"] for r in results
                                       if r["contender"] == name and r["us_per_delivery"])
               for name in names}
    print(f"\nmedian server CPU µs per delivery ({args.transport}, N={args.connections}, "
          f"M={args.messages}, {args.per_iter} per iteration), ratio to {names[0]}:")
    for name, value in medians.items():
        print(f"  {name:<15} {value:8.3f}   x{value / medians[names[0]]:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"burst-{args.transport}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
