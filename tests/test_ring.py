"""The ring, without sockets or an event loop."""

from __future__ import annotations

import pytest

SSE, WS = 0, 1


def fill(ring, count: int, size: int = 1) -> None:
    for i in range(count):
        ring.append(b"s%d" % i + b"." * (size - 1), b"w%d" % i)


def test_sequence_numbers_and_join(impl):
    ring = impl.ring.Ring(8, 1 << 20)
    assert [ring.append(b"a", b"A"), ring.append(b"b", b"B")] == [0, 1]
    assert (ring.head, ring.tail, len(ring)) == (2, 0, 2)
    assert ring.join(SSE, 0) == b"ab"
    assert ring.join(WS, 1) == b"B"
    assert ring.join(SSE, 2) == b""
    assert ring.latest(WS) == b"B"


def test_count_bound_evicts_oldest_and_join_wraps(impl):
    ring = impl.ring.Ring(4, 1 << 20)
    fill(ring, 10)
    assert (ring.tail, ring.head, len(ring)) == (6, 10, 4)
    assert ring.frames(SSE, 6) == [b"s6", b"s7", b"s8", b"s9"]
    assert ring.join(WS, 8) == b"w8w9"


def test_byte_bound_evicts_oldest(impl):
    ring = impl.ring.Ring(100, 50)
    fill(ring, 10, size=11)  # each entry: 12 + 2 = 14 bytes, so 3 fit in 50
    assert ring.nbytes == 42
    assert (ring.tail, len(ring)) == (7, 3)
    assert ring.frames(SSE, ring.tail)[-1].startswith(b"s9")


def test_cursor_outside_the_ring_is_an_index_error(impl):
    ring = impl.ring.Ring(2, 1 << 20)
    fill(ring, 5)
    with pytest.raises(IndexError):
        ring.join(SSE, 2)
    with pytest.raises(IndexError):
        ring.join(SSE, 6)


def test_entry_larger_than_max_bytes_is_refused_without_change(impl):
    ring = impl.ring.Ring(4, 10)
    fill(ring, 2)
    with pytest.raises(ValueError, match="max_bytes"):
        ring.append(b"x" * 8, b"y" * 8)
    assert (ring.tail, ring.head) == (0, 2)


def test_clear_keeps_numbering(impl):
    ring = impl.ring.Ring(4, 100)
    fill(ring, 3)
    ring.clear()
    assert (len(ring), ring.nbytes, ring.latest(SSE)) == (0, 0, None)
    assert ring.append(b"x", b"y") == 3


@pytest.mark.parametrize(("capacity", "max_bytes"), [(0, 10), (10, 0)])
def test_bounds_must_be_positive(impl, capacity, max_bytes):
    with pytest.raises(ValueError):
        impl.ring.Ring(capacity, max_bytes)


def test_kind_constants_match(impl):
    assert (impl.ring.SSE, impl.ring.WS) == (SSE, WS)
