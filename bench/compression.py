"""Compression scenario: bytes on the wire, server CPU and memory, compressed vs not.

    python -m bench.compression            # the full run (about 3 minutes a round)
    python -m bench.compression --quick    # N=300, fewer ticks, for a smoke test

Every run serves market ticks (``bench/server.py --ticks``: ~110 bytes of JSON each,
prices walking by cents; padding would compress to nothing) and is done twice, side
by side in one session: ``plain`` (compression off) and ``compressed``
(``tornadose_compression=True``, the C load client asking for gzip / offering
permessage-deflate, and inflating what it needs to count and check). Workloads:

- *topics*: N=1000 connections x 50 of 500 topics, M=20,000 ticks, 100 and 10 per
  loop turn (10 and 1 tick per connection per turn), SSE and WebSocket;
- *burst*: one QueueStore, N=1000, M=1000 ticks, 100 per turn;
- *memory*: N=5000 store subscribers after 10 ticks each (every codec has written),
  server RSS per connection.

Figures: wire bytes per delivered tick (body bytes the client received over ticks
delivered, heads excluded), server CPU µs per delivery, client CPU (a client that
saturates its core measures itself), and RSS per connection. Ratios compressed/plain
are of the same round; ``--repeat`` interleaves rounds. JSON goes to
``bench/results/compression-<time>.json`` and a plot next to it (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time

from bench.harness import RESULTS, Session
from bench.scenarios import throughput, topics

MODES = {"plain": (["--ticks"], False), "compressed": (["--ticks", "--compress"], True)}


def memory(contender, transport, n, compress, server_args, settle=1.0, cap=120.0):
    """Server RSS per connection with N store subscribers that have each received 10
    ticks: (RSS after - RSS before) / N."""
    with Session(contender, transport, server_args) as session:
        time.sleep(settle / 3)
        rss0 = session.rss()
        client = session.client(n, 10, timeout=cap + 600, compress=compress)
        session.wait_subscribers(n, timeout=cap)
        session.get("/burst?messages=10&per_iter=10", cap)
        report = client.report(cap)
        time.sleep(settle)
        rss1 = session.rss()
        problems = session.problems()
    return {"n": n, "rss_before": rss0, "rss_after": rss1,
            "bytes_per_connection": (rss1 - rss0) / n, "complete": report["complete"],
            "errors": report["error_count"], "wire_bytes": report.get("wire_bytes"),
            "server_log_problems": problems}


def _line(r: dict) -> str:
    per_tick = r["wire_bytes"] / r["delivered"] if r.get("delivered") else float("nan")
    busy = (r.get("client_busy") or 0) * 100
    return (f"{r['us_per_delivery']:7.3f} µs/deliv  {per_tick:7.1f} B/tick  "
            f"client CPU {busy:3.0f}%  {r['delivered']}/{r['expected']}"
            + (f"  {'; '.join(r['notes'])}" if r.get("notes") else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", default="cython", choices=["cython", "python"])
    parser.add_argument("--quick", action="store_true", help="N=300, M=5000: a smoke test")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, interleaved")
    parser.add_argument("--transports", default="sse,ws")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("-n", "--connections", type=int, help="N of the topics and burst runs")
    parser.add_argument("-m", "--ticks", type=int, help="M of the topics runs (500 divides it; "
                        "the burst gets M/20)")
    parser.add_argument("--memory-connections", type=int, help="N of the memory runs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    n, m, mem_n = (300, 5000, 1000) if args.quick else (1000, 20000, 5000)
    n = args.connections or n
    m = args.ticks or m
    mem_n = args.memory_connections or mem_n
    rows: list[dict] = []
    for round_ in range(args.repeat):
        for transport in args.transports.split(","):
            work = [("topics", per) for per in (100, 10)] + [("burst", 100)]
            for kind, per in work:
                for mode, (server_args, compress) in MODES.items():
                    if kind == "topics":
                        r = topics(args.contender, transport, n, m, per, 500, 50,
                                   server_args=server_args, compress=compress)
                    else:
                        r = throughput(args.contender, transport, n, m // 20, per,
                                       server_args=server_args, compress=compress)
                    r.pop("info", None)
                    r.update(kind=kind, transport=transport, mode=mode, round=round_)
                    rows.append(r)
                    print(f"{kind:<6} {transport:<3} {per:3d}/turn {mode:<10} {_line(r)}",
                          flush=True)
            if not args.no_memory:
                for mode, (server_args, compress) in MODES.items():
                    r = memory(args.contender, transport, mem_n, compress, server_args)
                    r.update(kind="memory", transport=transport, mode=mode, round=round_)
                    rows.append(r)
                    print(f"memory {transport:<3} N={mem_n} {mode:<10} "
                          f"{r['bytes_per_connection'] / 1024:6.2f} KB/connection"
                          + ("" if r["complete"] else f"  INCOMPLETE ({r['errors']} errors)"),
                          flush=True)
    summary = summarize(rows)
    print("\ncompressed / plain, medians over rounds:")
    for line in summary["lines"]:
        print("  " + line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"compression-{stamp}.json"
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1, default=str))
    plot(summary, RESULTS / f"compression-{stamp}.png")
    print(f"results: {out}")


def summarize(rows: list[dict]) -> dict:
    """Per workload: medians of B/tick, µs/delivery, client CPU and KB/connection for
    each mode, and their ratios."""
    table, lines = [], []
    keys = sorted({(r["kind"], r["transport"], r.get("per_iter", 0)) for r in rows})
    for kind, transport, per in keys:
        def med(mode, field, rows=rows, kind=kind, transport=transport, per=per):
            values = [field(r) for r in rows if (r["kind"], r["transport"], r.get("per_iter", 0))
                      == (kind, transport, per) and r["mode"] == mode]
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        if kind == "memory":
            plain = med("plain", lambda r: r["bytes_per_connection"])
            comp = med("compressed", lambda r: r["bytes_per_connection"])
            entry = {"kind": kind, "transport": transport, "kb_plain": plain / 1024,
                     "kb_compressed": comp / 1024, "kb_added": (comp - plain) / 1024}
            lines.append(f"memory {transport:<3}: {plain / 1024:.2f} -> {comp / 1024:.2f} KB per "
                         f"connection (+{(comp - plain) / 1024:.2f} KB)")
        else:
            def per_tick(r):
                return r["wire_bytes"] / r["delivered"] if r.get("delivered") else None

            b0, b1 = med("plain", per_tick), med("compressed", per_tick)
            c0, c1 = (med(mode, lambda r: r["us_per_delivery"]) for mode in MODES)
            k0, k1 = (med(mode, lambda r: r.get("client_busy")) for mode in MODES)
            entry = {"kind": kind, "transport": transport, "per_iter": per,
                     "bytes_plain": b0, "bytes_compressed": b1, "bytes_ratio": b1 / b0,
                     "us_plain": c0, "us_compressed": c1, "cpu_ratio": c1 / c0,
                     "client_busy_plain": k0, "client_busy_compressed": k1}
            lines.append(f"{kind:<6} {transport:<3} {per:3d}/turn: {b0:6.1f} -> {b1:6.1f} B/tick "
                         f"(x{b1 / b0:.3f}), {c0:.3f} -> {c1:.3f} µs/delivery (x{c1 / c0:.3f}), "
                         f"client CPU {k0 * 100:.0f}% -> {k1 * 100:.0f}%")
        table.append(entry)
    return {"table": table, "lines": lines}


def plot(summary: dict, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot)")
        return
    rows = [e for e in summary["table"] if e["kind"] != "memory"]
    labels = [f"{e['kind']} {e['transport']}\n{e['per_iter']}/turn" for e in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(rows))
    for ax, (plain, comp, title) in zip(axes, [
        ("bytes_plain", "bytes_compressed", "wire bytes per delivered tick"),
        ("us_plain", "us_compressed", "server CPU µs per delivery"),
    ]):
        ax.bar([i - 0.2 for i in x], [e[plain] for e in rows], 0.4, label="plain")
        ax.bar([i + 0.2 for i in x], [e[comp] for e in rows], 0.4, label="compressed")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
