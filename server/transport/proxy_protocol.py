"""Reading the PROXY protocol header off a new connection, before anything else is read from it.

The header is read with ``MSG_PEEK`` and only consumed once complete, so
nothing past it is taken out of the kernel by accident: the bytes after it are
the client's (an HTTP request, or a TLS ClientHello) and are read by whoever
reads next, exactly as if the header had not been there. A header arriving in
pieces is peeked again at each new arrival (the poller is edge-triggered, and
each arrival is an edge); the header timeout bounds a peer that never finishes.

Rules (documented in docs/proxy-protocol.md):
- a peer in ``--forwarded-allow-ips`` must start with a valid v1 or v2 header;
  a missing or malformed one closes the connection;
- any other peer is served as a direct client, but if it starts with something
  that is a PROXY header it is refused (it would be claiming someone else's address);
- on a plain listener a refusal writes a short ``400`` problem response first, so
  a person testing by hand sees why; on a TLS listener nothing is written (the
  peer expects TLS records, not text).

Errors surface as ``ProxyRefused``, an ``OSError``, which is what the reactor
already answers by closing the connection: the reactor needs no new branch.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from .. import errorlog
from ..protocol.proxy_header import V1_PREFIX, V2_MAX_BODY, V2_SIGNATURE, ProxyHeaderError, parse
from ..protocol.writer import error_response, http_date
from ..wsgi.peer import PeerInfo, ProxyFacts

if TYPE_CHECKING:
    from .connection import Connection

_PEEK = 16 + V2_MAX_BODY  # the longest v2 header; a v1 line is far shorter


class ProxyRefused(ConnectionError):
    """The connection's PROXY header was missing, malformed or not allowed; it is closed."""


def take_header(raw: socket.socket, conn: Connection, trusts: Callable[[str], bool], *, plain: bool) -> None:
    """Consume the header (if any is due) and put the address it carries into ``conn.peer``.

    Raises BlockingIOError while the header is incomplete, ProxyRefused when it
    is wrong (after answering 400 when ``plain``), ConnectionAbortedError at EOF.
    """
    data = raw.recv(_PEEK, socket.MSG_PEEK)  # BlockingIOError: nothing yet
    if not data:
        raise ConnectionAbortedError("peer closed before sending anything")
    peer = conn.peer
    if not trusts(peer.address):
        if data.startswith((V1_PREFIX, V2_SIGNATURE)):
            _refuse(raw, conn, "PROXY protocol header from a peer not in --forwarded-allow-ips", plain)
        if V1_PREFIX.startswith(data) or V2_SIGNATURE.startswith(data):
            raise BlockingIOError  # too short yet to tell a header from, say, "PO" of "POST"
        return  # a direct client: its bytes stay queued for the normal read
    try:
        header = parse(data)
    except ProxyHeaderError as exc:
        _refuse(raw, conn, str(exc), plain)
    if header is None:
        raise BlockingIOError  # incomplete (parse has already refused anything longer than a header can be)
    taken = 0
    while taken < header.length:  # the bytes are queued (we peeked them): this returns at once
        chunk = raw.recv(header.length - taken)
        if not chunk:
            raise ConnectionAbortedError("peer closed inside the PROXY header")
        taken += len(chunk)
    if header.source is not None:
        conn.peer = PeerInfo(header.source[0], str(header.source[1]), peer.tls,
                             ProxyFacts(peer.address, header.destination))


def _refuse(raw: socket.socket, conn: Connection, reason: str, plain: bool) -> NoReturn:
    errorlog.warning("connection from %s refused: %s", conn.peer.address, reason)
    with contextlib.suppress(OSError):
        raw.recv(_PEEK)  # what it sent is read, so closing does not turn into a reset that eats the answer
    if plain:
        with contextlib.suppress(OSError):
            raw.send(error_response(400, reason, date=http_date(int(time.time()))))
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)
    raise ProxyRefused(reason)


class ProxyPreamble:
    """A plain connection's stream until its header is read; then the connection's stream is the socket itself.

    Only the first read goes through here, so the served path is exactly the
    plain one afterwards.
    """

    __slots__ = ("conn", "raw", "trusts")

    def __init__(self, raw: socket.socket, conn: Connection, trusts: Callable[[str], bool]) -> None:
        self.raw = raw
        self.conn = conn
        self.trusts = trusts

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        if flags:
            return self.raw.recv(size, flags)
        take_header(self.raw, self.conn, self.trusts, plain=True)
        self.conn.stream = self.raw
        return self.raw.recv(size)

    def send(self, data: bytes | memoryview, flags: int = 0, /) -> int:
        return self.raw.send(data, flags)

    def shutdown(self, how: int, /) -> None:
        self.raw.shutdown(how)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
