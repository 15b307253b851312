"""The transport's speed tricks that need a module of their own, each with the figure that earns its place.

Figures are instructions per request on the serving thread (``python -m loadtest.instructions``,
CPython 3.11.7); the tricks inside the hot loop are listed in reactor.py's docstring.

Accepting without ``socket.accept()``: it wraps the private ``socket._accept()`` and then reads the
listener's ``family`` and ``type`` through properties that build enum members, twice per connection.
The numbers are the same for every connection of a listener, so they are read once here and the
acceptor makes each socket from them directly (acceptor.py). Figure: a new connection per GET costs
146,225 instructions this way and 162,676 with ``socket.accept()`` (10% of the row). The risk is a
private name: where it is missing (another interpreter, a future CPython), ``raw_accept_of`` returns
None and the acceptor uses the public call.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

_RAW_ACCEPT = hasattr(socket.socket, "_accept")

RawAccept = tuple[Callable[[], tuple[int, Any]], int, int, int]  # accept -> (fd, address); family, type, proto


def raw_accept_of(sock: socket.socket) -> RawAccept | None:
    """What accepting on the listener ``sock`` needs without socket.accept(); None where CPython lacks it.

    The caller makes the connection's socket with ``socket.socket(family, type, proto, fd)``.
    """
    if not _RAW_ACCEPT:
        return None
    raw_accept = sock._accept  # type: ignore[attr-defined]  # CPython's: (fd, address), no socket object
    return raw_accept, int(sock.family), int(sock.type), sock.proto
