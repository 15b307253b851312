"""What a request's header block says, apart from its request line: ``HeaderFacts``, and how it is read.

A block's facts depend on the block alone (and the limits it was read under), never on the request
line or the connection, so they can be remembered and reused (header_cache.py). The checks that
need the request line (HTTP/1.0, CONNECT, the target's form, a Host is required) are the parser's,
and run on every request.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ProtocolError, field_error
from .grammar import TCHAR, VALUE_CHAR
from .limits import Limits

# Fields that decide how the message is framed or routed; a changed value means the facts change.
FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
# Request fields that RFC 9110 defines as one value, not a comma-separated list, so a second line
# cannot be combined with the first (RFC 9110 5.3): two of them means two parsers may each pick a
# different one. Host and Content-Length are counted with the framing fields; these are the rest of
# RFC 9110's singleton request fields (nginx refuses a repeated Host, Content-Length, Authorization,
# If-Modified-Since, If-Unmodified-Since, If-Range, Transfer-Encoding; h11 a differing Content-Length).
# Cookie is left out on purpose: it is joined with "; " (RFC 6265 5.4), as the environ does.
SINGLETON_FIELDS = frozenset({
    "content-type", "authorization", "proxy-authorization", "content-location", "content-range",
    "if-modified-since", "if-unmodified-since", "if-range", "range", "max-forwards", "date", "from",
    "referer", "user-agent"})
_CHECKED_FIELDS = FRAMING_FIELDS | SINGLETON_FIELDS
_TOKEN_TEXT = re.compile(TCHAR.decode() + "+")
# A field value may hold HTAB, SP, visible ASCII and obs-text; never other controls (VALUE_CHAR).
# Every run is possessive (*+): the whitespace run and the value can both take spaces, and with
# backtracking a long run of them before a bad octet costs time quadratic in its length (0.8 s of
# CPU for one 8 KiB line). A match never needs to give anything back, so possessive runs accept
# exactly the same lines and fail at once.
FIELD = re.compile(rb"(" + TCHAR + rb"++):[ \t]*+(" + VALUE_CHAR.encode() + rb"*+)")
# All header lines at once: one C-level pass instead of a regex call per line. A match starts
# only at the block's start or right after a CRLF and ends with a CRLF, so a line that is not a
# valid field in full (a bare CR or LF included) shows up as one match fewer than CRLFs.
# The value is taken greedily, trailing whitespace included (a lazy pattern costs twice as much),
# and trimmed afterwards only when the block has any.
_FIELDS = re.compile(r"(?:\A|(?<=\r\n))(" + TCHAR.decode() + r"++):[ \t]*+(" + VALUE_CHAR + r"*+)\r\n")
HOST_TEXT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]*")


class Framing:
    """What a header block says for framing and routing: the same for every block that differs from it
    only in the values of other fields (block_shape.py reuses it so). Immutable by type (``Final``),
    shared through the caches (header_cache.py) by every thread.
    """

    __slots__ = ("close", "codings", "expect_continue", "host", "host_count", "keep_alive", "length_count",
                 "raw_length")

    def __init__(self, host: str | None, host_count: int, length_count: int, raw_length: str,
                 codings: tuple[str, ...] | None, close: bool, keep_alive: bool, expect_continue: bool) -> None:
        self.host: Final = host  # the last Host value
        self.host_count: Final = host_count
        self.length_count: Final = length_count  # Content-Length lines
        self.raw_length: Final = raw_length  # the last Content-Length value, unchecked
        self.codings: Final = codings  # Transfer-Encoding's codings, lower-case, or None without the field
        self.close: Final = close  # Connection: close
        self.keep_alive: Final = keep_alive  # Connection: keep-alive
        self.expect_continue: Final = expect_continue  # Expect: 100-continue


class HeaderFacts:
    """A header block read: its fields, and what they mean for framing. Immutable by type, shared through the caches.

    Slotted classes rather than NamedTuples: reading two slots costs the parser about 200 instructions
    less per request than unpacking a NamedTuple (a tuple subclass takes the generic, iterator path).
    """

    __slots__ = ("fields", "framing")

    def __init__(self, fields: list[tuple[str, str]], framing: Framing) -> None:
        self.fields: Final = fields  # (lower-case name, trimmed value), in order; never changed once made
        self.framing: Final = framing


def read_line(line: str) -> tuple[str, str] | None:
    """One header line (no CRLF) as (lower-case name, trimmed value), or None when it is not plainly valid.

    A printable line holds no CR, LF or other control character (nor a tab or obs-text, which are
    valid: those lines give None too), so it is a valid field exactly when its name, up to the first
    colon, is a token. None sends the caller to the full pattern, which names the exact problem.
    """
    if not line.isprintable():
        return None
    name, colon, value = line.partition(":")
    if not colon or _TOKEN_TEXT.fullmatch(name) is None:
        return None
    return name.lower(), value.strip(" \t")


def read_block(block: str, limits: Limits) -> HeaderFacts:
    """A non-empty header block (its lines, each ending in CRLF) read in full, as ``limits`` allow it."""
    count = block.count("\r\n")
    if count > limits.max_header_count:
        raise ProtocolError(431, f"more than {limits.max_header_count} header fields")
    if len(block) > limits.max_header_size:
        _check_lines(block, limits)  # raises with the exact problem, or passes long-but-valid heads
    # The usual line settles with C-level string methods (read_line); anything else (a tab or
    # obs-text in a value, a name that is no token) takes the pattern, which names the exact problem.
    lines = block.split("\r\n")
    lines.pop()  # the block ends with CRLF: nothing after the last one
    fields = []
    for line in lines:
        field = read_line(line)
        if field is None:
            return field_facts(_fields_by_pattern(block, count, limits))
        fields.append(field)
    return field_facts(fields)


def _fields_by_pattern(block: str, count: int, limits: Limits) -> list[tuple[str, str]]:
    fields = _FIELDS.findall(block)
    if len(fields) != count:
        _check_lines(block, limits)  # raises with the exact problem
    if " \r\n" in block or "\t\r\n" in block:
        return [(name.lower(), value.rstrip(" \t")) for name, value in fields]
    return [(name.lower(), value) for name, value in fields]


def _check_lines(block: str, limits: Limits) -> None:
    max_field = limits.max_header_size
    for raw in block.encode("latin-1")[:-2].split(b"\r\n"):
        if len(raw) > max_field:
            raise ProtocolError(431, f"a header field is longer than {max_field} bytes")
        if FIELD.fullmatch(raw) is None:
            raise field_error(raw)


def field_facts(fields: list[tuple[str, str]]) -> HeaderFacts:
    """Pick out the framing fields; raises for a bad Host or Expect and a repeated singleton field."""
    host: str | None = None
    host_count = length_count = 0
    raw_length = ""
    codings: list[str] | None = None
    close = keep_alive_token = expect = False
    singletons: set[str] | None = None
    for name, value in fields:
        if name not in _CHECKED_FIELDS:
            continue
        if name in SINGLETON_FIELDS:
            if singletons is None:
                singletons = {name}
            elif name in singletons:
                raise ProtocolError(400, f"more than one {name} header; it takes a single value (RFC 9110 5.3)")
            else:
                singletons.add(name)
        elif name == "host":
            host_count += 1
            if not HOST_TEXT.fullmatch(value):
                raise ProtocolError(400, "Host header holds characters not allowed in a host name")
            host = value
        elif name == "content-length":
            length_count += 1
            raw_length = value
        elif name == "transfer-encoding":
            if codings is None:
                codings = []
            codings.extend(c.strip().lower() for c in value.split(","))
        elif name == "connection":
            for token in value.lower().split(","):
                token = token.strip()
                if token == "close":
                    close = True
                elif token == "keep-alive":
                    keep_alive_token = True
        elif name == "expect":
            if value.lower() != "100-continue":
                raise ProtocolError(417, f"unsupported expectation {value!r}; only 100-continue is known")
            expect = True
    return HeaderFacts(fields, Framing(host, host_count, length_count, raw_length,
                                       None if codings is None else tuple(codings), close, keep_alive_token, expect))


NO_FIELDS = field_facts([])
