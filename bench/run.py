"""``python -m bench``: every scenario, every contender, one run; table, JSON, plots.

    python -m bench --quick          # under 2 minutes on 2 cores
    python -m bench                  # the full run (under 20 minutes)
    python -m bench --tiny --contenders python,floor --no-plots   # seconds (the tests)
    python -m bench --scenarios topics-sse,topics-ws               # the market feed only
    python -m bench --quick --scenarios storm,admission            # reconnection storm
    python -m bench --scenarios soak                               # 60 s of churn

See bench/README.md for what each figure means.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench import report, scenarios
from bench.harness import RESULTS, BenchError, cpus

SCENARIOS = ["burst-sse", "burst-ws", "per-message-sse", "per-message-ws", "topics-sse",
             "topics-ws", "latency", "idle", "stalled", "sweep", "storm", "admission",
             "soak"]

#: contenders per scenario, in table order
CONTENDERS = {
    # +nodelay floors: the same sockets as the subscribers' (TCP_NODELAY on), like for like
    "burst": ["cython", "cython+metrics", "python", "reference", "floor", "floor+nodelay",
              "floor-msg", "websockets"],
    "per-message": ["cython", "python", "reference", "floor-msg", "floor-msg+nodelay",
                    "websockets"],
    # the reference (tornadose 0.4.1) has no topics
    "topics": ["cython", "python", "floor-topics"],
    "latency": ["cython", "python", "reference", "floor", "floor+nodelay"],
    "idle": ["cython", "python", "reference", "floor"],
    "stalled": ["cython", "python", "reference"],
    "sweep": ["cython", "python", "reference", "floor"],
    # the reference has no event ids, so no Last-Event-ID resumption: not run
    "storm": ["cython", "python"],
    "admission": ["cython", "python", "bare-tornado"],
    "soak": ["cython", "python"],
}
#: contenders run only when named in --contenders (diagnostics)
OPTIONAL = {
    # TCP_NODELAY set by the bench server: the core's own default after its rewrite
    "topics": ["cython+nodelay"],
    "latency": ["cython+nodelay"],
}
#: contenders fast enough to be run several times (median kept)
FAST = {"cython", "cython+metrics", "python", "floor", "floor-msg", "floor-topics",
        "cython+nodelay", "floor+nodelay", "floor-msg+nodelay", "bare-tornado"}
SLOW = {"reference"}

PRESETS = {
    "full": {
        "n": 1000, "m": 1000, "repeat": 3, "cap": 150.0, "slow_n": {}, "settle": 1.0,
        "latency": {"n": 5000, "rate": 500, "duration": 15.0, "cap": 20.0, "slow_cap": 20.0},
        "idle": {"ns": [5000, 10000]},
        "stalled": {"stalled": 100, "m": 1_000_000, "checkpoints": 10, "cap": 300.0,
                    "slow_cap": 60.0, "slow_chunk": 5000, "rate": 200_000},
        "sweep": {"ns": [100, 300, 1000, 3000, 10000], "cap": 45.0, "slow_ns": None},
        "topics": {"n": 1000, "m": 20000, "topics": 500, "per_conn": 50,
                   "per_iters": [100, 10], "cap": 150.0},
        "storm": {"n": 5000, "rate": 100, "before": 2.0, "after": 8.0, "cap": 60.0},
        "admission": {"n": 2000, "repeat": 5},
        "soak": {"n": 1000, "rate": 500, "churn": 200, "duration": 60.0},
    },
    "quick": {
        "n": 1000, "m": 1000, "repeat": 1, "cap": 30.0, "settle": 0.3,
        "slow_n": {"reference": 50, "websockets": 200},
        "latency": {"n": 1000, "rate": 500, "duration": 3.0, "cap": 3.0, "slow_cap": 1.5},
        "idle": {"ns": [2000]},
        "stalled": {"stalled": 100, "m": 100_000, "checkpoints": 4, "cap": 60.0,
                    "slow_cap": 3.0, "slow_chunk": 500, "rate": 200_000},
        "sweep": {"ns": [100, 1000, 3000], "cap": 4.0, "slow_ns": [100]},
        "topics": {"n": 300, "m": 20000, "topics": 500, "per_conn": 50,
                   "per_iters": [100, 10], "cap": 30.0},
        "storm": {"n": 1000, "rate": 100, "before": 1.0, "after": 6.0, "cap": 30.0},
        "admission": {"n": 2000, "repeat": 1},
        "soak": {"n": 1000, "rate": 500, "churn": 200, "duration": 10.0},
    },
    "tiny": {
        "n": 10, "m": 20, "repeat": 1, "cap": 20.0, "slow_n": {}, "settle": 0.1,
        "latency": {"n": 10, "rate": 100, "duration": 0.3, "cap": 5.0, "slow_cap": 5.0},
        "idle": {"ns": [20]},
        "stalled": {"stalled": 3, "m": 2000, "checkpoints": 2, "cap": 20.0,
                    "slow_cap": 20.0, "slow_chunk": 1000, "rate": 200_000},
        "sweep": {"ns": [5, 10], "cap": 20.0, "slow_ns": None},
        "topics": {"n": 10, "m": 1000, "topics": 500, "per_conn": 50,
                   "per_iters": [100, 10], "cap": 20.0},
        "storm": {"n": 10, "rate": 100, "before": 0.5, "after": 4.0, "cap": 20.0},
        "admission": {"n": 20, "repeat": 1},
        "soak": {"n": 10, "rate": 100, "churn": 50, "duration": 2.0, "settle": 3.0,
                 "warm": 0.5},
    },
}


@dataclass
class Case:
    scenario: str  # burst, per-message, latency, idle, stalled, sweep
    contender: str
    transport: str
    params: dict
    label: str = ""
    notes: list = field(default_factory=list)
    repeat: int = 1


def with_n(params, n):
    """A preset's parameters, with ``-n`` when it was given."""
    return {**params, "n": n} if n else dict(params)


