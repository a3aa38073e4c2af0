"""The benchmark harness (``python -m bench``) on a tiny scenario, so that it cannot rot.

It runs every scenario with a handful of subscribers and messages, on the contenders
that need no network install (this package's pure-Python backend and the raw floors),
in a subprocess, and checks that the JSON carries every figure. No timing assertions:
the figures only have to exist and add up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the bench reads /proc and uses epoll"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ)
    env.pop("TORNADOSE_NO_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--contenders",
         "python,floor,floor-msg,floor-topics,bare-tornado",
         "--out", str(out), "--no-plots", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def _records(doc, scenario, **match):
    return [r for r in doc["records"] if r["scenario"] == scenario
            and all(r.get(k) == v for k, v in match.items())]


def test_every_scenario_ran(tiny_run):
    doc, _ = tiny_run
    assert {r["scenario"] for r in doc["records"]} == {
        "burst", "per-message", "topics", "latency", "idle", "stalled", "sweep", "storm",
        "admission", "soak"}
    assert not [r for r in doc["records"] if "error" in r]


@pytest.mark.parametrize("scenario", ["burst", "per-message"])
@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_throughput_figures(tiny_run, scenario, transport):
    doc, _ = tiny_run
    by = {r["contender"]: r for r in _records(doc, scenario, transport=transport)}
    floor = "floor" if scenario == "burst" else "floor-msg"
    assert {"python", floor} <= set(by)
    for r in by.values():
        # every connection got every frame, in order on the sampled ones
        assert r["complete"], r["notes"]
        assert r["delivered"] == r["expected"] == r["params"]["n"] * r["params"]["m"]
        assert r["frames_min"] == r["frames_max"] == r["params"]["m"]
        assert r["disorder"] == 0 and r["errors"] == 0
        assert r["server_cpu_s"] > 0 and r["us_per_delivery"] > 0
        assert r["deliveries_per_s"] > 0 and r["client_cpu_s"] is not None
        assert r["latency"]["samples"] > 0
    assert by[floor]["x_floor"] == pytest.approx(1.0)
    assert by["python"]["x_floor"] > 0
    assert by["python"]["server_stats"]["lapped"] == 0


@pytest.mark.parametrize("per_iter", [100, 10])
@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_topics_figures(tiny_run, transport, per_iter):
    doc, stdout = tiny_run
    by = {r["contender"]: r for r in _records(doc, "topics", transport=transport)
          if r["params"]["per_iter"] == per_iter}
    assert set(by) == {"python", "floor-topics"}
    for r in by.values():
        p = r["params"]
        expect = p["per_conn"] * p["m"] // p["topics"]
        # every connection got every frame of its topics, exactly its ticks per topic
        assert r["complete"], r["notes"]
        assert r["expect_per_conn"] == expect
        assert r["delivered"] == r["expected"] == p["n"] * expect
        assert r["frames_min"] == r["frames_max"] == expect
        assert r["disorder"] == 0 and r["errors"] == 0
        assert r["server_delivered"] == r["delivered"]
        assert 0 < r["server_writes"] <= r["delivered"]
        assert 0 < r["writes_per_delivery"] <= 1
        assert r["server_cpu_s"] > 0 and r["us_per_delivery"] > 0
        assert r["deliveries_per_s"] > 0 and r["latency"]["samples"] > 0
    assert by["floor-topics"]["x_floor"] == pytest.approx(1.0)
    assert by["python"]["x_floor"] > 0
    stats = by["python"]["server_stats"]
    assert stats["lapped"] == 0
    assert by["python"]["connections_at_start"] == by["python"]["params"]["n"]
    assert stats["topics"] == by["python"]["params"]["topics"]
    # the floor's single send per connection per loop iteration
    floor = by["floor-topics"]
    turns = floor["params"]["m"] // per_iter
    assert floor["server_writes"] <= turns * floor["params"]["n"]
    assert floor["sampled_reordered"] == 0  # it sends each connection's frames in order
    assert f"topics {transport.upper()}" in stdout


def test_topics_plan():
    """The topics scenario runs at 100 and 10 per turn, without the reference (which has
    no topics: the notes say so); cython+nodelay only when asked for."""
    from bench import run

    args = run.argparse.Namespace(preset="full", n=None, m=None, contenders=None,
                                  scenarios="topics-sse,topics-ws")
    cases, skipped = run.plan(args)
    assert {(c.contender, c.transport, c.params["per_iter"]) for c in cases} == {
        (c, t, k) for c in ("cython", "python", "floor-topics") for t in ("sse", "ws")
        for k in (100, 10)}
    assert {(c.params["n"], c.params["m"], c.params["topics"], c.params["per_conn"])
            for c in cases} == {(1000, 20000, 500, 50)}
    assert any("no reference" in note for note in skipped)
    args.contenders = "cython,cython+nodelay,floor-topics"
    cases, _ = run.plan(args)
    assert {(c.contender, c.transport) for c in cases if c.contender == "cython+nodelay"} == {
        ("cython+nodelay", "sse")}


def test_topics_urls_and_check():
    """Connection i's topics (client and load client alike) and the per-topic check."""
    from bench import client

    assert client.topic_indices(3, 500, 50)[:3] == [3, 13, 23]
    assert len(set(client.topic_indices(7, 500, 50))) == 50
    counts = [0] * 500
    for i in range(1000):
        for t in client.topic_indices(i, 500, 50):
            counts[t] += 1
    assert set(counts) == {100}
    assert client.topics_path("sse", 1, 20, 2) == "/sse?topics=S001,S011"
    sub = client.Subscriber(None)
    sub.stamps = client.array("q")
    sub.topic_next = [-1] * 20
    for t in (1, 11):
        sub.topic_next[t] = t

    def feed(*seqs):
        data = b"".join(b"data: %08d @%d@ xx\n\n" % (seq, 1000 + seq) for seq in seqs)
        client.take_stamps(sub, data, 5000)

    feed(1, 11, 21)
    assert sub.disorder == 0 and sub.reordered == 0
    assert client.missing_ticks(sub, 6, 2) == 3  # 3 ticks per topic expected: 41, 31, 51
    feed(41, 31)  # across topics: allowed, counted as reordered
    assert sub.disorder == 0 and sub.reordered == 1
    feed(71)  # 51 skipped in topic 11
    assert sub.disorder == 1
    feed(2)  # not one of its topics
    assert sub.disorder == 2


