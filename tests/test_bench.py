"""The benchmark harness (``python -m bench``) on a tiny scenario, so that it cannot rot.

It runs every scenario with a handful of subscribers and messages, on the contenders
that need no network install (this package's pure-Python backend and the raw floor),
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
        [sys.executable, "-m", "bench", "--tiny", "--contenders", "python,floor,floor-msg",
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
        "burst", "per-message", "latency", "idle", "stalled", "sweep"}
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
    assert {Path(p).name for p in paths} == {"scenarios.png", "sweep.png", "latency.png"}
    assert all(Path(p).stat().st_size > 0 for p in paths)
