"""Prometheus metrics (tornadose.metrics): the exposition, what it counts, a real scrape.

Real server and clients; the exposition is read with prometheus_client's own parser,
checked by ``promtool`` and scraped by a real Prometheus server (Debian's
``prometheus`` package, which .ci/run installs; elsewhere those two tests skip unless
TORNADOSE_REQUIRE_PROMETHEUS=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tornadose import backend  # noqa: E402
from tornadose.handlers import EventSource, TopicEventSource, WebSocketSubscriber  # noqa: E402
from tornadose.metrics import DISCONNECT_REASONS, MetricsHandler, install  # noqa: E402
from tornadose.stores import QueueStore  # noqa: E402
from tornadose.topics import TopicRegistry  # noqa: E402

from .helpers import TornadoWS, server_stream, wait_until  # noqa: E402
from .sseclient import RawSSEClient  # noqa: E402
from .test_browser import DemoServer  # noqa: E402

REQUIRED = os.environ.get("TORNADOSE_REQUIRE_PROMETHEUS") == "1"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if REQUIRED:
            pytest.fail(f"{name} is required (TORNADOSE_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip(f"{name} not installed (Debian: apt-get install prometheus)")
    return path


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


async def _scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics", headers=headers)
    return response.headers["Content-Type"], response.body.decode()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of its own per test: what the tests see is only tornadose's."""
    return CollectorRegistry()


def _routes(store: Any, topics: TopicRegistry, registry: CollectorRegistry) -> list[Any]:
    return [
        (r"/sse", EventSource, {"store": store}),
        (r"/ws", WebSocketSubscriber, {"store": store}),
        (r"/feed/sse", TopicEventSource, {"registry": topics}),
        (r"/metrics", MetricsHandler, {"registry": registry}),
    ]


async def test_exposition_agrees_with_stats(serve, registry):
    """Every series of every store and registry, read at scrape time, equals its
    stats(); the fan-out histogram counts passes; info names the backend."""
    install(registry)  # at startup: passes are timed from now on
    store = QueueStore(name="m_ticks")
    topics = TopicRegistry(QueueStore, name="m_feed")
    port = await serve(_routes(store, topics, registry))
    sse = [await RawSSEClient.connect("127.0.0.1", port, "/sse") for _ in range(2)]
    ws = await TornadoWS.connect(port, "/ws")
    feed = await RawSSEClient.connect("127.0.0.1", port, "/feed/sse?topics=A,B")
    await wait_until(lambda: len(store.subscribers) == 3 and topics.connections == 1)
    for i in range(5):
        store.submit({"i": i})
        topics.submit("A" if i % 2 else "B", i)
        await asyncio.sleep(0.01)  # one pass each
    for client in sse:
        await client.read_events(5)
    await ws.read(5)
    await feed.read_events(5)

    content_type, text = await _scrape(port)
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = _samples(text)
    for name, stats, subscribers in (
        ("m_ticks", store.stats(), store.stats()["subscribers"]),
        ("m_feed", topics.stats(), topics.stats()["connections"]),
    ):
        assert _value(samples, "tornadose_subscribers", name=name) == subscribers
        assert _value(samples, "tornadose_messages_total", name=name) == stats["messages"] == 5
        assert _value(samples, "tornadose_deliveries_total", name=name) == stats["delivered"]
        assert _value(samples, "tornadose_writes_total", name=name) == stats["writes"]
        assert _value(samples, "tornadose_retained_messages", name=name) == stats["retained"]
        assert _value(samples, "tornadose_retained_bytes", name=name) == stats["retained_bytes"]
        assert _value(samples, "tornadose_max_lag_messages", name=name) == stats["max_lag"]
        assert _value(samples, "tornadose_rejected_total", name=name) == 0
        for reason in DISCONNECT_REASONS:
            assert _value(samples, "tornadose_disconnects_total", name=name, reason=reason) == 0
        for outcome in ("exact", "gap"):
            assert _value(samples, "tornadose_resumes_total", name=name, outcome=outcome) == 0
        passes = _value(samples, "tornadose_fanout_seconds_count", name=name)
        assert passes >= 5
        assert _value(samples, "tornadose_fanout_seconds_bucket", name=name, le="+Inf") == passes
        assert 0 < _value(samples, "tornadose_fanout_seconds_sum", name=name) < 5
    assert _value(samples, "tornadose_deliveries_total", name="m_ticks") == 15
    assert _value(samples, "tornadose_info", backend=backend, version="1.0.0.dev0") == 1

    # OpenMetrics when the scraper asks for it, as prometheus_client's exporters do.
    content_type, text = await _scrape(port, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and 'tornadose_messages_total{name="m_ticks"} 5.0' in text
    for client in [*sse, feed]:
        client.close_fin()
    await ws.close()


async def test_promtool_accepts_the_exposition(serve, registry):
    promtool = _tool("promtool")
    store = QueueStore(name="m_lint")
    port = await serve(_routes(store, TopicRegistry(QueueStore, name="m_lint_feed"), registry))
    client = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 1)
    store.submit("x")
    await client.read_events(1)
    _, text = await _scrape(port)
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    client.close_fin()


