"""One timer for all the SSE streams of an event loop that beat at the same interval.

A timer per stream costs every new subscriber a timer handle on the loop's heap (and a
cancelled one left behind when it goes), which is a measurable part of what admitting a
subscriber costs and of what an idle one occupies. Instead, streams join a wheel of
:data:`SLOTS` slots; one timer sweeps the next slot every ``interval / SLOTS`` seconds, so
each slot, and each stream in it, is visited once per ``interval``, and one sweep touches
only about 1/SLOTS of the streams (no pause proportional to all of them).

Guarantee (the same as one timer per stream): a stream silent for ``2 x interval`` has
had a beat. A stream is asked to beat only when it wrote nothing since its previous
visit, and its first visit comes at least one interval after it joined.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

logger = logging.getLogger("tornadose.handlers")

SLOTS = 8


class Beating(Protocol):
    def _heartbeat_visit(self) -> None:
        """Write a heartbeat if nothing was written since the previous visit."""


class HeartbeatWheel:
    """The streams of one loop that beat every ``interval`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._interval = interval
        self._slots: list[dict[Beating, None]] = [{} for _ in range(SLOTS)]
        self._members = 0
        self._next_join = 0  # round robin, so that slots stay even
        self._next_sweep = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._members

    def add(self, stream: Beating) -> int:
        """Visit ``stream`` once per interval from now on; returns its slot, which
        :meth:`discard` takes."""
        slot = self._next_join
        self._next_join = (slot + 1) % SLOTS
        self._slots[slot][stream] = None
        self._members += 1
        if self._timer is None:
            self._schedule()
        return slot

    def discard(self, stream: Beating, slot: int) -> None:
        if self._slots[slot].pop(stream, 0) is None:
            self._members -= 1

    def _schedule(self) -> None:
        self._timer = self._loop.call_later(self._interval / SLOTS, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        slot = self._slots[self._next_sweep]
        self._next_sweep = (self._next_sweep + 1) % SLOTS
        for stream in tuple(slot):
            try:
                stream._heartbeat_visit()
            except Exception:  # one broken stream must not silence the others
                logger.error("heartbeat of %r failed", stream, exc_info=True)
        if self._members:
            self._schedule()


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, HeartbeatWheel]] = (
    weakref.WeakKeyDictionary()
)


# The last loop asked for and its wheels: every new stream asks, nearly always from the
# same loop, and a WeakKeyDictionary lookup makes a weak reference each time.
_last: list = [None, None]


def wheel(interval: float) -> HeartbeatWheel:
    """The running loop's wheel for ``interval`` seconds (created on first use)."""
    loop = asyncio.get_running_loop()
    if _last[0] is loop:
        by_interval = _last[1]
    else:
        by_interval = _wheels.get(loop)
        if by_interval is None:
            by_interval = _wheels[loop] = {}
        _last[0], _last[1] = loop, by_interval
    found = by_interval.get(interval)
    if found is None:
        found = by_interval[interval] = HeartbeatWheel(loop, interval)
    return found
