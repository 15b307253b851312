"""The one exception the protocol core raises for anything a client sent wrong."""

from __future__ import annotations


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
