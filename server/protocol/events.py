"""What the parser produces: one complete request, head and body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO


@dataclass(slots=True)
class Request:
    """A fully received request.

    Header names are lower-case, values have surrounding whitespace removed;
    both are ``str`` decoded as latin-1 so every byte survives (WSGI's rule).
    ``path`` is still percent-encoded: decoding is the host layer's choice.
    """

    method: str
    target: str
    path: str
    query: str
    version: str  # "HTTP/1.1" or "HTTP/1.0", as the client spoke it
    http11: bool
    headers: list[tuple[str, str]]
    host: str | None
    scheme: str | None  # from an absolute-form target, else None
    keep_alive: bool
    expect_continue: bool
    chunked: bool
    body: bytes = b""
    # A body larger than the parser keeps in memory, at position 0; ``body`` is empty then. Whoever
    # handles the request closes it (the WSGI runner, once the answer is out).
    body_file: IO[bytes] | None = None

    def header(self, name: str) -> str | None:
        """First value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None
