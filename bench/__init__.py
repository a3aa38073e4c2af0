"""Benchmark harness for tornadose: ``python -m bench`` (see bench/README.md).

Modules:

* :mod:`bench.run`        -- the CLI: plans the scenarios, runs them, writes table/JSON/plots.
* :mod:`bench.scenarios`  -- burst/per-message throughput, topics (a market feed), latency,
  idle memory, stalled.
* :mod:`bench.harness`    -- contender servers and load clients as pinned processes.
* :mod:`bench.report`     -- ratios, target checks, the table, the plots.
* :mod:`bench.server`     -- a tornadose store served by Tornado (ours, or the reference).
* :mod:`bench.floor`      -- the raw floors: pre-built frames, plain non-blocking send()
  (``--mode topics``: the topics floor).
* :mod:`bench.wsbroadcast`-- the websockets library's broadcast().
* :mod:`bench.client`     -- the raw-socket load client (and bench/loadclient.c, its C twin).
* :mod:`bench.venvs`      -- the reference virtual environment (tornadose 0.4.1).
* :mod:`bench.burst`      -- one throughput scenario, repeated, for quick A/B runs.
"""