def plan(args):
    preset = PRESETS[args.preset]
    n = args.n or preset["n"]
    m = args.m or preset["m"]
    wanted = set(args.contenders.split(",")) if args.contenders else None
    chosen = [s.strip() for s in args.scenarios.split(",")] if args.scenarios else SCENARIOS
    for name in chosen:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    cases = []
    skipped = []

    def contenders(kind, transport="sse"):
        optional = [c for c in OPTIONAL.get(kind, []) if wanted is not None and c in wanted]
        for c in CONTENDERS[kind] + optional:
            if c == "websockets" and transport != "ws":
                continue
            if c == "cython+nodelay" and transport != "sse":
                continue  # the bench server sets TCP_NODELAY for SSE only (WS has it)
            if wanted is not None and c not in wanted:
                continue
            yield c

    def slow_n(c, n):
        small = preset["slow_n"].get(c)
        if small and small < n:
            return small, [f"{args.preset}: {c} run with N={small} instead of {n} "
                           "(too slow for this mode; µs per delivery still comparable)"]
        return n, []

    for kind, per_iter in (("burst", 100), ("per-message", 1)):
        for transport in ("sse", "ws"):
            if f"{kind}-{transport}" not in chosen:
                continue
            for c in contenders(kind, transport):
                cn, notes = slow_n(c, n)
                cases.append(Case(kind, c, transport,
                                  {"n": cn, "m": m, "per_iter": min(per_iter, m),
                                   "cap": preset["cap"]},
                                  notes=notes, repeat=preset["repeat"] if c in FAST else 1))
    topic_transports = [t for t in ("sse", "ws") if f"topics-{t}" in chosen]
    if topic_transports:
        tp = preset["topics"]
        tn = args.n or tp["n"]
        if args.preset != "full" or tn != 1000:
            skipped.append(f"topics: {args.preset}: N={tn} connections (the full run: 1000)")
        if wanted is None or "reference" in wanted:
            skipped.append("topics: no reference: tornadose 0.4.1 has no topics")
        for per_iter in tp["per_iters"]:
            for transport in topic_transports:
                for c in contenders("topics", transport):
                    cases.append(Case("topics", c, transport,
                                      {"n": tn, "m": tp["m"], "per_iter": per_iter,
                                       "topics": tp["topics"], "per_conn": tp["per_conn"],
                                       "cap": tp["cap"]},
                                      repeat=preset["repeat"] if c in FAST else 1))
    if "latency" in chosen:
        lat = with_n(preset["latency"], args.n)
        for c in contenders("latency"):
            cap = lat["slow_cap"] if c in SLOW else lat["cap"]
            cases.append(Case("latency", c, "sse", {**lat, "cap": cap}))
    if "idle" in chosen:
        for n in [args.n] if args.n else preset["idle"]["ns"]:
            for transport in ("sse", "ws"):
                for c in contenders("idle"):
                    cases.append(Case("idle", c, transport, {"n": n, "settle": preset["settle"]}))
    if "stalled" in chosen:
        st = dict(preset["stalled"])
        if args.m:
            st["m"] = args.m
        for c in contenders("stalled"):
            slow = c in SLOW
            cases.append(Case("stalled", c, "sse", {
                **st, "cap": st["slow_cap"] if slow else st["cap"],
                "chunk": st["slow_chunk"] if slow else None}))
    if "sweep" in chosen:
        sw = preset["sweep"]
        for sn in sw["ns"]:
            for c in contenders("sweep"):
                if c in SLOW and sw["slow_ns"] is not None and sn not in sw["slow_ns"]:
                    skipped.append(f"sweep: {args.preset}: {c} run only at N="
                                   f"{', '.join(map(str, sw['slow_ns']))}")
                    continue
                cap = sw["cap"] if c in SLOW else preset["cap"]
                cases.append(Case("sweep", c, "sse",
                                  {"n": sn, "m": m, "per_iter": min(100, m), "cap": cap}))
    if "storm" in chosen:
        st = with_n(preset["storm"], args.n)
        if wanted is None or "reference" in wanted:
            skipped.append("storm: no reference: tornadose 0.4.1 sends no event ids, so a "
                           "reconnection cannot resume (no Last-Event-ID)")
        for c in contenders("storm"):
            cases.append(Case("storm", c, "sse", st))
    if "admission" in chosen:
        ad = preset["admission"]
        for c in contenders("admission"):
            cases.append(Case("admission", c, "sse", {"n": args.n or ad["n"]},
                              repeat=ad["repeat"] if c in FAST else 1))
    if "soak" in chosen:
        so = with_n(preset["soak"], args.n)
        for c in contenders("soak"):
            cases.append(Case("soak", c, "both", so))
    return cases, list(dict.fromkeys(skipped))


