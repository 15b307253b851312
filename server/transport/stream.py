"""The ``Stream`` a connection's bytes go through (its ``PeerInfo`` is in server/wsgi/peer.py).

A connection's stream is one of three things, and the reactor treats them alike:

- a plain ``socket.socket`` (TCP or Unix), which satisfies the protocol as it is: wrapping it
  would put a Python call in front of every ``recv`` and ``send`` of the common case;
- ``tls.TLSStream``: plaintext in and out, ciphertext on the wire (ssl.SSLObject over memory BIOs);
- ``proxy_protocol.ProxyPreamble``: a plain socket whose first bytes are a PROXY header; once the
  header is taken off, the connection's stream becomes the socket itself.

The contract is the socket's own, which every reader of a connection relies on: ``recv`` returns
what is available now, raises ``BlockingIOError`` when nothing is, and returns ``b""`` at EOF; a
short read means the kernel's buffer is empty, so the poller will report the next arrival. A stream
that keeps bytes of its own (TLS) must honour ``MSG_PEEK`` over them too, so "has this client sent
anything we have not read" has one answer for every kind (``Connection.has_unread_input``).

What the application learns about the other end travels separately, as a ``PeerInfo``: the
WSGI layer defines it (it knows no sockets), the transport fills it in.
"""

from __future__ import annotations

from typing import Protocol


class Stream(Protocol):
    """Bytes in and out of one connection, non-blocking, with the socket's calling conventions."""

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        """Up to ``size`` bytes available now; BlockingIOError when none are, b"" at EOF."""
        ...

    def send(self, data: bytes | memoryview, flags: int = 0, /) -> int:
        """Hand over what the stream can take now; returns how much (BlockingIOError: nothing)."""
        ...

    def shutdown(self, how: int, /) -> None:
        """Half-close (SHUT_WR: our side is done sending)."""
        ...

    def fileno(self) -> int:
        ...

    def close(self) -> None:
        ...
