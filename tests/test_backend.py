"""Backend selection, and the two backends' frames agreeing byte for byte."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tornadose
from tornadose.core import fanout, frames, ring

from .sseclient import SSEParser
from .wsframes import Opcode, parse_frames

FORCED_PYTHON = os.environ.get("TORNADOSE_NO_EXTENSIONS", "") not in ("", "0")


@pytest.mark.skipif(FORCED_PYTHON, reason="TORNADOSE_NO_EXTENSIONS forces pure Python")
def test_compiled_backend_loaded():
    """A normal install must run compiled code: fail loudly if it silently did not."""
    assert tornadose.backend == "cython"
    assert frames.build_frames.__module__ == "tornadose.core._frames_c"
    assert ring.Ring.__module__ == "tornadose.core._ring_c"
    assert fanout.FanoutCore.__module__ == "tornadose.core._fanout_c"


def test_environment_variable_forces_python():
    env = {**os.environ, "TORNADOSE_NO_EXTENSIONS": "1"}
    code = "import tornadose, tornadose.core.fanout as f; print(tornadose.backend, f.FanoutCore.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["python", "tornadose.core._fanout_py"], out.stderr


def test_pickers_use_the_active_backend():
    suffix = "c" if tornadose.backend == "cython" else "py"
    assert ring.Ring is importlib.import_module(f"tornadose.core._ring_{suffix}").Ring
    assert fanout.Sink is importlib.import_module(f"tornadose.core._fanout_{suffix}").Sink


def _both():
    try:
        compiled = importlib.import_module("tornadose.core._frames_c")
    except ImportError:
        pytest.skip("compiled backend not built")
    return compiled, importlib.import_module("tornadose.core._frames_py")


line_ends = st.sampled_from(["\n", "\r", "\r\n", "\r\r\n", "\n\r"])
texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.text(max_size=20), line_ends), max_size=30).map("".join),
    st.just(""),
    st.builds(lambda c, n: c * n, st.characters(exclude_categories=("Cs",)), st.integers(60_000, 72_000)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=texts, event_id=st.integers(0, 2**62), event=st.sampled_from([None, b"tick", b"AAPL"]))
def test_text_frames_identical_and_parse_back(message, event_id, event):
    compiled, python = _both()
    eid = b"e-%d" % event_id
    c = compiled.build_frames(message, eid, event)
    p = python.build_frames(message, eid, event)
    assert c == p
    sse, ws, size = c
    assert size == len(message.encode())
    (parsed,) = SSEParser().feed(sse)
    assert parsed.data == _normalized(message)
    assert parsed.id == eid.decode()
    assert parsed.type == (event.decode() if event else "message")
    (frame,) = parse_frames(ws)
    assert frame.opcode is Opcode.TEXT and frame.fin
    expected = {"id": eid.decode(), "data": message}
    if event:
        expected["event"] = event.decode()
    assert json.loads(frame.data) == expected


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_json_frames_identical(value):
    compiled, python = _both()
    assert compiled.build_frames(value, b"1") == python.build_frames(value, b"1")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_bytes_messages_agree_on_result_or_error(data):
    compiled, python = _both()
    results = []
    for impl in (compiled, python):
        try:
            results.append(impl.encode_message(data))
        except ValueError as exc:
            results.append(("ValueError", str(exc)))
    assert results[0] == results[1]


def test_the_pure_python_backend_says_why():
    """When Python serves, ``REASON`` says why: forced here; the demo's banner and
    ``/stats`` show it."""
    code = "from tornadose.core.backend import BACKEND, REASON; print(BACKEND, '|', REASON)"
    env = dict(os.environ, TORNADOSE_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "python | TORNADOSE_NO_EXTENSIONS is set", out.stderr


@pytest.mark.skipif(FORCED_PYTHON, reason="TORNADOSE_NO_EXTENSIONS forces pure Python")
def test_the_demo_command_runs_the_installed_package_on_the_compiled_backend(tmp_path):
    """The README's first command: ``tornadose-demo``, a console script, imports the
    installed package wherever it is started (here from the source tree's parent)."""
    script = Path(sys.executable).with_name("tornadose-demo")
    assert script.exists(), "the tornadose-demo console script is not installed"
    code = "from tornadose.core.backend import BACKEND, REASON; print(BACKEND, REASON)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.split()[:2] == ["cython", "None"], out.stderr
    help_out = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert help_out.returncode == 0 and "--symbols" in help_out.stdout, help_out.stderr