def run_case(case):
    p = case.params
    if case.scenario in ("burst", "per-message", "sweep"):
        return scenarios.throughput(case.contender, case.transport, p["n"], p["m"],
                                    p["per_iter"], cap=p["cap"])
    if case.scenario == "topics":
        return scenarios.topics(case.contender, case.transport, p["n"], p["m"], p["per_iter"],
                                p["topics"], p["per_conn"], cap=p["cap"])
    if case.scenario == "latency":
        return scenarios.latency(case.contender, case.transport, p["n"], p["rate"],
                                 p["duration"], cap=p["cap"])
    if case.scenario == "idle":
        return scenarios.idle_memory(case.contender, case.transport, p["n"], settle=p["settle"])
    if case.scenario == "stalled":
        return scenarios.stalled(case.contender, case.transport, p["stalled"], p["m"],
                                 p["checkpoints"], cap=p["cap"], rate=p["rate"],
                                 chunk=p["chunk"])
    if case.scenario == "storm":
        return scenarios.storm(case.contender, p["n"], p["rate"], p["before"], p["after"],
                               cap=p["cap"])
    if case.scenario == "admission":
        return scenarios.admission(case.contender, p["n"])
    if case.scenario == "soak":
        return scenarios.soak(case.contender, **p)
    raise ValueError(case.scenario)


