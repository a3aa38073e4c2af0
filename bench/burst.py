"""One throughput scenario, several contenders, repeated: for quick A/B comparisons.

    python -m bench.burst --contenders cython,floor --transport sse -n 1000 -m 1000 \\
        --per-iter 100 --repeat 5

The same measurement as ``python -m bench`` (see :func:`bench.scenarios.throughput`):
server CPU per delivery over a burst of M messages to N subscribers, ``--per-iter``
per loop iteration (1 for the per-message scenario). Runs are interleaved across
contenders; prints each run, then the median per contender and its ratio to the
first contender. JSON goes to ``bench/results/burst-<transport>-<time>.json``.

With ``--topics T`` it runs the topics scenario instead (:func:`bench.scenarios.topics`):
N connections, each subscribed to ``--topics-per-conn`` of T topics, M ticks::

    python -m bench.burst --contenders floor-topics,cython --topics 500 -m 20000 \\
        --per-iter 10 --repeat 3
"""

import argparse
import json
import signal
import statistics
import sys
import time

from bench.harness import CONTENDERS, RESULTS
from bench.scenarios import throughput, topics


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
    parser.add_argument("--topics", type=int, default=0,
                        help="run the topics scenario with T topics (M ticks; T divides M)")
    parser.add_argument("--topics-per-conn", type=int, default=50,
                        help="topics per connection (divides --topics)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    names = args.contenders.split(",")
    results = []
    for _ in range(args.repeat):
        for name in names:
            if args.topics:
                r = topics(name, args.transport, args.connections, args.messages,
                           args.per_iter, args.topics, args.topics_per_conn, args.size, args.cap)
            else:
                r = throughput(name, args.transport, args.connections, args.messages,
                               args.per_iter, args.size, args.cap)
            r.pop("info", None)
            r["contender"] = name
            results.append(r)
            print(f"{name:<15} {r['us_per_delivery']:8.3f} µs/delivery  "
                  f"{r['delivered']}/{r['expected']}  client CPU "
                  f"{(r['client_busy'] or 0) * 100:.0f}%"
                  + (f"  {r['writes_per_delivery']:.3f} writes/delivery"
                     if r.get("writes_per_delivery") is not None else "")
                  + f"  {'; '.join(r['notes'])}", flush=True)
    medians = {name: statistics.median(r["us_per_delivery"] for r in results
                                       if r["contender"] == name and r["us_per_delivery"])
               for name in names}
    what = (f"{args.topics} topics, {args.topics_per_conn} per connection, " if args.topics
            else "")
    print(f"\nmedian server CPU µs per delivery ({args.transport}, N={args.connections}, "
          f"{what}M={args.messages}, {args.per_iter} per iteration), ratio to {names[0]}:")
    for name, value in medians.items():
        print(f"  {name:<15} {value:8.3f}   x{value / medians[names[0]]:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "topics-" if args.topics else ""
    out = RESULTS / f"burst-{kind}{args.transport}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