@pytest.mark.parametrize(("ticks", "disorder", "reordered"), [
    # 70 skips 50 in S010; 2 is not one of its topics; 30 after 40 is across topics
    ((0, 10, 20, 40, 30, 70, 2), 2, 2),
    # the right number of frames, all of S000: S010's 2 ticks are missing at the end
    ((0, 20, 40, 60), 2, 0),
    ((0, 10, 20, 30), 0, 0),
])
@pytest.mark.parametrize("which", ["c", "python"])
def test_load_clients_check_topics(which, ticks, disorder, reordered):
    """Both load clients (bench/loadclient.c and bench/client.py) ask for connection 0's
    topics (S000 and S010 of 20) and check that it gets exactly their ticks, in order
    within each topic (across topics, a reorder is only counted)."""
    import socket
    import threading

    from bench import client

    exe = client.c_client() if which == "c" else None
    if which == "c" and exe is None:
        pytest.skip("no C compiler")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {}

    def serve():
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            seen["request"] = head.split(b"\r\n")[0].decode()
            body = b"".join(b"id: x-%d\nevent: S%03d\ndata: %08d @%d@ xx\n\n"
                            % (seq, seq % 20, seq, 1000 + seq) for seq in ticks)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(body), body))
            conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    args = ["--port", str(port), "--transport", "sse", "-n", "1", "--expect", str(len(ticks)),
            "--timeout", "20", "--sample-every", "1", "--topics", "20", "--topics-per-conn", "2"]
    argv = [str(exe), *args] if exe else [sys.executable, "-m", "bench.client", *args]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    listener.close()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert seen["request"] == "GET /sse?topics=S000,S010 HTTP/1.1"
    assert report["complete"] and report["total"] == len(ticks)
    assert report["sampled_disorder"] == disorder
    assert report["sampled_reordered"] == reordered


def test_latency_figures(tiny_run):
    doc, _ = tiny_run
    for r in _records(doc, "latency"):
        assert r["complete"], r["notes"]
        lat = r["latency"]
        assert 0 <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["backlog"] in (True, False)
    assert _records(doc, "latency", contender="python")[0]["x_floor_p99"] > 0


def test_memory_figures(tiny_run):
    doc, _ = tiny_run
    for r in _records(doc, "idle"):
        assert r["rss_before"] > 0 and r["rss_after"] > 0
        assert r["bytes_per_subscriber"] is not None
    (stalled,) = _records(doc, "stalled")
    assert stalled["contender"] == "python"
    assert stalled["sent"] == stalled["m"] and stalled["complete"], stalled["notes"]
    assert len(stalled["points"]) == stalled["params"]["checkpoints"] + 1
    assert stalled["bounded"] in (True, False)


