"""How a response is framed: length, chunking, keep-alive, and its head in bytes (RFC 9112 6, 9)."""

from __future__ import annotations

from dataclasses import dataclass

# RFC 9110 7.6.1: hop-by-hop fields belong to the connection, which the server owns.
_HOP_BY_HOP = frozenset({"keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "proxy-connection"})
_SPECIAL = _HOP_BY_HOP | {"content-length", "connection", "date", "server"}


@dataclass(slots=True)
class ResponsePlan:
    head: bytes  # status line and header block, ready to send
    chunked: bool  # body goes out in chunks, ended by LAST_CHUNK
    send_body: bool  # False for HEAD, 1xx, 204 and 304
    keep_alive: bool  # connection stays open afterwards
    content_length: int | None  # declared length, so the sender can enforce it


def plan_response(status: str, headers: list[tuple[str, str]], http11: bool, head_only: bool,
                  keep_alive: bool, length_hint: int | None, date: str, server: str) -> ResponsePlan:
    """Decide the framing of one response and render its head.

    ``status`` is a WSGI status line (``"200 OK"``); ``headers`` come from the
    application; ``length_hint`` is the body size when the server already knows
    it (the application returned a list), so no chunking is needed. Raises
    ValueError for headers that would corrupt the stream (CR/LF, hop-by-hop).
    """
    code = int(status[:3])
    send_body = not (head_only or code < 200 or code in (204, 304))
    content_length: int | None = None
    have_date = have_server = False
    out = [f"HTTP/1.1 {status}"]
    for name, value in headers:
        lower = name.lower()
        if lower in _SPECIAL:
            if lower == "content-length":
                if not value.isdigit():
                    raise ValueError(f"Content-Length {value!r} is not a number")
                content_length = int(value)
            elif lower == "connection":
                # Not WSGI-legal, but an application asking to close is honoured as gunicorn does.
                if "close" in value.lower():
                    keep_alive = False
                continue
            elif lower == "date":
                have_date = True
            elif lower == "server":
                have_server = True
            else:
                raise ValueError(f"hop-by-hop header {name!r} must not be set by a WSGI application")
        elif ":" in name:
            raise ValueError(f"response header name {name!r} holds a colon")
        out.append(f"{name}: {value}")
    if not have_date:
        out.append(f"Date: {date}")
    if server and not have_server:
        out.append(f"Server: {server}")
    chunked = False
    if content_length is None and code >= 200 and code not in (204, 304):
        if length_hint is not None:
            content_length = length_hint
            out.append(f"Content-Length: {length_hint}")
        elif http11:
            chunked = True
            out.append("Transfer-Encoding: chunked")
        elif not head_only:
            keep_alive = False  # HTTP/1.0 without a length: the end of the body is the close
    if not keep_alive:
        out.append("Connection: close")
    elif not http11:
        out.append("Connection: keep-alive")
    lines = len(out)
    out.append("\r\n")
    text = "\r\n".join(out)
    if text.count("\n") != lines + 1 or text.count("\r") != lines + 1:
        # a CR or LF inside a name or value would let the application split the response
        raise ValueError("response header holds a line break")
    head = text.encode("latin-1")
    return ResponsePlan(head, chunked and send_body, send_body, keep_alive, content_length)
