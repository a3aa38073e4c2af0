"""What stores and registries keep for monitoring, without any monitoring library.

Every store of this package and every :class:`~tornadose.topics.TopicRegistry` has a
``name`` (given, or a stable default) and is listed here while it lives, so that
:mod:`tornadose.metrics` can read their counters when it is scraped: nothing is added
per delivery. The one figure that counters cannot give, how long a fan-out pass takes,
is recorded only once timing is switched on (:func:`enable_timing`, which the metrics
collector calls): then each pass costs two clock reads and a bucket increment.
"""

from __future__ import annotations

import bisect
import re
import time
import weakref
from typing import Any, Callable

#: Upper bounds (seconds) of the fan-out pass histogram's buckets: from a pass over a
#: handful of subscribers to one that holds the loop for a quarter of a second.
PASS_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_live: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_counts: dict[str, int] = {}
_timing = False
clock = time.perf_counter


class PassTimes:
    """A histogram of fan-out pass durations, in :data:`PASS_BUCKETS`."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PASS_BUCKETS) + 1)  # the last one: over 1 s
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(PASS_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds


def run_pass(times: PassTimes | None, flush: Callable[[], None]) -> None:
    """Run one fan-out pass, timed into ``times`` when timing is on."""
    if times is None:
        flush()
        return
    start = clock()
    flush()
    times.observe(clock() - start)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid store name: 1 to 100 letters, digits, ``_``,
    ``.``, ``:`` or ``-``. Raises ``ValueError`` otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"name must be 1 to 100 letters, digits, '_', '.', ':' or '-', got {name!r}"
        )
    return name


def track(instrumented: Any, name: str | None, kind: str) -> str:
    """List ``instrumented`` (a store or registry) under ``name``, or under ``kind``
    numbered in creation order (``queuestore``, ``queuestore_2``, ...) when ``name`` is
    None; return the name. Raises ``ValueError`` for a bad name.

    Names should be unique. A new one given a name still in use takes it over: its
    series continue under that label (a counter reset, as after a restart), and the
    older one, if it still lives, is no longer exported. Raising instead would make
    re-creating a store depend on when the garbage collector freed the old one."""
    if name is None:
        while True:
            count = _counts[kind] = _counts.get(kind, 0) + 1
            name = kind if count == 1 else f"{kind}_{count}"
            if name not in _live:
                break
    else:
        check_name(name)
    _live[name] = instrumented
    if _timing:
        instrumented._pass_times = PassTimes()
    return name


def live() -> list[tuple[str, Any]]:
    """``(name, store or registry)`` for every one alive, sorted by name."""
    return sorted(_live.items(), key=lambda item: item[0])


def enable_timing() -> None:
    """Record fan-out pass durations in every store and registry, now and to come."""
    global _timing
    _timing = True
    for _, instrumented in live():
        if instrumented._pass_times is None:
            instrumented._pass_times = PassTimes()
