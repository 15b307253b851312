"""Who is at the other end of a connection: the seam between the transport, which learns it, and the environ.

The transport makes a ``PeerInfo`` once at accept, and replaces it (never changes it) when a PROXY
header names the real client or a TLS handshake completes; from then on it is read-only, so any
thread may read it without a lock. The environ builder reads it for every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class TLSFacts:
    """What a TLS handshake established, as the environ keys mod_ssl and gunicorn use (docs/tls.md).

    ``variables`` is made once, when the handshake completes: ``HTTPS``, ``SSL_PROTOCOL``,
    ``SSL_CIPHER``, ``SSL_CLIENT_VERIFY`` and, with a client certificate, ``SSL_CLIENT_*``.
    """

    variables: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProxyFacts:
    """What a PROXY protocol header said: who sent it (the proxy), and where the client connected to."""

    proxy_address: str
    destination: tuple[str, int] | None


class PeerInfo:
    """The other end of a connection: written at accept, replaced by a PROXY header or a handshake, then read-only.

    ``port`` is text, as ``REMOTE_PORT`` carries it (made once per connection, not per request);
    a Unix-socket client has neither address nor port (both "", gunicorn's convention).

    Immutable by type: every attribute is ``Final``, so mypy (strict, in scripts/test) refuses a write,
    and the transport makes a new one instead. Not a frozen dataclass, whose ``__init__`` sets each
    field through ``object.__setattr__``: that cost about 4,000 instructions per new connection
    (loadtest.instructions, "a new connection per GET"), 3% of the row.
    """

    __slots__ = ("address", "port", "proxy", "tls")

    def __init__(self, address: str, port: str, tls: TLSFacts | None = None, proxy: ProxyFacts | None = None) -> None:
        self.address: Final = address
        self.port: Final = port
        self.tls: Final = tls
        self.proxy: Final = proxy

    def __repr__(self) -> str:
        return f"PeerInfo({self.address!r}, {self.port!r}, tls={self.tls!r}, proxy={self.proxy!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerInfo):
            return NotImplemented
        return (self.address, self.port, self.tls, self.proxy) == (other.address, other.port, other.tls, other.proxy)

    def __hash__(self) -> int:
        return hash((self.address, self.port, self.tls, self.proxy))


UNIX_PEER = PeerInfo("", "")  # REMOTE_ADDR, REMOTE_PORT of a Unix-socket client: it has no address
