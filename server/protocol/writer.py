"""Bytes on the way out: status lines, chunk framing, dates and the server's own error responses."""

from __future__ import annotations

import json
import time
from http import HTTPStatus

from .problems import SERVER_PROBLEMS

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_REASONS[431] = "Request Header Fields Too Large"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def status_line(status: int) -> str:
    """``"404 Not Found"``, the form WSGI's start_response uses."""
    return f"{status} {reason(status)}"


def http_date(seconds: float) -> str:
    """IMF-fixdate (RFC 9110 5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked response body; empty data would end the body, so it is skipped."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def error_response(status: int, detail: str, *, date: str, server: str = "", extra: str = "") -> bytes:
    """A complete problem+json (RFC 9457) response the server sends on its own, then closes.

    Used for protocol errors and overload, where no application is involved.
    """
    problem = SERVER_PROBLEMS.get(status)
    kind, title = (problem.uri, problem.title) if problem is not None else ("about:blank", reason(status))
    body = json.dumps({"type": kind, "title": title, "status": status, "detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {reason(status)}", f"Date: {date}"]
    if server:
        lines.append(f"Server: {server}")
    lines += ["Content-Type: application/problem+json", f"Content-Length: {len(body)}", "Connection: close"]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
