"""Waiting for a subscriber's socket to drain, and giving up on one that never does.

Shared by both fan-outs (one store's, one topic log's) on both backends, so that the
rule is written once: a subscriber whose stream has bytes queued is skipped until the
stream has written them all (then the fan-out catches it up), and one whose stream
stays full for ``write_timeout`` seconds (a frozen or half-open client) is dropped.
"""

from __future__ import annotations

from typing import Any

from tornado.iostream import StreamClosedError

__all__ = ["drained", "timed_out", "wait_for_drain"]


def wait_for_drain(fanout: Any, sink: Any) -> None:
    """Call ``fanout._drained(sink)`` once everything queued on the sink's stream is
    written, and ``fanout._timed_out(sink)`` after ``fanout.write_timeout`` seconds (if
    positive) unless the stream drained first. Does nothing while already waiting."""
    if sink.waiting:
        return
    sink.waiting = True
    stream = sink.stream
    try:
        # An empty write resolves once everything already queued has been written.
        done = stream.write(b"")
    except StreamClosedError:
        sink.waiting = False
        return
    done.add_done_callback(lambda _: fanout._drained(sink))
    if fanout.write_timeout > 0 and sink.timer is None:
        sink.timer = stream.io_loop.call_later(fanout.write_timeout, fanout._timed_out, sink)


def drained(sink: Any) -> bool:
    """End the wait of ``sink``; ``True`` when its stream is still open (the fan-out
    then brings it up to date)."""
    sink.waiting = False
    if sink.timer is not None:
        sink.stream.io_loop.remove_timeout(sink.timer)
        sink.timer = None
    return not sink.stream.closed()


def timed_out(fanout: Any, sink: Any) -> bool:
    """Whether ``sink``, whose write timeout fired, must be dropped: it still waits and
    still belongs to ``fanout``. Counts it in ``fanout.timed_out`` when so."""
    sink.timer = None
    if sink.waiting and sink in fanout:
        fanout.timed_out += 1
        return True
    return False
