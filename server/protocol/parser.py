"""Incremental HTTP/1.1 request parser (RFC 9112), strict where leniency enables smuggling.

Feed it bytes in any split; ask it for complete requests. It keeps no socket
and no clock, so the same bytes always give the same result however they
arrive. Everything that frames the message (line endings, Content-Length,
Transfer-Encoding, chunk sizes) is checked to the letter, because a proxy and
this server reading one byte stream differently is how requests get smuggled.
"""

from __future__ import annotations

import enum
import re
import sys

from .body import BodyBuffer, SpillFactory
from .errors import ProtocolError, field_error, request_line_error
from .events import Request
from .facts import FIELD, NO_FIELDS, read_block
from .facts import HOST_TEXT as _HOST_TEXT
from .grammar import TCHAR, TOKEN
from .header_cache import BlockMemo, HeaderCache
from .limits import Limits

# Over the decoded head; includes the line's CRLF so the match ends where the headers start.
# The target is visible ASCII only (RFC 9112 3.2, RFC 3986 2): other octets must be percent-encoded.
_REQUEST_LINE_TEXT = re.compile(r"(" + TCHAR.decode() + r"+) ([!-~]+) HTTP/([0-9])\.([0-9])\r\n")
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*" + TCHAR + rb"+"
    rb"(?:[ \t]*=[ \t]*(?:" + TCHAR + rb"+|\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t -~\x80-\xff])*\"))?)*"
)
# Possessive, as the field patterns are (facts.py): the authority and the path may split a run of
# characters either way, which made a 8 KiB target ending in '#' cost seconds.
_ABSOLUTE_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*+)://([^/?#]*+)([^?#]*+)(?:\?([^#]*+))?")
_BARE_EOL = re.compile(rb"\r(?!\n|\Z)|(?<!\r)\n")
# Fields a chunked body's trailer section must not carry (RFC 9110 6.5.1): their meaning is needed
# before the content (framing, routing, authentication, request modifiers, the content's format and
# handling), so a trailer holding one is answered 400 rather than dropped in silence.
_FORBIDDEN_TRAILERS = frozenset(name.encode() for name in {
    "transfer-encoding", "content-length", "trailer", "host", "connection", "keep-alive", "upgrade",
    "proxy-connection", "te", "expect", "max-forwards", "cache-control", "pragma", "range", "if-match",
    "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "authorization",
    "proxy-authorization", "cookie", "content-type", "content-encoding", "content-range",
    "content-location", "content-language"})
_KNOWN_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "compress", "x-compress", "identity"})


class Phase(enum.Enum):
    """Where the parser is within the next request; the transport picks its timeout from this."""

    IDLE = "idle"  # nothing of a next request received yet
    HEAD = "head"  # part of a request head received
    BODY = "body"  # head complete, body still arriving


class _State(enum.Enum):
    HEAD = 0
    LENGTH_BODY = 1
    CHUNK_SIZE = 2
    CHUNK_DATA = 3
    CHUNK_DATA_END = 4
    TRAILERS = 5


_HEAD = _State.HEAD  # module constants: an enum attribute lookup on the hot path costs more
_LENGTH_BODY = _State.LENGTH_BODY
_RUN_CHUNK = 64  # chunks up to this size that repeat their size line are read as a run (_read_chunk_run)


