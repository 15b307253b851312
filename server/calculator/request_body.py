"""The media-type check and bounded reading of a small request body from a WSGI environ.

Whatever the client declares, at most ``MAX_BODY_BYTES + 1`` bytes are ever read: a calculation
is a few dozen bytes, and the app must never buffer an unbounded stream into memory.
"""

from __future__ import annotations

from typing import Any, Protocol

from .problems import Problem


class BodyStream(Protocol):
    """What this module uses of ``wsgi.input`` (PEP 3333): ``read(size)``, which may return fewer bytes."""

    def read(self, size: int, /) -> bytes: ...


MAX_BODY_BYTES = 16 * 1024
_MAX_LENGTH_DIGITS = 12  # a longer Content-Length is far over the limit; never hand it to int()

# The spellings clients actually send, answered without parsing.
COMMON_JSON_TYPES = frozenset({
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=utf-8",
    "application/json; charset=UTF-8",
    "application/json;charset=UTF-8",
})


def require_json(environ: dict[str, Any]) -> None:
    """Accept application/json and application/*+json, with no charset or charset=utf-8; else 415."""
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type in COMMON_JSON_TYPES:
        return
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if not media_type:
        raise Problem("unsupported-media-type",
                      "The request has no Content-Type; send the JSON body with Content-Type: application/json.")
    kind, _, subtype = media_type.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise Problem("unsupported-media-type",
                      f"Content-Type {content_type[:100]!r} is not JSON; send the body as application/json.",
                      received=content_type[:100])
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise Problem("unsupported-media-type",
                          f"JSON must be UTF-8, but Content-Type says charset={value.strip()[:40]}; "
                          "send UTF-8 and say charset=utf-8 or nothing.",
                          received=content_type[:100])


def read_body(environ: dict[str, Any]) -> bytes:
    """The body, read per PEP 3333: exactly CONTENT_LENGTH bytes, or to EOF (bounded) when it is absent.

    A server that decoded a chunked body may leave CONTENT_LENGTH out and end ``wsgi.input`` at EOF.
    """
    stream: BodyStream = environ["wsgi.input"]
    length_text = environ.get("CONTENT_LENGTH", "")
    if not length_text:
        return _read_to_eof(stream)
    if not (length_text.isascii() and length_text.isdigit()):
        raise Problem("invalid-content-length",
                      f"Content-Length must be a whole number of bytes, got {length_text[:40]!r}.",
                      received=length_text[:40])
    if len(length_text) > _MAX_LENGTH_DIGITS or (length := int(length_text)) > MAX_BODY_BYTES:
        raise Problem("body-too-large",
                      f"The body is {length_text} bytes; POST /calc accepts at most {MAX_BODY_BYTES}.",
                      limit=MAX_BODY_BYTES)
    data = stream.read(length) if length else b""
    if len(data) == length or not data:  # the whole body in one read (the usual case), or none at all
        return data
    return _read_rest(stream, data, length)


def _read_rest(stream: BodyStream, data: bytes, length: int) -> bytes:
    # read(n) may legally return fewer bytes; a short body (early EOF) is parsed as what arrived.
    chunks = [data]
    remaining = length - len(data)
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_to_eof(stream: BodyStream) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(MAX_BODY_BYTES + 1 - total)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise Problem("body-too-large",
                          f"The body is more than {MAX_BODY_BYTES} bytes; POST /calc accepts at most {MAX_BODY_BYTES}.",
                          limit=MAX_BODY_BYTES)
