"""tornadose: Tornado publish/subscribe for very high fan-out over SSE and WebSockets.

``tornadose.backend`` says which implementation of the hot paths is active:
``"cython"`` (compiled speedups) or ``"python"`` (the pure-Python twin).
``tornadose.listen(app, port)`` serves an application the way a high-fan-out server
should (see :mod:`tornadose.server`).
"""

from ._backend import BACKEND as backend
from .server import listen, make_server

__version__ = "1.0.0.dev0"

__all__ = ["__version__", "backend", "listen", "make_server"]
