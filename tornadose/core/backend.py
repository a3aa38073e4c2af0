"""Pick the hot paths' implementation (frames, ring, fanout, deflate) once, at import time.

The compiled modules (built from ``_speedups/*.pyx``) are used when all of them import;
otherwise every hot path uses its pure-Python twin. Mixing is never done: one backend
serves a process, so both put byte-identical data on the wire. Setting the environment
variable ``TORNADOSE_NO_EXTENSIONS`` to a non-empty value other than ``0`` forces the
pure-Python backend. :data:`REASON` says why Python serves, when it does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("tornadose")

NO_EXTENSIONS = os.environ.get("TORNADOSE_NO_EXTENSIONS", "") not in ("", "0")


def _why(exc: ImportError) -> str:
    here = Path(__file__).resolve().parent
    if (here.parent.parent / "_speedups").is_dir() and not any(here.glob("_*_c.*")):
        # The usual trap: a source checkout's tornadose/ shadows the installed package
        # (``python -m`` puts the current directory first on sys.path).
        return (
            f"the package is imported from the source tree at {here.parent.parent}, which "
            "has no compiled modules: build them there with `pip install -e .`, or run "
            "the installed package from elsewhere (e.g. the `tornadose-demo` command)"
        )
    return f"the compiled modules did not import ({exc})"


def _pick() -> tuple[str, str | None]:
    if NO_EXTENSIONS:
        return "python", "TORNADOSE_NO_EXTENSIONS is set"
    try:
        from . import _deflate_c, _fanout_c, _frames_c, _ring_c  # noqa: F401
    except ImportError as exc:
        # A normal situation on machines without a compiler; the reason matters
        # only to someone who expected the compiled backend.
        log.debug("tornadose: compiled speedups unavailable (%s); using pure Python", exc)
        return "python", _why(exc)
    return "cython", None


BACKEND: str
#: Why the pure-Python backend serves (``None`` when the compiled one does).
REASON: str | None
BACKEND, REASON = _pick()
