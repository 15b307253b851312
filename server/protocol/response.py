"""How a response is framed: length, chunking, keep-alive, and its head in bytes (RFC 9112 6, 9).

Two steps, because a WSGI server learns a response in two steps: ``check_fields``
validates and renders the status and header fields when the application names
them (so a bad header fails inside ``start_response``, as PEP 3333 asks), and
``frame`` decides the framing once the body's size is known or known to be
unknown. Applications send the same few status and header lists again and
again, so a server's ``ResponseCache`` remembers both steps' results: a header
list seen before costs one dictionary lookup instead of the checks, and a
response head seen before (same fields, framing, date and server) one more.
The caches hold only what the full computation would give, are bounded, and
start over when full; the module functions compute afresh every time.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

# RFC 9110 7.6.1: hop-by-hop fields belong to the connection, which the server owns.
_HOP_BY_HOP = frozenset({"keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "proxy-connection"})
_SPECIAL = _HOP_BY_HOP | {"content-length", "connection", "date", "server"}
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")  # RFC 9110 5.5: would end the line or be refused by peers
_STATUS = re.compile(r"([1-5][0-9][0-9]) [^\x00-\x08\x0a-\x1f\x7f]*")


@dataclass(slots=True, frozen=True)  # shared between responses through the cache: never changed
class ResponsePlan:
    head: bytes  # status line and header block, ready to send
    chunked: bool  # body goes out in chunks, ended by LAST_CHUNK
    send_body: bool  # False for HEAD, 1xx, 204 and 304
    keep_alive: bool  # connection stays open afterwards
    content_length: int | None  # declared length, so the sender can enforce it


# What check_fields learned: its serial (None when the headers cannot be a cache key), status code,
# rendered lines (status line first), the declared Content-Length, whether the application asked to
# close, and whether it set Date and Server.
Fields = tuple["int | None", int, list[str], "int | None", bool, bool, bool]


def check_fields(status: str, headers: list[tuple[str, str]]) -> Fields:
    """Validate a WSGI status and header list and render them as lines.

    Raises TypeError or ValueError for anything that is not ``str`` pairs or
    would corrupt the stream (CR/LF, a bad name, hop-by-hop fields).
    """
    if type(headers) is not list:
        raise TypeError("WSGI headers must be a list of (str, str) tuples")
    return _check_fields(None, status, headers)


class ResponseCache:
    """The results of ``check_fields`` and ``frame`` a server has computed, for the responses that repeat.

    What it saves, in callgrind instructions per request on the serving thread (``python -m
    loadtest.instructions``, Python 3.11; the server with this cache against the same server calling
    the module functions): keep-alive ``GET /add/2/3`` 112,259 -> 78,435 (30% fewer), ``POST /calc``
    129,391 -> 95,826 (26%), a new connection per GET 182,483 -> 148,122 (19%).

    Ownership and threads: one per server (the WSGI runner makes it), used by every worker thread
    at once. Keys map to immutable values (``Fields`` tuples and their lists are never changed, and
    ``ResponsePlan`` is frozen). Lookups are one ``dict.get`` with no lock; inserts, emptying a full
    table and drawing a serial happen under ``_lock``. CPython makes each dict operation atomic with or
    without the GIL (the free-threaded build locks each dict, PEP 703), so a reader sees a value or
    none; nothing here relies on the GIL.
    """

    __slots__ = ("_fields", "_lock", "_plans", "_serial")
    LIMIT = 1024  # entries per table; a full table is emptied and fills again with what is in use

    def __init__(self) -> None:
        self._lock = threading.Lock()  # taken by writers only
        self._fields: dict[tuple[object, ...], Fields] = {}  # (status, *headers) -> what check_fields found
        self._plans: dict[tuple[object, ...], ResponsePlan] = {}  # (fields serial, framing inputs) -> plan
        # Each remembered result of check_fields gets a number of its own, which stands for its headers in the
        # plan table's key: hashing a small int costs far less than hashing the status and every header again.
        self._serial = 0

    def check_fields(self, status: str, headers: list[tuple[str, str]]) -> Fields:
        """``check_fields``, answered from the table when this status and header list came before."""
        if type(headers) is not list:
            raise TypeError("WSGI headers must be a list of (str, str) tuples")
        key = (status, *headers)
        try:
            fields = self._fields.get(key)
        except TypeError:  # something unhashable in there: not a (str, str) tuple, which the checks will say
            return _check_fields(None, status, headers)
        if fields is None:
            with self._lock:
                self._serial += 1
                serial = self._serial
            fields = _check_fields(serial, status, headers)
            self._remember(self._fields, key, fields)
        return fields

    def frame(self, fields: Fields, http11: bool, head_only: bool, keep_alive: bool, length_hint: int | None,
              date: str, server: str) -> ResponsePlan:
        """``frame``, answered from the table for fields this cache checked and inputs seen before."""
        serial = fields[0]
        if serial is None:
            return frame(fields, http11, head_only, keep_alive, length_hint, date, server)
        key = (serial, http11, head_only, keep_alive, length_hint, date, server)
        plan = self._plans.get(key)
        if plan is None:
            plan = frame(fields, http11, head_only, keep_alive, length_hint, date, server)
            self._remember(self._plans, key, plan)  # by the time it fills, mostly heads with a past Date
        return plan

    def _remember(self, table: dict[tuple[object, ...], Any], key: tuple[object, ...], value: object) -> None:
        with self._lock:
            if len(table) >= self.LIMIT:
                table.clear()  # whatever is still in use comes back at once
            table[key] = value


def _check_fields(serial: int | None, status: str, headers: list[tuple[str, str]]) -> Fields:
    code, line = _check_status(status)
    lines = [line]
    content_length: int | None = None
    close = have_date = have_server = False
    for header in headers:
        name, value = _check_pair(header)
        lower = name.lower()
        if lower not in _SPECIAL:
            lines.append(f"{name}: {value}\r\n")
        elif lower == "content-length":
            if not (value.isdigit() and value.isascii()) or len(value) > 18:
                raise ValueError(f"Content-Length {value!r} is not a number")
            if content_length is not None and content_length != int(value):
                raise ValueError(f"two different Content-Length headers: {content_length} and {value}")
            content_length = int(value)  # frame() writes the line
        elif lower == "connection":
            # Not WSGI-legal, but an application asking to close is honoured as gunicorn does.
            close = close or "close" in value.lower()
        elif lower == "date" or lower == "server":
            have_date = have_date or lower == "date"
            have_server = have_server or lower == "server"
            lines.append(f"{name}: {value}\r\n")
        else:
            raise ValueError(f"hop-by-hop header {name!r} must not be set by a WSGI application")
    return serial, code, lines, content_length, close, have_date, have_server


def frame(fields: Fields, http11: bool, head_only: bool, keep_alive: bool, length_hint: int | None,
          date: str, server: str) -> ResponsePlan:
    """Decide the framing of one response and render its head.

    ``length_hint`` is the body size when the server already knows it (the
    application returned a list), so no chunking is needed.
    """
    _, code, lines, content_length, close, have_date, have_server = fields
    out = lines.copy()
    if not have_date:
        out.append(f"Date: {date}\r\n")
    if server and not have_server:
        out.append(f"Server: {server}\r\n")
    bodiless = code < 200 or code == 204 or code == 304
    chunked = False
    if content_length is not None:
        out.append(f"Content-Length: {content_length}\r\n")
    elif not bodiless:
        if length_hint is not None:
            content_length = length_hint
            out.append(f"Content-Length: {length_hint}\r\n")
        elif http11:
            chunked = not head_only
            out.append("Transfer-Encoding: chunked\r\n")
        elif not head_only:
            keep_alive = False  # HTTP/1.0 without a length: the end of the body is the close
    if close or not keep_alive:
        keep_alive = False
        out.append("Connection: close\r\n")
    elif not http11:
        out.append("Connection: keep-alive\r\n")
    out.append("\r\n")
    head = "".join(out).encode("latin-1")
    return ResponsePlan(head, chunked, not (head_only or bodiless), keep_alive, content_length)


def plan_response(status: str, headers: list[tuple[str, str]], http11: bool, head_only: bool,
                  keep_alive: bool, length_hint: int | None, date: str, server: str,
                  cache: ResponseCache | None = None) -> ResponsePlan:
    """Both steps at once, for callers that know everything up front; through ``cache`` when given."""
    if cache is None:
        return frame(check_fields(status, headers), http11, head_only, keep_alive, length_hint, date, server)
    return cache.frame(cache.check_fields(status, headers), http11, head_only, keep_alive, length_hint, date, server)


def _check_status(status: object) -> tuple[int, str]:
    if type(status) is not str or _STATUS.fullmatch(status) is None:
        raise ValueError(f"WSGI status must look like '200 OK', got {status!r}")
    try:
        status.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"WSGI status must be latin-1 text, got {status!r}") from None
    return int(status[:3]), f"HTTP/1.1 {status}\r\n"


def _check_pair(header: object) -> tuple[str, str]:
    """A header the cache did not know: the full checks, with a message naming the problem."""
    if type(header) is not tuple or len(header) != 2:
        raise TypeError(f"WSGI headers must be (str, str) tuples, got {header!r}")
    name, value = header
    if type(name) is not str or type(value) is not str:
        raise TypeError(f"WSGI headers must be (str, str) tuples, got {header!r}")
    if _NAME.fullmatch(name) is None:
        if "\r" in name or "\n" in name:
            raise ValueError("response header holds a line break")
        raise ValueError(f"response header name {name!r} is not a valid token")
    if _BAD_VALUE.search(value) is not None:
        raise ValueError(f"response header {name!r} holds a line break or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"response header {name!r} must be latin-1 text") from None
    return name, value
