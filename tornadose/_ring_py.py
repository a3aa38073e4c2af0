"""The ring, pure-Python backend: a store's bounded history of pre-built frames.

Every entry holds the SSE event and the WebSocket frame of one message and gets the next
sequence number. Entries ``tail .. head-1`` are retained; the oldest are evicted when a new
entry would exceed ``capacity`` entries or ``max_bytes`` bytes. Subscribers keep only a
cursor (the sequence number of the next entry they need), never a copy.
"""

from __future__ import annotations

SSE = 0
WS = 1


class Ring:
    """Bounded history of frames, indexed by sequence number."""

    __slots__ = ("capacity", "max_bytes", "head", "tail", "nbytes", "_sse", "_ws", "_size")

    def __init__(self, capacity: int, max_bytes: int, first_seq: int = 0) -> None:
        """Raise ``ValueError`` unless ``capacity`` and ``max_bytes`` are positive."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.head = first_seq
        self.tail = first_seq
        self.nbytes = 0
        self._sse: list[bytes | None] = [None] * capacity
        self._ws: list[bytes | None] = [None] * capacity
        self._size = [0] * capacity

    def __len__(self) -> int:
        return self.head - self.tail

    def append(self, sse: bytes, ws: bytes) -> int:
        """Store one message's frames and return its sequence number.

        Evicts the oldest entries as needed. Raises ``ValueError`` (and stores nothing)
        when the entry alone is larger than ``max_bytes``.
        """
        size = len(sse) + len(ws)
        if size > self.max_bytes:
            raise ValueError(
                f"message frames take {size} bytes, more than the ring's max_bytes={self.max_bytes}"
            )
        cap = self.capacity
        while self.head - self.tail >= cap or self.nbytes + size > self.max_bytes:
            self._evict()
        seq = self.head
        i = seq % cap
        self._sse[i] = sse
        self._ws[i] = ws
        self._size[i] = size
        self.nbytes += size
        self.head = seq + 1
        return seq

    def _evict(self) -> None:
        i = self.tail % self.capacity
        self.nbytes -= self._size[i]
        # Drop the references so evicted frames are freed now, not when overwritten.
        self._sse[i] = None
        self._ws[i] = None
        self._size[i] = 0
        self.tail += 1

    def clear(self) -> None:
        """Evict every entry; sequence numbers keep increasing from ``head``."""
        while self.tail < self.head:
            self._evict()

    def frames(self, kind: int, start: int) -> list[bytes]:
        """Return the frames of ``kind`` (SSE or WS) from ``start`` up to the head.

        Raises ``IndexError`` when ``start`` is outside ``tail .. head``.
        """
        if not self.tail <= start <= self.head:
            raise IndexError(f"sequence {start} is outside the ring ({self.tail}..{self.head})")
        store = self._sse if kind == SSE else self._ws
        cap = self.capacity
        i = start % cap
        j = self.head % cap
        if start == self.head:
            return []
        if i < j:
            return store[i:j]  # type: ignore[return-value]
        return store[i:] + store[:j]  # type: ignore[operator]

    def join(self, kind: int, start: int) -> bytes:
        """Return the frames of ``kind`` from ``start`` to the head as one bytes object."""
        return b"".join(self.frames(kind, start))

    def latest(self, kind: int) -> bytes | None:
        """Return the newest frame of ``kind``, or ``None`` when the ring is empty."""
        if self.head == self.tail:
            return None
        store = self._sse if kind == SSE else self._ws
        return store[(self.head - 1) % self.capacity]