async def test_disconnect_reasons_are_counted(serve, registry):
    """A client that leaves, one that lapped, one revoked, one closed: each under its
    reason, and a resume under its outcome."""
    store = QueueStore(name="m_reasons", capacity=128)
    port = await serve(_routes(store, TopicRegistry(QueueStore, name="m_reasons_feed"), registry))
    leaving = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    stalled = await RawSSEClient.connect("127.0.0.1", port, "/sse", rcvbuf=1024, limit=256)
    reader = await RawSSEClient.connect("127.0.0.1", port, "/sse")
    await wait_until(lambda: len(store.subscribers) == 3)
    leaving.close_fin()
    await wait_until(lambda: len(store.subscribers) == 2)
    reader_port = reader.writer.get_extra_info("sockname")[1]
    reader_handler = next(
        h for h in store.subscribers if server_stream(h).socket.getpeername()[1] == reader_port
    )

    def reader_behind() -> int:
        return next((e["messages"] for e in store.lag() if e["subscriber"] is reader_handler), 0)

    reading = asyncio.ensure_future(reader.read_events(3000, timeout=60))
    for i in range(3000):  # 12 MB: far more than the stalled socket and 128 messages hold
        store.submit("x" * 4000 + str(i))
        if i % 10 == 0:
            await asyncio.sleep(0)
        if i % 50 == 49:  # the reader must not lap: wait for it on a loaded machine
            await wait_until(lambda: reader_behind() < 64, what="the reader keeping up")
    await wait_until(lambda: store.stats()["lapped"] == 1, timeout=3,
                     what=f"the stalled client lapped: {store.stats()}")
    await wait_until(lambda: len(store.subscribers) == 1)
    last = (await reading)[-1].id
    resumed = await RawSSEClient.connect("127.0.0.1", port, "/sse", headers={"Last-Event-ID": last})
    revoked = await RawSSEClient.connect("127.0.0.1", port, "/sse?user=alice")
    await wait_until(lambda: len(store.subscribers) == 3)
    assert store.disconnect(lambda h: h.get_query_argument("user", None) == "alice") == 1
    await revoked.read_until_closed()  # the server ended that stream
    store.close()  # ends the last two
    await reader.read_until_closed()
    await resumed.read_until_closed()
    _, text = await _scrape(port)
    samples = _samples(text)
    counts = {reason: _value(samples, "tornadose_disconnects_total", name="m_reasons",
                             reason=reason) for reason in DISCONNECT_REASONS}
    assert counts == {"client": 1, "lapped": 1, "timed_out": 0, "revoked": 1, "closed": 2}
    assert _value(samples, "tornadose_resumes_total", name="m_reasons", outcome="exact") == 1
    assert _value(samples, "tornadose_subscribers", name="m_reasons") == 0
    stalled.close_fin()


async def test_ten_thousand_topics_are_one_set_of_series(registry):
    """Label cardinality stays bounded: no series per topic."""
    topics = TopicRegistry(QueueStore, name="m_wide", max_topics=10_000)
    for i in range(10_000):
        topics.submit(f"T{i}", i)
    install(registry)
    lines = [line for line in generate_latest(registry).decode().splitlines()
             if 'name="m_wide"' in line]
    assert 0 < len(lines) < 60, len(lines)
    assert 'tornadose_messages_total{name="m_wide"} 10000.0' in lines


def test_importing_tornadose_does_not_need_prometheus_client():
    code = ("import sys, tornadose, tornadose.stores, tornadose.handlers, tornadose.topics; "
            "assert 'prometheus_client' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_store_names_are_checked_and_default_stably():
    with pytest.raises(ValueError, match="name must be"):
        QueueStore(name="has space")
    with pytest.raises(ValueError, match="name must be"):
        TopicRegistry(QueueStore, name="")
    first, second = QueueStore(), QueueStore()
    assert first.name.startswith("queuestore") and second.name.startswith("queuestore_")
    assert first.name != second.name


async def test_prometheus_scrapes_the_demo():
    """A real Prometheus server scrapes the demo every second: PromQL sees the three
    SSE subscribers of /ticks/sse, messages and deliveries rising, fan-out passes."""
    prometheus = _tool("prometheus")
    sock, port = bind_unused_port()
    sock.close()
    sock, prom_port = bind_unused_port()
    sock.close()
    demo = DemoServer(port, "--interval", "0.05")
    demo.start()
    workdir = Path(tempfile.mkdtemp(prefix="tornadose-prometheus-"))
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tornadose\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    http = AsyncHTTPClient()

    async def query(promql: str) -> float | None:
        try:
            response = await http.fetch(
                f"http://127.0.0.1:{prom_port}/api/v1/query?query={quote(promql)}")
        except Exception:
            return None  # not up yet
        result = json.loads(response.body)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def eventually(promql: str, check: Any, timeout: float = 40.0) -> float:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await query(promql)
            if value is not None and check(value):
                return value
            await asyncio.sleep(0.5)
        raise AssertionError(f"{promql}: {value} after {timeout} s")

    try:
        clients = [await RawSSEClient.connect("127.0.0.1", port, "/ticks/sse") for _ in range(3)]
        for client in clients:
            await client.read_events(1)
        await eventually('tornadose_subscribers{name="ticks"}', lambda v: v >= 3)
        first = await eventually('tornadose_messages_total{name="ticks"}', lambda v: v > 0)
        delivered = await eventually('tornadose_deliveries_total{name="ticks"}', lambda v: v > 0)
        await eventually('tornadose_messages_total{name="ticks"}', lambda v: v > first)
        await eventually('tornadose_deliveries_total{name="ticks"}', lambda v: v > delivered)
        await eventually('tornadose_fanout_seconds_count{name="ticks"}', lambda v: v > 0)
        await eventually('rate(tornadose_deliveries_total{name="ticks"}[5s])', lambda v: v > 0)
        for client in clients:
            client.close_fin()
    finally:
        http.close()
        server.terminate()
        demo.stop()
        server.communicate(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    demo_err = demo.logged()
    assert b"Traceback" not in demo_err and b"WARNING" not in demo_err, demo_err.decode()