class Progress:
    """A one-line progress bar on stderr (a line per step when not a terminal)."""

    def __init__(self, total, enabled=True):
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def show(self, what, finished=False):
        """Redraw the bar (on a terminal); elsewhere print one line per finished step."""
        if not self.enabled or not (self.tty or finished):
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.monotonic() - self.t0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{int(elapsed) // 60}:{int(elapsed) % 60:02d} {what}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150] + ("\n" if self.done == self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def step(self, what):
        self.done += 1
        self.show(what, finished=True)


def machine_info():
    info = {"cpus_usable": len(cpus()), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "pinned": len(cpus()) >= 2}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    try:
        import tornado
        info["tornado"] = tornado.version
    except ImportError:
        pass
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="smaller N for slow contenders, shorter runs (< 2 min)")
    mode.add_argument("--tiny", dest="preset", action="store_const", const="tiny",
                      help="a few subscribers and messages: checks the machinery (seconds)")
    parser.set_defaults(preset="full")
    parser.add_argument("--scenarios", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--contenders", help="comma-separated subset of: "
                        + ", ".join(dict.fromkeys(c for cs in CONTENDERS.values() for c in cs))
                        + "; opt-in (only when named): "
                        + ", ".join(dict.fromkeys(c for cs in OPTIONAL.values() for c in cs)))
    parser.add_argument("-n", type=int,
                        help="subscribers (burst, per-message, latency, idle; topics: connections)")
    parser.add_argument("-m", type=int, help="messages (burst, per-message, sweep, stalled)")
    parser.add_argument("--out", help="JSON file (default bench/results/bench-<time>.json, "
                        "also copied to bench/results/latest.json)")
    parser.add_argument("--plots-dir", help="where the PNG plots go (default bench/results)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    cases, skipped = plan(args)
    total = sum(c.repeat for c in cases)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or str(RESULTS / f"bench-{stamp}.json")
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "preset": args.preset,
           "argv": sys.argv[1:] if argv is None else argv, "machine": machine_info(),
           "config": PRESETS[args.preset], "skipped": skipped, "records": []}
    progress = Progress(total, not args.no_progress)
    t0 = time.monotonic()
    # Interleave the repeats of the fast contenders: round r of every case, then r+1,
    # every other round in reverse order, so that no contender always runs first (or
    # right after a heavy scenario) while the machine's load drifts.
    rounds = max([c.repeat for c in cases] or [1])
    results = {id(c): [] for c in cases}
    for r in range(rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            if r >= case.repeat:
                continue
            what = f"{case.scenario} {case.transport} {case.contender} N={case.params.get('n', '')}"
            if case.scenario == "topics":
                what += f" {case.params['per_iter']}/turn"
            progress.show(what)
            t = time.monotonic()
            try:
                record = run_case(case)
            except BenchError as exc:
                record = {"error": str(exc), "notes": [f"not run: {exc}"]}
            record["elapsed_s"] = time.monotonic() - t
            results[id(case)].append(record)
            progress.step(what)
    for case in cases:
        runs = results[id(case)]
        record = pick_median(runs)
        record.update({"scenario": case.scenario, "contender": case.contender,
                       "transport": case.transport, "params": case.params})
        record["notes"] = case.notes + record.get("notes", [])
        if len(runs) > 1:
            record["repeats_us_per_delivery"] = [r.get("us_per_delivery") for r in runs]
            if case.scenario == "admission":
                record["repeats_us_per_subscriber"] = [r.get("us_per_subscriber") for r in runs]
        record.pop("info", None)
        doc["records"].append(record)
    doc["elapsed_s"] = time.monotonic() - t0
    try:
        doc["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    report.add_ratios(doc)
    doc["targets"] = report.targets(doc)
    text = report.table(doc)
    doc["table"] = text
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    if not args.out:
        shutil.copyfile(out, RESULTS / "latest.json")
    print(text)
    if not args.no_plots:
        plots = report.plots(doc, args.plots_dir or str(RESULTS))
        for path in plots:
            print(f"plot: {os.path.relpath(path)}")
    print(f"results: {os.path.relpath(out)}  ({doc['elapsed_s']:.0f} s)")
    return 0


def pick_median(runs):
    """The run with the (lower) median µs per delivery, or per subscriber in the
    admission scenario (the first if there is none)."""
    key = "us_per_subscriber" if any("us_per_subscriber" in r for r in runs) else \
        "us_per_delivery"
    ok = sorted((r for r in runs if r.get(key) is not None), key=lambda r: r[key])
    return dict(ok[(len(ok) - 1) // 2] if ok else runs[0])
