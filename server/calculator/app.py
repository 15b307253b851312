"""The WSGI callable: routing, method checks and response assembly.

Application layer only: it sees a PEP 3333 environ and calls ``start_response``, and knows nothing
of sockets or of the server running it. Every response carries Content-Length, so no server ever
has to chunk it, and every failure is an RFC 9457 problem document (see ``problems``).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from ..protocol.writer import status_line
from . import openapi
from .arithmetic import (
    INTEGER_OPERATIONS,
    MAX_SIGNIFICANT_DIGITS,
    OPERATIONS,
    DivisionByZeroError,
    NonFiniteNumber,
    OperandError,
    OutOfRange,
    parse_operand,
    to_plain,
)
from .calc_request import COMMON_BODY, DOT, parse_common, parse_other
from .problems import DOCUMENTED, Problem, shown
from .request_body import COMMON_JSON_TYPES, read_body, require_json

StartResponse = Callable[..., Any]
Response = tuple[str, list[tuple[str, str]], bytes]

_OK = "200 OK"
_TEXT = ("Content-Type", "text/plain; charset=utf-8")
_JSON = ("Content-Type", "application/json")
_READABLE_METHODS = frozenset({"GET", "HEAD"})
_READABLE = (_READABLE_METHODS, "GET, HEAD")  # methods, and the Allow header naming them
_POSTABLE = (frozenset({"POST"}), "POST")
# The Content-Length field of every size an integer answer can have (at most 100-digit operands),
# made once: indexing a list costs less than str() and a new tuple per answer.
_KNOWN_LENGTHS = 512
_LENGTHS = [("Content-Length", str(size)) for size in range(_KNOWN_LENGTHS)]
_HEALTH_BODY = b'{"status":"ok"}'
_DRAINING_BODY = b'{"status":"draining"}'
# Set to True by a server that is about to shut down and wants no new traffic (calc-server's
# --drain-delay); a key other servers simply never set.
_DRAINING = "calc_server.draining"
_OPENAPI_BODY = openapi.document_bytes()
_ROUTES_HINT = "Try GET /add/{arg1}/{arg2} (or sub, mult, div), POST /calc, GET /healthz or GET /openapi.json."


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The calculator as a WSGI application (``server.calculator:app``)."""
    path = environ.get("PATH_INFO") or "/"
    try:
        # The fixed paths first: one dict lookup settles POST /calc. No fixed path has an operation
        # name as its first segment, so trying them before _route does not change the outcome.
        fixed = _FIXED_ROUTES.get(path)
        status, headers, body = fixed(environ) if fixed is not None else _route(environ, path)
    except Problem as problem:
        status, headers, body = problem.render(environ.get("SCRIPT_NAME", "") + path)
    except Exception:
        # Keep the contract (a problem document with Content-Length) even for a bug, and leave
        # the traceback where WSGI says errors go.
        _log(environ, traceback.format_exc())
        failure = Problem("internal-error", "The calculator failed unexpectedly; the error has been logged.")
        status, headers, body = failure.render(environ.get("SCRIPT_NAME", "") + path)
    start_response(status, headers)
    return [body]


def _route(environ: dict[str, Any], path: str) -> Response:
    """Every path that is not one of the fixed ones: /{op}/..., /problems/{slug}, or nothing."""
    segments = path.split("/")  # "/add/2/3" -> ["", "add", "2", "3"]
    name = segments[1] if len(segments) > 1 and not segments[0] else ""
    operation = OPERATIONS.get(name)
    if operation is not None:
        return _operation(environ, name, operation, segments)
    if name == "problems" and len(segments) == 3 and segments[2] in DOCUMENTED:
        return _problem_page(environ, segments[2])
    raise Problem("not-found", f"There is nothing at {shown(_readable(path), 80)}. {_ROUTES_HINT}")


def _operation(environ: dict[str, Any], name: str,
               operation: Callable[[Decimal, Decimal], Decimal], segments: list[str]) -> Response:
    """GET /{op}/{arg1}/{arg2}: the result as text/plain."""
    if environ["REQUEST_METHOD"] not in _READABLE_METHODS:
        _allow(environ, _READABLE)
    if len(segments) != 4:
        given = len(segments) - 2
        trailing = " (a trailing slash counts as an empty one)" if given > 2 and not segments[-1] else ""
        raise Problem("operand-count",
                      f"/{name} takes exactly two operands, /{name}/{{arg1}}/{{arg2}} as in /{name}/6/3; "
                      f"this path has {given}{trailing}.", expected=2, received=given)
    first, second = segments[2], segments[3]
    integer_operation = INTEGER_OPERATIONS.get(name)
    if (integer_operation is not None and first.isdigit() and second.isdigit() and first.isascii()
            and second.isascii() and len(first) <= MAX_SIGNIFICANT_DIGITS and len(second) <= MAX_SIGNIFICANT_DIGITS):
        # Two whole numbers that parse_operand would take as they are (ASCII digits, within the
        # bound): computed as ints, which give the same text as the Decimal path below.
        body = b"%d" % integer_operation(int(first), int(second))
        size = len(body)
        return _OK, [_TEXT, _LENGTHS[size] if size < _KNOWN_LENGTHS else ("Content-Length", str(size))], body
    try:
        result = operation(_path_operand(first, "arg1"), _path_operand(second, "arg2"))
    except DivisionByZeroError:
        raise Problem("division-by-zero",
                      f"Cannot divide {shown(first)} by zero: arg2 is {shown(second)}. "
                      "Use a non-zero divisor.", parameter="arg2") from None
    body = to_plain(result).encode()
    return _OK, [_TEXT, ("Content-Length", str(len(body)))], body