def test_sweep_and_output(tiny_run):
    doc, stdout = tiny_run
    ns = doc["config"]["sweep"]["ns"]
    for n in ns:
        assert {r["contender"] for r in _records(doc, "sweep") if r["params"]["n"] == n} == {
            "python", "floor"}
    assert "burst SSE" in stdout and "sweep" in stdout and "targets:" not in doc["table"][:10]
    assert doc["machine"]["cpus_usable"] >= 1


def test_storm_figures(tiny_run):
    """Every subscriber cut by the server, back after its retry: hint, resumed exactly."""
    doc, stdout = tiny_run
    (r,) = _records(doc, "storm")
    assert r["contender"] == "python"
    n, m = r["params"]["n"], r["m"]
    assert r["cut"] == n and r["reconnected"] == r["reconnections"] == n
    assert r["complete"] and r["exact"], r["notes"]
    assert r["gaps"] == 0 and r["disorder"] == 0 and r["errors"] == 0
    assert r["frames_min"] == r["frames_max"] == m and r["delivered"] == n * m
    # the server's default hint, 2000 ms jittered by +-50%, and waited for
    assert 1000 <= r["retry_ms_min"] <= r["retry_ms_max"] <= 3000
    assert r["retry_ms_min"] / 1000 <= r["back_p50_s"] <= r["back_last_s"]
    assert r["back_server_s"] is not None and r["subscribers_low"] < n
    assert r["server_stats"]["resumed"] == n and r["server_stats"]["gaps"] == 0
    assert "storm SSE" in stdout
    assert not any(t["target"].startswith("storm") for t in doc["targets"])  # no cython


def test_admission_figures(tiny_run):
    doc, stdout = tiny_run
    by = {r["contender"]: r for r in _records(doc, "admission")}
    assert set(by) == {"python", "bare-tornado"}
    for r in by.values():
        assert r["complete"], r["notes"]
        assert r["us_per_subscriber"] > 0 and r["head_p50_ms"] <= r["head_max_ms"]
    assert by["bare-tornado"]["x_bare"] == pytest.approx(1.0)
    assert by["python"]["x_bare"] > 0
    assert "admission SSE" in stdout


def test_soak_figures(tiny_run):
    """Churn past steady subscribers: they get everything, the churn's descriptors are
    given back, and the server logs nothing."""
    doc, stdout = tiny_run
    (r,) = _records(doc, "soak")
    assert r["contender"] == "python"
    assert r["complete"] and r["disorder"] == 0, r["notes"]
    assert r["delivered"] == r["expected"] == r["n"] * r["m"]
    churn = r["churn_report"]
    assert churn["opened"] == r["churn_opened"] > 0 and churn["error_count"] == 0
    assert set(churn["opened_by_kind"]) == {
        "sse-fin", "sse-rst", "sse-half", "ws-close", "ws-fin", "ws-rst", "ws-midframe"}
    assert churn["heads_by_kind"]["sse-half"] == 0  # never a complete request
    assert r["fds_after"] <= r["fds_before"] <= r["fds_peak"]
    assert r["rss_before"] > 0 and r["samples"]
    assert r["server_log_problems"] == []
    assert "soak: " in stdout


def test_storm_client_check():
    """The storm client's per-subscriber check: ids, retry hint, gaps, order."""
    from bench import stormclient

    def chunk(events):
        body = b"".join(events)
        return b"%x\r\n%s\r\n" % (len(body), body)

    def event(seq, gap=False):
        if gap:
            return b"id: a-%d\nevent: tornadose-gap\ndata: {}\n\n" % seq
        return b"id: a-%d\ndata: %08d @1@ xx\n\n" % (seq, seq)

    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    s = stormclient.Stream(0)
    data = head + chunk([b"retry: 1500\n\n"]) + chunk([event(0), event(1)]) + chunk([event(2)])
    s.feed(data[:70], 1.0)  # split anywhere
    s.feed(data[70:-9], 1.0)
    s.feed(data[-9:], 1.0)
    assert (s.frames, s.next_seq, s.last_id, s.retry_ms, s.disorder) == (3, 3, "a-2", 1500, 0)
    assert b"Last-Event-ID: a-2\r\n" in s.request(1)
    s.in_body, s.reconnecting, s.closed_at = False, True, 2.0
    s.feed(head + chunk([b"retry: 2500\n\n", event(3)]), 4.0)
    assert s.backs == [(2.0, 1500, 4.0)] and s.retry_ms == 2500 and s.disorder == 0
    s.feed(chunk([event(5)]), 4.1)  # 4 missing
    assert s.disorder == 1
    s.feed(chunk([event(6), event(6)]), 4.2)  # a duplicate
    assert s.disorder == 2
    s.feed(chunk([event(7, gap=True)]), 4.3)
    assert s.gaps == 1


