"""Ending an app with streams open is normal: nothing is logged, no traceback printed.

A real process (tests/servers/shutdown_app.py) with 20 subscribers on each of the four
handlers (SSE and WebSocket, plain and topics), logging as a typical app does (WARNING
and above to stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).parent / "servers" / "shutdown_app.py"


@pytest.mark.parametrize("mode", ["return", "close"])
def test_ending_with_open_streams_leaves_stderr_empty(mode):
    done = subprocess.run(
        [sys.executable, str(APP), mode], capture_output=True, timeout=60, check=False
    )
    assert done.stdout == b"ready\n", done
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 0
