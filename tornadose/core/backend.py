"""Pick the implementation of the hot paths (frames, ring, fanout), once, at import time.

The compiled modules (built from ``_speedups/*.pyx``) are used when all of them import;
otherwise every hot path uses its pure-Python twin. Mixing is never done: one backend
serves a process, so both put byte-identical data on the wire. Setting the environment
variable ``TORNADOSE_NO_EXTENSIONS`` to a non-empty value other than ``0`` forces the
pure-Python backend.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("tornadose")

NO_EXTENSIONS = os.environ.get("TORNADOSE_NO_EXTENSIONS", "") not in ("", "0")


def _pick() -> str:
    if NO_EXTENSIONS:
        return "python"
    try:
        from . import _fanout_c, _frames_c, _ring_c  # noqa: F401
    except ImportError as exc:
        # A normal situation on machines without a compiler; the reason matters
        # only to someone who expected the compiled backend.
        log.debug("tornadose: compiled speedups unavailable (%s); using pure Python", exc)
        return "python"
    return "cython"


BACKEND: str = _pick()