def test_storm_and_admission_plan():
    from bench import run

    args = run.argparse.Namespace(preset="full", n=None, m=None, contenders=None,
                                  scenarios="storm,admission")
    cases, skipped = run.plan(args)
    assert {(c.scenario, c.contender) for c in cases} == {
        ("storm", "cython"), ("storm", "python"), ("admission", "cython"),
        ("admission", "python"), ("admission", "bare-tornado")}
    assert {c.params["n"] for c in cases if c.scenario == "storm"} == {5000}
    assert {c.params["rate"] for c in cases if c.scenario == "storm"} == {100}
    assert {c.params["n"] for c in cases if c.scenario == "admission"} == {2000}
    assert any("storm: no reference" in note for note in skipped)
    args.preset = "quick"
    cases, _ = run.plan(args)
    assert {c.params["n"] for c in cases if c.scenario == "storm"} == {1000}


def test_plots_are_optional(tiny_run, tmp_path):
    """The plots need matplotlib; without it the run still succeeds and says so."""
    doc, _ = tiny_run
    from bench import report

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report.plots(doc, str(tmp_path)) == []
        return
    paths = report.plots(doc, str(tmp_path))
    assert {Path(p).name for p in paths} == {"scenarios.png", "topics.png", "sweep.png",
                                             "latency.png"}
    assert all(Path(p).stat().st_size > 0 for p in paths)


def test_admission_ratio_is_the_median_of_paired_rounds():
    """x bare pairs each round's runs (back to back, same machine load); the ratio of
    the medians is kept beside it, and a run without pairs falls back to it."""
    from bench import report

    def rec(contender, runs):
        return {"scenario": "admission", "contender": contender, "transport": "sse",
                "params": {"n": 2000}, "n": 2000, "complete": True,
                "us_per_subscriber": sorted(runs)[len(runs) // 2],
                "repeats_us_per_subscriber": runs}

    doc = {"records": [rec("cython", [564.2, 525.3, 628.2]),
                       rec("bare-tornado", [492.2, 498.0, 610.7])]}
    report.add_ratios(doc)
    cy = doc["records"][0]
    assert cy["x_bare_rounds"] == pytest.approx([564.2 / 492.2, 525.3 / 498.0, 628.2 / 610.7])
    assert cy["x_bare"] == pytest.approx(525.3 / 498.0)
    assert cy["x_bare_of_medians"] == pytest.approx(564.2 / 498.0)
    (target,) = [t for t in report.targets(doc) if t["target"].startswith("admission")]
    assert target["met"] and "ratio of the medians 1.13" in target["detail"]
    doc["records"][1]["repeats_us_per_subscriber"] = [498.0]  # unpaired
    report.add_ratios(doc)
    assert doc["records"][0]["x_bare"] == pytest.approx(564.2 / 498.0)


def test_shed_against_admission_reports_its_ratio():
    """``python -m bench.shed`` at a tiny size: both bursts answered (503s at accept,
    200s admitted), the ratio and the target in the report. No timing assertion."""
    env = dict(os.environ)
    env.pop("TORNADOSE_NO_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.shed", "-n", "20", "--rounds", "1",
         "--contender", "python"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    (one,) = result["rounds"]
    assert one["refused"]["answered"] == one["admitted"]["answered"] == 20
    assert result["ratio"] > 0 and result["target"] == 0.3


def test_compression_scenario_reports_bytes_cpu_and_memory():
    """``python -m bench.compression`` at a tiny size: every run complete, plain and
    compressed side by side, fewer bytes per tick compressed (the C load client
    inflated and counted every event). No timing assertion."""
    env = dict(os.environ)
    env.pop("TORNADOSE_NO_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.compression", "--contender", "python", "-n", "20",
         "-m", "1000", "--memory-connections", "20"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = Path(done.stdout.strip().splitlines()[-1].removeprefix("results: "))
    doc = json.loads(out.read_text())
    runs = [r for r in doc["rows"] if r["kind"] != "memory"]
    assert len(runs) == 12 and all(r["complete"] and not r["disorder"] for r in runs), runs
    table = {(e["kind"], e["transport"], e.get("per_iter")): e for e in doc["summary"]["table"]}
    for transport in ("sse", "ws"):
        for per in (100, 10):
            assert table[("topics", transport, per)]["bytes_ratio"] < 0.6
        assert table[("memory", transport, None)]["kb_compressed"] > 0
