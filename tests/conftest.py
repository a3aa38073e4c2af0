"""Shared fixtures: a real Tornado server on loopback, and a watch on the logs."""

from __future__ import annotations

import importlib
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

# Disconnect storms and many subscribers need file descriptors.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_log_errors: the test provokes WARNING/ERROR log records on purpose"
    )


@pytest.fixture(autouse=True)
def no_warnings_logged(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    """Fail any test during which something logged at WARNING or above.

    Clients disconnecting, lapping and bad input are normal events: they must not
    produce log noise.
    """
    caplog.set_level(logging.WARNING)
    yield
    if request.node.get_closest_marker("allow_log_errors"):
        return
    bad = [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)
        if r.levelno >= logging.WARNING
    ]
    assert not bad, "unexpected log records:\n" + "\n".join(bad)


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``port = await serve(handlers, port=0, **settings)`` starts an Application on
    127.0.0.1 (on ``port`` when given: a restarted server takes the same port)."""
    servers: list[HTTPServer] = []

    async def start(handlers: list[Any], port: int = 0, **settings: Any) -> int:
        # A deep backlog: storms of thousands of connects must not wait for SYN retries.
        sockets = bind_sockets(port, "127.0.0.1", backlog=4096)
        server = HTTPServer(Application(handlers, **settings))
        server.add_sockets(sockets)
        servers.append(server)
        return sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.stop()
        await server.close_all_connections()


@pytest.fixture(scope="session", params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """Both implementations of the hot paths, side by side: ``impl.frames``,
    ``impl.ring`` and ``impl.fanout`` (skipped for ``c`` where it was not built; the
    suite has a test that fails when a normal install lacks it)."""
    suffix = request.param
    try:
        modules = {
            name: importlib.import_module(f"tornadose.core._{name}_{suffix}")
            for name in ("frames", "ring", "fanout")
        }
    except ImportError as exc:
        pytest.skip(f"compiled backend not built: {exc}")
    return SimpleNamespace(name=suffix, **modules)
