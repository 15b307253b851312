"""The one exception the protocol core raises for anything a client sent wrong, and the messages that
name exactly what was wrong with a request line or a field, so a client can fix it."""

from __future__ import annotations

import re

from .grammar import TOKEN

_ANY_VERSION = re.compile(rb"\S+ \S+ HTTP/[0-9]+\.[0-9]+")


class ProtocolError(Exception):
    """A request that cannot be served; ``status`` is the response code to send.

    After a ProtocolError the byte stream can no longer be trusted to be framed
    correctly, so the connection must be closed once the error response is out.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.detail!r})"


def request_line_error(line: bytes) -> ProtocolError:
    """Name the exact problem with a request line, so clients can fix it."""
    if _ANY_VERSION.fullmatch(line):
        named = line.rsplit(b" ", 1)[1].decode("ascii", "replace")
        if not named.startswith("HTTP/1."):
            return ProtocolError(505, f"{named} is not supported; use HTTP/1.1")
    parts = line.split(b" ")
    if len(parts) != 3:
        if b"\n" in line or b"\r" in line:
            return ProtocolError(400, "lines must end with CRLF; a bare CR or LF was received")
        return ProtocolError(400, "request line must be 'METHOD target HTTP/1.1' with single spaces")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        return ProtocolError(400, "invalid characters in the request method")
    if not target or any(b <= 0x20 or b == 0x7F for b in target):
        return ProtocolError(400, "invalid characters in the request target")
    if not target.isascii():
        return ProtocolError(400, "the request target must be ASCII; percent-encode other octets (RFC 3986)")
    return ProtocolError(400, f"malformed HTTP version {version[:20].decode('latin-1')!r}")


def field_error(raw: bytes, kind: str = "header") -> ProtocolError:
    if raw[:1] in (b" ", b"\t"):
        return ProtocolError(400, f"obsolete line folding in a {kind} is not accepted")
    name, colon, _ = raw.partition(b":")
    if not colon:
        return ProtocolError(400, f"{kind} line without a colon")
    if name != name.rstrip(b" \t"):
        return ProtocolError(400, f"whitespace between a {kind} name and its colon is not allowed")
    if not TOKEN.fullmatch(name):
        return ProtocolError(400, f"invalid characters in a {kind} name")
    return ProtocolError(400, f"invalid control characters in the value of {kind} {name[:40].decode('latin-1')!r}")
