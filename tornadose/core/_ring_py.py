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

    def frames(self, kind: int, start: int, stop: int = -1) -> list[bytes]:
        """Return the frames of ``kind`` (SSE or WS) from ``start`` up to ``stop``
        (default: the head).

        Raises ``IndexError`` unless ``tail <= start <= stop <= head``.
        """
        head = self.head
        if stop < 0:
            stop = head
        if not self.tail <= start <= stop <= head:
            raise IndexError(f"sequence {start}..{stop} is outside the ring ({self.tail}..{head})")
        if start == stop:
            return []
        store = self._sse if kind == SSE else self._ws
        cap = self.capacity
        i = start % cap
        j = stop % cap
        if i < j:
            return store[i:j]  # type: ignore[return-value]
        return store[i:] + store[:j]  # type: ignore[operator]

    def join(self, kind: int, start: int, stop: int = -1) -> bytes:
        """Return the frames of ``kind`` from ``start`` to ``stop`` (default: the head)
        as one bytes object."""
        return b"".join(self.frames(kind, start, stop))

    def latest(self, kind: int) -> bytes | None:
        """Return the newest frame of ``kind``, or ``None`` when the ring is empty."""
        if self.head == self.tail:
            return None
        store = self._sse if kind == SSE else self._ws
        return store[(self.head - 1) % self.capacity]


class TopicState:
    """What the log and the fan-out keep of one topic of a :class:`TopicRing`.

    ``subs`` holds the connections subscribed to it now (the topic -> connections index
    a flush walks, so its cost follows deliveries). ``last_seq`` is the sequence number
    of its newest entry, ``evicted_upto`` that of its newest entry the ring evicted (0:
    none), which tells exactly whether a cursor lost one of its messages. A ring that
    keeps latest values also holds the frames of its newest entry in ``last_sse`` /
    ``last_ws`` (``None``: no current value), beyond the ring's own history.
    """

    __slots__ = ("name", "subs", "last_seq", "evicted_upto", "last_sse", "last_ws", "__weakref__")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subs: dict[object, None] = {}
        self.last_seq = 0
        self.evicted_upto = 0
        self.last_sse: bytes | None = None
        self.last_ws: bytes | None = None

    def __repr__(self) -> str:
        return f"<TopicState {self.name!r}>"


class TopicRing(Ring):
    """One bounded history for many topics: every entry also knows its topic.

    Entries keep submit order across topics, under one sequence. With ``keep_latest``
    each topic also keeps the frames of its newest entry after the ring evicts it (the
    current value of a latest-value topic).
    """

    __slots__ = ("keep_latest", "_topic", "run_start", "_run_topic")

    def __init__(
        self, capacity: int, max_bytes: int, first_seq: int = 0, keep_latest: bool = False
    ) -> None:
        super().__init__(capacity, max_bytes, first_seq)
        self.keep_latest = keep_latest
        self._topic: list[TopicState | None] = [None] * capacity
        #: Every entry from ``run_start`` to the head is of one topic: a flush of those
        #: sends the same bytes to every connection of it (always so for a store).
        self.run_start = first_seq
        self._run_topic: TopicState | None = None

    def add_entry(self, sse: bytes, ws: bytes, topic: TopicState) -> int:
        """Store one message of ``topic`` and return its sequence number (see
        :meth:`Ring.append`). Raises ``TypeError`` without a topic."""
        if topic is None:
            raise TypeError("a TopicRing entry needs its topic")
        seq = self.append(sse, ws)
        self._topic[seq % self.capacity] = topic
        if topic is not self._run_topic:
            self._run_topic = topic
            self.run_start = seq
        topic.last_seq = seq
        if self.keep_latest:
            topic.last_sse = sse
            topic.last_ws = ws
        return seq

    def _evict(self) -> None:
        i = self.tail % self.capacity
        topic = self._topic[i]
        if topic is not None:
            topic.evicted_upto = self.tail
            self._topic[i] = None
        super()._evict()

    def entry(self, seq: int) -> tuple[TopicState, bytes, bytes]:
        """``(topic, sse, ws)`` of entry ``seq``; raises ``IndexError`` outside
        ``tail .. head-1``."""
        if not self.tail <= seq < self.head:
            raise IndexError(f"sequence {seq} is outside the ring ({self.tail}..{self.head})")
        i = seq % self.capacity
        return self._topic[i], self._sse[i], self._ws[i]  # type: ignore[return-value]

    def topic_at(self, seq: int) -> TopicState:
        """The topic of entry ``seq``; raises ``IndexError`` outside ``tail .. head-1``."""
        return self.entry(seq)[0]
