"""tornadose: Tornado publish/subscribe for very high fan-out over SSE and WebSockets.

``tornadose.backend`` says which implementation of the hot paths is active:
``"cython"`` (compiled speedups) or ``"python"`` (the pure-Python twin).
``tornadose.listen(app, port)`` serves an application the way a high-fan-out server
should (see :mod:`tornadose.transport.server`).
"""

from ._version import __version__
from .core.backend import BACKEND as backend
from .transport.server import listen, make_server

__all__ = ["__version__", "backend", "listen", "make_server"]