class RequestParser:
    """Turns a byte stream into ``Request`` objects, one complete request at a time."""

    __slots__ = (
        "_body",
        "_buf",
        "_checked",
        "_continue_due",
        "_empty_lines",
        "_in_memory",
        "_last_eol",
        "_limits",
        "_line_end",
        "_memo",
        "_pending",
        "_remaining",
        "_run_line",
        "_run_size",
        "_scan_from",
        "_spill",
        "_state",
        "_trailer_bytes",
        "_trailer_count",
    )

    def __init__(self, limits: Limits | None = None, cache: HeaderCache | None = None,
                 spill: SpillFactory | None = None) -> None:
        """``cache``: the server's ``HeaderCache`` (made with these ``limits``); without it every block is
        read in full, with the same result (header_cache.py).

        ``spill`` opens the anonymous file a body larger than ``limits.max_body_in_memory`` moves to
        (body.py); without it bodies stay in memory.
        """
        self._limits = limits = limits or Limits()
        self._spill = spill
        # A body that came whole with its head is copied out at once when it may stay in memory.
        self._in_memory = limits.max_body_in_memory if spill is not None else sys.maxsize
        if cache is not None and cache.limits is not limits and cache.limits != limits:
            raise ValueError("a HeaderCache serves parsers with the limits it was made with")
        self._memo: BlockMemo | None = None if cache is None else BlockMemo(cache)
        self._buf = bytearray()
        # While a head (or a chunk-size or trailer line) is incomplete, what the buffer was already
        # searched for: each arrival is checked from where the last one stopped, so a client that
        # drips its head a byte at a time costs CPU in proportion to the bytes it sends, not their square.
        self._scan_from = 0  # where the search for the end of the head (or of a body line) resumes
        self._checked = 0  # bytes at the buffer's start already checked for bare CR/LF and line lengths
        self._line_end = -1  # where the request line ends, once its CRLF has come
        self._last_eol = -1  # where the last CRLF of the incomplete head starts
        self._state = _State.HEAD
        self._pending: Request | None = None
        self._body: BodyBuffer | None = None  # made for the first body that arrives in pieces
        self._remaining = 0
        # The last chunk-size line (CRLF included) and its size: chunks that repeat it are read as a run.
        self._run_line = b""
        self._run_size = 0
        self._continue_due = False
        self._empty_lines = 0
        self._trailer_bytes = 0
        self._trailer_count = 0

    # -- input -----------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        """The peer closed its side; a half-received request is an error, an idle stream is not."""
        if self.phase is not Phase.IDLE:
            where = "head" if self._state is _State.HEAD else "body"
            raise ProtocolError(400, f"connection closed before the request {where} was complete")

    # -- state -----------------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        if self._state is _State.HEAD:
            buf = self._buf
            # After next_request only a lone CR can start the buffer; strip (a copy) only then.
            if not buf or (buf[0] in b"\r\n" and not buf.strip(b"\r\n")):
                return Phase.IDLE
            return Phase.HEAD
        return Phase.BODY

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (pipelined requests, partial heads)."""
        return len(self._buf)

    def take_continue(self) -> bool:
        """True once when the client asked for ``100 Continue`` and its body is still to come."""
        if self._continue_due and self._state is not _State.HEAD:
            self._continue_due = False
            return True
        return False

    # -- parsing ---------------------------------------------------------------------------------------

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive.

        Raises ProtocolError for anything malformed; the parser must not be
        used after that, the stream has lost its framing.
        """
        if self._state is not _HEAD:
            return self._next_body()
        buf = self._buf
        if not buf:
            return None  # the usual state right after a request was answered
        if buf[0] == 13:  # CR: RFC 9112 2.2 tolerates a few empty lines between requests
            self._skip_empty_lines()
            if not buf:
                return None
        end = buf.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            self._check_incomplete_head()
            self._scan_from = max(0, len(buf) - 3)
            return None
        if self._checked:
            self._checked = 0
            self._line_end = self._last_eol = -1
        if end + 4 == len(buf):  # the usual case: the buffer holds exactly this head
            text = buf.decode("latin-1")
            buf.clear()
        else:
            text = buf[: end + 4].decode("latin-1")
            del buf[: end + 4]
        self._scan_from = 0
        self._empty_lines = 0
        if end > self._limits.max_headers_total:
            raise ProtocolError(431, f"request head is larger than {self._limits.max_headers_total} bytes")
        request = self._interpret(text)
        if self._state is _HEAD:
            return request
        remaining = self._remaining
        if self._state is _LENGTH_BODY and len(buf) >= remaining and remaining <= self._in_memory:
            # the whole body came with the head: one copy, none of the incremental bookkeeping
            if len(buf) == remaining:
                request.body = bytes(buf)
                buf.clear()
            else:
                request.body = bytes(buf[:remaining])
                del buf[:remaining]
            self._state = _HEAD
            self._continue_due = False
            return request
        self._pending = request
        if self._body is None:
            self._body = BodyBuffer(self._limits.max_body_in_memory, self._spill)
        return self._next_body()

    def _next_body(self) -> Request | None:
        """The pending request once its body is complete."""
        request = self._pending
        assert request is not None
        if self._state is _LENGTH_BODY:
            if not self._read_length_body():
                return None
        elif not self._read_chunked_body():
            return None
        assert self._body is not None
        request.body, request.body_file = self._body.finish()
        self._state = _HEAD
        self._pending = None
        self._continue_due = False
        return request

    def _skip_empty_lines(self) -> None:
        buf = self._buf
        while buf[:2] == b"\r\n":
            del buf[:2]
            self._empty_lines += 1
            if self._empty_lines > self._limits.max_leading_empty_lines:
                raise ProtocolError(400, "too many empty lines before the request line")
        self._scan_from = self._checked = 0  # the buffer's start moved: check it from the start
        self._line_end = self._last_eol = -1

    def _check_incomplete_head(self) -> None:
        """Reject early what can never become a valid head, instead of waiting for a timeout.

        Only the bytes that came since the last call are searched (and the one before them: a CR
        that ended the last arrival is judged by the byte after it), so the cost of a head is
        linear in its size however finely it is split.
        """
        buf = self._buf
        limits = self._limits
        size = len(buf)
        resume = self._checked - 1 if self._checked else 0
        line_end = self._line_end
        if line_end < 0:
            line_end = self._line_end = buf.find(b"\r\n", resume)
        if (line_end < 0 and size > limits.max_request_line) or line_end > limits.max_request_line:
            raise ProtocolError(414, f"request line is longer than {limits.max_request_line} bytes")
        if size > limits.max_headers_total:
            raise ProtocolError(431, f"request head is larger than {limits.max_headers_total} bytes")
        if _BARE_EOL.search(buf, resume):  # the look-behind sees the byte before ``resume`` too
            raise ProtocolError(400, "lines must end with CRLF; a bare CR or LF was received")
        last_eol = buf.rfind(b"\r\n", resume)
        if last_eol < 0:
            last_eol = self._last_eol
        else:
            self._last_eol = last_eol
        if line_end >= 0 and size - last_eol - 2 > limits.max_header_size:
            raise ProtocolError(431, f"a header field is longer than {limits.max_header_size} bytes")
        self._checked = size

    def _interpret(self, text: str) -> Request:
        """A decoded head, ending in its empty line, into a Request; the one place framing is decided."""
        limits = self._limits
        match = _REQUEST_LINE_TEXT.match(text)
        if match is None or match.end() - 2 > limits.max_request_line:
            line_end = text.find("\r\n")
            if line_end > limits.max_request_line:
                raise ProtocolError(414, f"request line is longer than {limits.max_request_line} bytes")
            raise request_line_error(text[:line_end].encode("latin-1"))
        method, target, major, minor = match.groups()
        if major != "1":
            raise ProtocolError(505, f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")
        http11 = minor != "0"
        block = text[match.end():-2]
        memo = self._memo
        if not block:
            facts = NO_FIELDS
        elif memo is None:
            facts = read_block(block, limits)
        elif block == memo.last_block:  # a keep-alive client's usual block: the memo's first layer, without a call
            facts = memo.last_facts
        else:
            facts = memo.facts(block)
        headers = facts.fields
        framing = facts.framing
        host = framing.host
        host_count = framing.host_count
        expect_continue = framing.expect_continue and http11

        if host_count > 1:
            raise ProtocolError(400, "more than one Host header")
        if http11 and host_count == 0:
            raise ProtocolError(400, "HTTP/1.1 requests must carry a Host header")

        if method == "CONNECT":
            raise ProtocolError(501, "CONNECT tunnels are not supported by this server")
        scheme: str | None = None
        if target[0] == "/":
            path, _, query = target.partition("?")
            if "#" in target:
                raise ProtocolError(400, "a request target must not contain a fragment (#)")
        elif target == "*":
            if method != "OPTIONS":
                raise ProtocolError(400, "the asterisk target '*' is only allowed with OPTIONS")
            path, query = "*", ""
        else:
            absolute = _ABSOLUTE_TEXT.fullmatch(target)
            if absolute is None:
                raise ProtocolError(400, "request target must be a path starting with '/' or an absolute http URL")
            scheme, authority, path, query = absolute.groups()
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise ProtocolError(400, f"unsupported URL scheme {scheme!r} in request target")
            if not authority or "@" in authority or not _HOST_TEXT.fullmatch(authority):
                raise ProtocolError(400, "absolute-form target needs a valid host")
            host = authority  # RFC 9112 3.2.2: the target's authority wins over Host
            path = path or "/"
            query = query or ""

        chunked = False
        length = 0
        codings = framing.codings
        length_count = framing.length_count
        if codings is not None:
            if not http11:
                raise ProtocolError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
            if length_count:
                raise ProtocolError(400, "Content-Length and Transfer-Encoding must not both be sent")
            _check_codings([c for c in codings if c])
            chunked = True
        elif length_count:
            if length_count > 1:
                raise ProtocolError(400, "more than one Content-Length header")
            raw_length = framing.raw_length
            if not raw_length.isdigit() or not raw_length.isascii():
                raise ProtocolError(400, f"Content-Length must be decimal digits, got {raw_length[:40]!r}")
            # Leading zeros add nothing (RFC 9110 8.6: 1*DIGIT); only the significant digits are bounded.
            length = int(raw_length) if len(raw_length.lstrip("0")) <= 18 else limits.max_body_size + 1
            if length > limits.max_body_size:
                raise ProtocolError(413, f"request body is larger than {limits.max_body_size} bytes")

        keep_alive = not framing.close if http11 else (framing.keep_alive and not framing.close)
        request = Request(method, target, path, query, "HTTP/1.1" if http11 else "HTTP/1.0", http11, headers,
                          host, scheme, keep_alive, expect_continue, chunked)
        if chunked:
            self._state = _State.CHUNK_SIZE
            self._trailer_bytes = self._trailer_count = 0
            self._continue_due = expect_continue
        elif length:
            self._state = _LENGTH_BODY
            self._remaining = length
            self._continue_due = expect_continue
        return request

    def close(self) -> None:
        """The connection is gone: let go of a half-received body (and its file)."""
        if self._body is not None:
            self._body.discard()

    def _read_length_body(self) -> bool:
        buf = self._buf
        take = min(self._remaining, len(buf))
        if take:
            assert self._body is not None
            if take == len(buf):
                self._body.write(bytes(buf))
                buf.clear()
            else:
                self._body.write(buf[:take])
                del buf[:take]
            self._remaining -= take
        return self._remaining == 0

    def _read_chunk_run(self) -> None:
        """Take as many whole chunks as follow with the same size line as the last, in a few C-level passes.

        A client that sends a body in tiny chunks (one byte each: six bytes on the wire per byte of body)
        would otherwise cost a round of the chunk loop in Python per chunk. Chunks of ``k`` bytes with
        the same size line ``L`` repeat with a period of ``len(L) + k + 2`` bytes, so one strided slice
        per position of ``L`` and of the CRLF after the data checks that position in every chunk at
        once (the run ends at the first chunk that differs anywhere), and ``k`` strided slices gather
        the data. The line was checked when it came; a chunk that differs is read the usual way.
        """
        buf = self._buf
        line, size = self._run_line, self._run_size
        period = len(line) + size + 2
        count = len(buf) // period
        body = self._body
        assert body is not None
        count = min(count, (self._limits.max_body_size - body.size) // size)  # the usual path says 413
        if count < 2:
            return
        frame = line + b"\0" * size + b"\r\n"
        for offset in (*range(len(line)), len(line) + size, len(line) + size + 1):
            column = buf[offset:count * period:period]
            byte = frame[offset:offset + 1]
            if column != byte * count:  # a memcmp; only where the run ends, the slower count of equal bytes
                count = len(column) - len(column.lstrip(byte))
                if count < 2:
                    return
        end = count * period
        start = len(line)
        if size == 1:
            data = buf[start:end:period]
        else:
            data = bytearray(count * size)
            for i in range(size):
                data[i::size] = buf[start + i:end:period]
        body.write(data)
        del buf[:end]
        self._scan_from = 0  # the buffer's start moved: a line search starts over

    def _read_chunked_body(self) -> bool:
        buf = self._buf
        limits = self._limits
        while True:
            state = self._state
            if state is _State.CHUNK_SIZE:
                if self._run_size and buf.startswith(self._run_line):
                    self._read_chunk_run()
                line = self._take_line(limits.max_chunk_ext, 400, "chunk size line")
                if line is None:
                    return False
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise ProtocolError(400, f"invalid chunk size line {line[:40].decode('latin-1')!r}; "
                                             "expected hex digits and optional extensions")
                size = int(match.group(1), 16)
                body = self._body
                assert body is not None
                if body.size + size > limits.max_body_size:
                    raise ProtocolError(413, f"request body is larger than {limits.max_body_size} bytes")
                if size == 0:
                    self._state = _State.TRAILERS
                else:
                    self._remaining = size
                    self._state = _State.CHUNK_DATA
                    if size <= _RUN_CHUNK:
                        self._run_line, self._run_size = line + b"\r\n", size
            elif state is _State.CHUNK_DATA:
                if not self._read_length_body():
                    return False
                self._state = _State.CHUNK_DATA_END
            elif state is _State.CHUNK_DATA_END:
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise ProtocolError(400, "chunk data must be followed by CRLF")
                    return False
                if buf[:2] != b"\r\n":
                    raise ProtocolError(400, "chunk data must be followed by CRLF (chunk longer than its size?)")
                del buf[:2]
                self._state = _State.CHUNK_SIZE
            else:  # trailers: validated for framing, then dropped
                line = self._take_line(limits.max_header_size, 431, "a trailer field")
                if line is None:
                    return False
                if not line:
                    return True
                self._trailer_count += 1
                self._trailer_bytes += len(line)
                if self._trailer_count > limits.max_header_count or self._trailer_bytes > limits.max_headers_total:
                    raise ProtocolError(431, "too many or too large trailer fields")
                field = FIELD.fullmatch(line)
                if field is None:
                    raise field_error(line, kind="trailer")
                name = field.group(1).lower()
                if name in _FORBIDDEN_TRAILERS:
                    raise ProtocolError(400, f"{name.decode('latin-1')} is not allowed in a chunked trailer: it "
                                             "must come in the header section, before the body (RFC 9110 6.5.1)")

    def _take_line(self, limit: int, status: int, what: str) -> bytes | None:
        """One CRLF-ended line off the buffer (without its CRLF), or None until it has all arrived."""
        buf = self._buf
        resume = self._scan_from  # searched up to here by the last call (an unfinished line)
        end = buf.find(b"\r\n", resume)
        if end < 0:
            size = len(buf)
            if size > limit:
                raise ProtocolError(status, f"{what} is longer than {limit} bytes")
            if buf.find(b"\n", resume) >= 0 or buf.find(b"\r", resume, size - 1) >= 0:
                raise ProtocolError(400, f"{what} must end with CRLF")
            self._scan_from = max(0, size - 1)  # a CR at the end may yet be followed by its LF
            return None
        if end > limit:
            raise ProtocolError(status, f"{what} is longer than {limit} bytes")
        line = bytes(buf[:end])
        del buf[: end + 2]
        self._scan_from = 0
        return line


def _check_codings(codings: list[str]) -> None:
    """RFC 9112 6.1 and 6.3: chunked must be last and only once; other codings we cannot decode."""
    if not codings:
        raise ProtocolError(400, "empty Transfer-Encoding header")
    for coding in codings:
        name = coding.split(";", 1)[0].strip()
        if not TOKEN.fullmatch(name.encode("latin-1")):
            raise ProtocolError(400, f"invalid transfer coding {coding!r}")
    if any(c.split(";", 1)[0].strip() == "chunked" and c != "chunked" for c in codings):
        raise ProtocolError(400, "the chunked transfer coding takes no parameters")
    if codings[-1] != "chunked":
        last = codings[-1].split(";", 1)[0].strip()
        if last in _KNOWN_CODINGS:
            raise ProtocolError(400, "the final transfer coding of a request must be chunked")
        raise ProtocolError(501, f"transfer coding {last!r} is not implemented")
    if codings.count("chunked") > 1:
        raise ProtocolError(400, "chunked must not be applied more than once")
    for coding in codings[:-1]:
        raise ProtocolError(501, f"transfer coding {coding.split(';', 1)[0].strip()!r} is not implemented")
