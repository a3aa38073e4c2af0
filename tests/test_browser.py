"""The demo in a real browser: headless Chromium opens the page, sees the ticker table
fill and keep moving, and sees it recover after the server is killed and restarted,
over Server-Sent Events and over WebSocket.

Needs Chromium (Debian's ``chromium`` package, or ``TORNADOSE_CHROMIUM=/path``) and
Playwright's Python package, used only to drive that browser (``playwright install`` is
never needed). Without them the tests skip, unless ``TORNADOSE_REQUIRE_BROWSER=1``: then
they fail, so CI cannot pass by skipping them.
``TORNADOSE_SCREENSHOT=docs/demo.png`` saves a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.testing import bind_unused_port

from .redis_server import redis_py, redis_server  # noqa: F401  (fixtures)

REQUIRED = os.environ.get("TORNADOSE_REQUIRE_BROWSER", "") not in ("", "0")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often have a tiny /dev/shm.
    "--disable-dev-shm-usage",
]
ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (TORNADOSE_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("TORNADOSE_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


class DemoServer:
    """``python -m tornadose.demo`` in a subprocess, restartable on the same port."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        # The log goes to a file: a pipe nobody reads could fill and block the server.
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tornadose.demo", "--port", str(self.port), *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        line = self.proc.stdout.readline()  # printed once it serves
        assert b"tornadose demo" in line, (line, self.logged())

    def logged(self) -> bytes:
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        """Kill it hard, as a crash would: no clean end of any stream."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self._reap()

    def _reap(self) -> None:
        self.proc.communicate(timeout=15)
        self.proc = None


def launched_chromium() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright's sync API (skipped, or failed
    under TORNADOSE_REQUIRE_BROWSER, when either is missing); closed afterwards."""
    executable = find_chromium()
    if executable is None:
        unavailable("no Chromium: apt-get install chromium (or set TORNADOSE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright's Python package is not installed: pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


@pytest.fixture
def demo() -> Iterator[DemoServer]:
    sock, port = bind_unused_port()
    sock.close()
    server = DemoServer(port, "--rate", "400")
    server.start()
    yield server
    server.stop()
    log = server.logged()
    assert b"Traceback" not in log and b"WARNING" not in log and b"ERROR" not in log, log.decode()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    # A fresh context is a fresh profile: no cache, no storage from another test.
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


# In-page checks, read from what a person sees: the status pill and the table's cells.
FILLED = """(min) => document.querySelectorAll('#quotes tbody tr').length >= min &&
    [...document.querySelectorAll('#quotes tbody td.price')]
        .filter((td) => /\\d/.test(td.textContent)).length >= min"""
PRICES = (
    "() => [...document.querySelectorAll('#quotes tbody td.price')].map((td) => td.textContent)"
)
MOVED = """(before) => [...document.querySelectorAll('#quotes tbody td.price')]
    .filter((td, i) => /\\d/.test(td.textContent) && td.textContent !== before[i]).length >= 3"""
CONNECTED = """(via) => document.getElementById('status').dataset.state === 'connected' &&
    document.getElementById('status').textContent.includes(via)"""
NOT_CONNECTED = "() => document.getElementById('status').dataset.state !== 'connected'"


def see_it_live(page: object, via: str) -> None:
    """The table is full and its prices keep moving, while the page says connected."""
    page.wait_for_function(CONNECTED, arg=via)  # type: ignore[attr-defined]
    page.wait_for_function(FILLED, arg=20)  # type: ignore[attr-defined]
    before = page.evaluate(PRICES)  # type: ignore[attr-defined]
    page.wait_for_function(MOVED, arg=before)  # type: ignore[attr-defined]


def see_it_recover(page: object, demo: DemoServer, via: str) -> None:
    """Killed server: the page notices; restarted server: the page is live again."""
    received = page.evaluate("window.tornadoseDemo.received")  # type: ignore[attr-defined]
    demo.kill()
    page.wait_for_function(NOT_CONNECTED)  # type: ignore[attr-defined]
    frozen = page.evaluate(PRICES)  # type: ignore[attr-defined]
    time.sleep(0.5)  # the page retries against a closed port meanwhile
    demo.start()
    page.wait_for_function(CONNECTED, arg=via)  # type: ignore[attr-defined]
    page.wait_for_function(MOVED, arg=frozen)  # type: ignore[attr-defined]
    page.wait_for_function("(n) => window.tornadoseDemo.received > n + 20", arg=received)  # type: ignore[attr-defined]
    see_it_live(page, via)


def test_page_fills_updates_and_recovers_over_sse(page, demo):
    page.goto(f"http://127.0.0.1:{demo.port}/")
    see_it_live(page, "SSE")
    assert page.evaluate("window.tornadoseDemo.rows.size") == 50
    shot = os.environ.get("TORNADOSE_SCREENSHOT")
    if shot:
        time.sleep(2)  # let the page's rates settle
        page.screenshot(path=str(ROOT / shot))
    see_it_recover(page, demo, "SSE")


def test_switch_to_websocket_then_recover(page, demo):
    page.goto(f"http://127.0.0.1:{demo.port}/?n=30")
    see_it_live(page, "SSE")
    page.click("button[data-transport=ws]")
    see_it_live(page, "WebSocket")
    assert "transport=ws" in page.url  # a reload keeps the choice
    see_it_recover(page, demo, "WebSocket")
    assert page.evaluate("window.tornadoseDemo.rows.size") == 30


def test_page_shows_the_symbols_asked_for_and_server_stats(page, demo):
    page.goto(f"http://127.0.0.1:{demo.port}/?symbols=MSFT,AAPL,IBM&transport=ws")
    page.wait_for_function(CONNECTED, arg="WebSocket")
    page.wait_for_function(FILLED, arg=3)
    symbols = page.eval_on_selector_all(
        "#quotes tbody tr", "(rows) => rows.map((r) => r.dataset.symbol)"
    )
    assert symbols == ["MSFT", "AAPL", "IBM"]
    page.wait_for_function(
        "() => /^(cython|python)/.test(document.getElementById('server-backend').textContent)"
    )
    page.wait_for_function(
        "() => Number(document.getElementById('server-subscribers').textContent) >= 1"
    )


def test_page_over_redis_with_two_server_processes(page, redis_server):  # noqa: F811
    """The scale-out mode: one process generates the feed into Redis, two serve it on
    one port; the page cannot tell the difference."""
    sock, port = bind_unused_port()
    sock.close()
    server = DemoServer(
        port,
        "--rate",
        "400",
        "--processes",
        "2",
        "--redis",
        f"redis://127.0.0.1:{redis_server.port}/0",
    )
    server.start()
    try:
        page.goto(f"http://127.0.0.1:{port}/?transport=ws")
        see_it_live(page, "WebSocket")
        page.wait_for_function(
            "() => /cython|python/.test(document.getElementById('server-backend').textContent)"
        )
        assert "×2" in page.inner_text("#server-backend")
        # Whichever process answers, it got every tick from the first (the opening price
        # of every symbol: the publisher waited for both servers to listen).
        for _ in range(10):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
                stats = json.load(response)
            assert (stats["processes"], stats["redis"]) == (2, True)
            assert stats["ticks"]["messages"] >= 500 and stats["latest"]["messages"] >= 500
    finally:
        server.stop()
    log = server.logged()
    assert b"Traceback" not in log and b"ERROR" not in log, log.decode()
