"""Per-connection compression: the :class:`Deflater` of the chosen backend, and its options.

The implementation comes from the backend chosen in :mod:`tornadose.core.backend`; see
:mod:`tornadose.core._deflate_py` for the contract. :func:`compression_options` reads
the ``tornadose_compression`` Application setting and the handlers' ``compression``
argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backend import BACKEND

if TYPE_CHECKING or BACKEND == "python":
    from ._deflate_py import GZIP, WEBSOCKET, Deflater
else:
    from ._deflate_c import GZIP, WEBSOCKET, Deflater

__all__ = [
    "DEFAULT_MEM_LEVEL",
    "DEFAULT_WINDOW_BITS",
    "GZIP",
    "WEBSOCKET",
    "Compression",
    "Deflater",
    "compression_options",
]

#: A 2 KiB history: the ticks of the last few turns of a connection, which is where
#: the repeats are (keys, symbols, digits of a price). Larger windows save ~1% of the
#: bytes per doubling and cost 2x the memory (bench/README.md, "Compression").
DEFAULT_WINDOW_BITS = 11
#: 1024 match heads (2 KiB).
DEFAULT_MEM_LEVEL = 3


@dataclass(frozen=True)
class Compression:
    """How a connection's stream is compressed when its client accepts it: a history
    of ``2 ** window_bits`` bytes (9 to 14) and a match index of ``2 ** (mem_level +
    7)`` entries (``mem_level`` 1 to 9). Memory per compressed connection, compiled
    backend: ``2 ** (window_bits + 1) + 2 ** (mem_level + 8)`` bytes."""

    window_bits: int = DEFAULT_WINDOW_BITS
    mem_level: int = DEFAULT_MEM_LEVEL

    def __post_init__(self) -> None:
        for name, low, high in (("window_bits", 9, 14), ("mem_level", 1, 9)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(
                    f"compression {name} must be an integer {low} to {high}, got {value!r}"
                )

    def deflater(self, wire: int, context: bool = True) -> Deflater:
        """A new stream for one connection (``GZIP`` or ``WEBSOCKET``)."""
        return Deflater(wire, self.window_bits, self.mem_level, context)


def compression_options(value: Any) -> Compression | None:
    """Read a compression setting: ``None`` or ``False`` is off (today's bytes exactly),
    ``True`` the defaults, a :class:`Compression` itself, or a dict of its fields
    (``{"window_bits": 12}``). Raises ``TypeError`` or ``ValueError`` for anything
    else, naming what is wrong."""
    if value is None or value is False:
        return None
    if value is True:
        return Compression()
    if isinstance(value, Compression):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"window_bits", "mem_level"})
        if unknown:
            raise ValueError(
                f"unknown compression option(s) {', '.join(map(repr, unknown))}: "
                "the options are window_bits and mem_level (the encoder has one level)"
            )
        return Compression(**value)
    raise TypeError(
        f"compression must be True, False, None, a dict or a Compression, got {value!r}"
    )