def _path_operand(text: str, parameter: str) -> Decimal:
    try:
        return parse_operand(text)
    except OperandError as error:
        received = shown(_readable(text))
        hint = ""
        if isinstance(error, OutOfRange):
            slug = "operand-out-of-range"
        elif isinstance(error, NonFiniteNumber):
            slug = "non-finite-number"
        else:
            slug, hint = "invalid-number", " Write a decimal number such as 2, -1.5 or 6.02e23."
        raise Problem(slug, f"{parameter} {error.reason}: got {received!r}.{hint}",
                      parameter=parameter, received=received) from None


def _calc(environ: dict[str, Any]) -> Response:
    """POST /calc: a JSON object in, a JSON object with the exact result out."""
    # The checks run as cheap comparisons first; the functions that explain a refusal only when needed.
    if environ["REQUEST_METHOD"] != "POST":
        _allow(environ, _POSTABLE)
    if environ.get("CONTENT_TYPE", "") not in COMMON_JSON_TYPES:
        require_json(environ)
    body = read_body(environ)
    first: Decimal | int
    second: Decimal | int
    common = COMMON_BODY.fullmatch(body)
    if common is None:
        op, first, second = parse_other(body)
    else:
        name, first_text, second_text = common.groups()
        integer = _INTEGER_CALC.get(name)
        if (integer is not None and DOT not in first_text and DOT not in second_text
                and len(first_text) <= MAX_SIGNIFICANT_DIGITS and len(second_text) <= MAX_SIGNIFICANT_DIGITS):
            # Whole numbers as ints (see INTEGER_OPERATIONS), straight from the match: what parse_common
            # would give, without building its tuple. %d of each is its to_plain text.
            integer_operation, template = integer
            first, second = int(first_text), int(second_text)
            body = template % (first, second, integer_operation(first, second))
            size = len(body)
            return _OK, [_JSON, _LENGTHS[size] if size < _KNOWN_LENGTHS else ("Content-Length", str(size))], body
        # Not both whole numbers within the bound (so never the int case above), or an operation without one.
        parsed = parse_common(common)
        op, first, second = parsed if parsed is not None else parse_other(body)
    try:
        result = OPERATIONS[op](first, second)
    except DivisionByZeroError:
        raise Problem("division-by-zero",
                      f"Cannot divide {to_plain(first)} by zero: arg2 is 0. Use a non-zero divisor.",
                      pointer="#/arg2") from None
    # Numbers are written from the Decimal text, never through float, so 0.1 + 0.2 is exactly 0.3.
    body = (f'{{"op":"{op}","arg1":{to_plain(first)},"arg2":{to_plain(second)},'
            f'"result":{to_plain(result)}}}').encode()
    return _OK, [_JSON, ("Content-Length", str(len(body)))], body


def _health(environ: dict[str, Any]) -> Response:
    """GET /healthz: cheap, for container health checks; 503 ``draining`` once the server is shutting down."""
    _allow(environ, _READABLE)
    if environ.get(_DRAINING):
        return "503 Service Unavailable", [_JSON, ("Content-Length", str(len(_DRAINING_BODY))),
                                           ("Retry-After", "1")], _DRAINING_BODY
    return _OK, [_JSON, ("Content-Length", str(len(_HEALTH_BODY)))], _HEALTH_BODY


def _openapi(environ: dict[str, Any]) -> Response:
    _allow(environ, _READABLE)
    return _OK, [_JSON, ("Content-Length", str(len(_OPENAPI_BODY)))], _OPENAPI_BODY


def _problem_page(environ: dict[str, Any], slug: str) -> Response:
    """GET /problems/{slug}: the human-readable page a problem ``type`` URI points at (RFC 9457 3.1.1)."""
    _allow(environ, _READABLE)
    kind = DOCUMENTED[slug]
    body = f"{kind.title}\n\ntype: {kind.uri}\nstatus: {status_line(kind.status)}\n\n{kind.description}\n".encode()
    return _OK, [_TEXT, ("Content-Length", str(len(body)))], body


# Per operation (its name as COMMON_BODY captures it): its int form and the /calc response with the three
# numbers left to fill in (formatting bytes directly costs less than an f-string and encode()).
_INTEGER_CALC: dict[bytes, tuple[Callable[[int, int], int], bytes]] = {
    op.encode(): (operation, f'{{"op":"{op}","arg1":%d,"arg2":%d,"result":%d}}'.encode())
    for op, operation in INTEGER_OPERATIONS.items()
}

_FIXED_ROUTES: dict[str, Callable[[dict[str, Any]], Response]] = {
    "/calc": _calc,
    "/healthz": _health,
    "/openapi.json": _openapi,
}


def _allow(environ: dict[str, Any], methods: tuple[frozenset[str], str]) -> None:
    """Raise 405 with an Allow header unless the request method is one of ``methods``."""
    allowed, header = methods
    method = environ["REQUEST_METHOD"]
    if method not in allowed:
        raise Problem("method-not-allowed",
                      f"{shown(method)} is not supported here; use {' or '.join(sorted(allowed))}.",
                      headers=(("Allow", header),), allowed=header.split(", "))


def _readable(text: str) -> str:
    """A path segment as the client typed it: WSGI carries its raw bytes as latin-1 characters."""
    try:
        return text.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text


def _log(environ: dict[str, Any], message: str) -> None:
    stream = environ.get("wsgi.errors")
    if stream is not None:
        # A broken error stream must not turn one failure into two.
        with contextlib.suppress(Exception):
            stream.write(message)
            stream.flush()
