"""A second opinion on every request the parser sees: h11 (python-hyper/h11) as an independent judge.

The same bytes go to ``server.protocol.RequestParser`` and to an h11 server
connection. Request by request they must agree on accept or reject and, when
both accept, on method, target, version, header fields (names lower-cased,
values trimmed, in order) and body. The inputs are the generators of
tests/test_fuzz.py (any valid request, pipelined; mutated requests; framing
heads with every Content-Length / Transfer-Encoding spelling) and the fixed
attack lists of tests/test_hostile_input.py and tests/test_protocol_parser.py.

Where the two disagree on purpose, the disagreement is a named ``Difference``
below with its RFC reason and a test for the bytes it covers, so an
unexplained disagreement fails the test with both verdicts. Every named
difference must be met by at least one fixed input, so none lingers unused.
docs/protocol-conformance.md lists them for readers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import h11
import pytest
from harness import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import BASES, framing_head, mutated, valid_request
from test_hostile_input import HOSTILE_CALC, SMUGGLING

from server.protocol import ProtocolError, RequestParser

pytestmark = pytest.mark.usefixtures("both_parser_caches")

# (method, target, version, header fields, body) of one request, as both parsers can report it.
Parsed = tuple[str, str, str, tuple[tuple[str, str], ...], bytes]


@dataclass
class Verdict:
    """What one parser made of a byte stream: the requests it accepted, then why it stopped."""

    requests: list[Parsed]
    error: str | None  # the parser's own words for the rejection, None when it accepted everything
    status: int | None = None
    closed: bool = False  # h11 only: it ended the connection after its last request, leaving bytes unread


def _normalized(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """h11 lower-cases Transfer-Encoding values; transfer-coding names are case-insensitive (RFC 9112 7)."""
    return tuple((name, value.lower() if name == "transfer-encoding" else value) for name, value in fields)


def ours(data: bytes) -> Verdict:
    """Our parser as the server drives it: requests until one says the connection ends, then EOF."""
    parser = RequestParser()
    got: list[Parsed] = []
    try:
        parser.feed(data)
        while (request := parser.next_request()) is not None:
            got.append((request.method, request.target, request.version[5:], _normalized(tuple(request.headers)),
                        request.body))
            if not request.keep_alive:
                return Verdict(got, None)
        parser.feed_eof()
    except ProtocolError as error:
        return Verdict(got, error.detail, error.status)
    return Verdict(got, None)


def theirs(data: bytes) -> Verdict:
    """h11 as a server: each request answered with an empty 404 so it reads the next (h11 insists)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    got: list[Parsed] = []
    head: h11.Request | None = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                head, body = event, b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                fields = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers)
                got.append((head.method.decode("latin-1"), head.target.decode("latin-1"),
                            head.http_version.decode(), _normalized(fields), body))
                conn.send(h11.Response(status_code=404, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    # h11 closes after this request: Connection: close, HTTP/1.0 (h11 never keeps a
                    # 1.0 connection alive; RFC 9112 9.3 lets it), or a CONNECT/Upgrade it will not switch.
                    return Verdict(got, None, closed=True)
                conn.start_next_cycle()
            else:  # NEED_DATA cannot follow our EOF; ConnectionClosed: a clean end between requests
                return Verdict(got, None)
    except h11.RemoteProtocolError as error:
        return Verdict(got, str(error), error.error_status_hint)


# -- the deliberate differences ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """A named, reasoned disagreement: who rejects, why the RFC lets us, and which bytes it covers."""

    name: str
    rejected_by: str  # "ours": we are stricter than h11; "h11": h11 is stricter than the RFC asks; or "nobody"
    reason: str
    applies: Callable[[bytes, str], bool]  # (the whole input, the rejecting parser's message)


_BARE_LF = re.compile(rb"(?<!\r)\n")
_CTL_IN_LINE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FOLD = re.compile(rb"\r\n[ \t]")


def _ours_says(*phrases: str) -> Callable[[str], bool]:
    return lambda message: any(phrase in message for phrase in phrases)


DIFFERENCES = [
    Difference("bare-lf", "ours",
               "RFC 9112 2.2: a recipient MAY take a bare LF as a line end; we do not, since two parsers "
               "splitting lines differently is how requests are smuggled",
               lambda data, message: _BARE_LF.search(data) is not None),
    Difference("obs-fold", "ours",
               "RFC 9112 5.2: a server MUST either reject obs-fold with 400 or unfold it; we reject, h11 unfolds",
               lambda data, message: _FOLD.search(data) is not None and _ours_says("folding")(message)),
    Difference("control-character-in-field", "ours",
               "RFC 9110 5.5: a field value is VCHAR, obs-text, SP and HTAB; h11 lets other controls through",
               lambda data, message: _CTL_IN_LINE.search(data) is not None
               and _ours_says("control characters", "CRLF")(message)),
    Difference("host-syntax", "ours",
               "RFC 9112 3.2 and RFC 3986 3.2.2: a server MUST answer 400 to a Host (or absolute-form "
               "authority) that is not a valid host; h11 does not look inside Host",
               lambda data, message: _ours_says("Host header holds", "needs a valid host")(message)),
    Difference("request-target-form", "ours",
               "RFC 9112 3.2: a target is origin-form, absolute-form (http/https), authority-form (CONNECT "
               "only) or '*' (OPTIONS only), never with a fragment; h11 takes any visible ASCII",
               lambda data, message: _ours_says("request target must be", "fragment", "asterisk",
                                                "URL scheme")(message)),
    Difference("http-version", "ours",
               "RFC 9110 15.6.6: a server answers 505 to a major version it does not support; h11 takes any "
               "digit.digit",
               lambda data, message: _ours_says("is not supported; use HTTP/1.1")(message)),
    Difference("connect", "ours",
               "RFC 9110 9.3.6: tunnels are optional; this server answers CONNECT with 501",
               lambda data, message: _ours_says("CONNECT")(message)),
    Difference("expectation", "ours",
               "RFC 9110 10.1.1: a server MAY answer 417 to an expectation other than 100-continue",
               lambda data, message: _ours_says("unsupported expectation")(message)),
    Difference("content-length-list", "ours",
               "RFC 9110 8.6 and RFC 9112 6.3: a repeated or listed Content-Length MAY be accepted when all "
               "values agree, or rejected; we reject, h11 accepts identical values",
               lambda data, message: _ours_says("more than one Content-Length", "Content-Length must be decimal")(
                   message)),
    Difference("repeated-singleton-field", "ours",
               "RFC 9110 5.3: a field defined with a single value (Host, Content-Type, Authorization, ...) cannot "
               "be combined from two lines; we answer 400 to a repeat as nginx does for several, h11 keeps both",
               lambda data, message: _ours_says("more than one Host", "it takes a single value")(message)),
    Difference("forbidden-trailer-field", "ours",
               "RFC 9110 6.5.1: fields that frame, route or describe the content are not to be sent in a "
               "trailer section; we answer 400 rather than drop them unseen, h11 accepts any trailer",
               lambda data, message: _ours_says("is not allowed in a chunked trailer")(message)),
    Difference("content-length-with-chunked", "ours",
               "RFC 9112 6.1: a server MAY reject a request with both Content-Length and Transfer-Encoding; "
               "we do (the classic smuggling shape), h11 lets chunked win",
               lambda data, message: _ours_says("must not both be sent")(message)),
    Difference("chunked-in-http10", "ours",
               "RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request MUST be treated as faulty framing; we "
               "answer it with 400 like any faulty framing (RFC 9112 6.3), h11 reads it as chunked",
               lambda data, message: _ours_says("not allowed in an HTTP/1.0 request")(message)),
    Difference("chunk-line-grammar", "ours",
               "RFC 9112 7.1 and 7.1.1: a chunk size line is hex digits and token[=token/quoted-string] "
               "extensions; h11 takes anything after ';' and trailing whitespace",
               lambda data, message: _ours_says("invalid chunk size line")(message)),
    Difference("size-limits", "ours",
               "RFC 9112 3, RFC 9110 15.5.14 and 15.5.15, RFC 6585 5: a server sets its own limits on the "
               "request line, the header block and the body and answers 414, 431 or 413 beyond them; h11 limits "
               "only an incomplete head (16 KiB)",
               lambda data, message: _ours_says("longer than", "larger than", "more than 100 header",
                                                "too many or too large")(message)),
    Difference("http10-keep-alive", "nobody",
               "RFC 9112 9.3 and Appendix C.2.2: an HTTP/1.0 connection persists only if both sides opt in; "
               "h11 never does, we do when the client sends Connection: keep-alive, so what follows is not "
               "compared (judge() recognises this case by h11 closing, not by a message)",
               lambda data, message: False),
    Difference("leading-empty-lines", "h11",
               "RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line; h11 rejects "
               "it (its message names exactly that case), and takes a lone CR left at EOF for a broken request "
               "line where we see no request begun",
               lambda data, message: message == "no request line received"
               or (message.startswith("illegal request line") and data.endswith(b"\r"))),
    Difference("bws-in-chunk-extension", "h11",
               "RFC 9112 7.1.1: chunk-ext allows BWS around ';' and '='; h11 rejects the whitespace",
               lambda data, message: message.startswith("illegal chunk header")
               and re.search(r"[ \t][;=]|[;=][ \t]", message) is not None),
    Difference("empty-transfer-coding-element", "h11",
               "RFC 9110 5.6.1: a recipient MUST accept and ignore empty list elements ('chunked,'); h11 rejects",
               lambda data, message: message == "Only Transfer-Encoding: chunked is supported"
               and re.search(rb"(?i)transfer-encoding:[ \t]*(,[ \t]*)*chunked[ \t]*(,[ \t]*)*\r\n", data)
               is not None and re.search(rb"(?i)transfer-encoding:[^\r\n]*,", data) is not None),
]


def judge(data: bytes) -> str | None:
    """None when both parsers agree on these bytes, else the name of the difference that explains why not.

    Fails with both verdicts when the disagreement is not one of the named differences.
    """
    a, b = ours(data), theirs(data)
    for index in range(max(len(a.requests), len(b.requests)) + 1):
        mine = a.requests[index] if index < len(a.requests) else None
        other = b.requests[index] if index < len(b.requests) else None
        if mine is not None and other is not None:
            assert mine == other, f"both accept request {index} of {data[:600]!r} but read it differently"
            continue
        if mine is None and other is None and (a.error is None) == (b.error is None):
            return None  # both rejected here, or both reached the end
        if other is None and b.closed:
            # h11 ended the connection after the request before; we read on, as the client asked.
            assert index > 0 and b.requests[-1][2] == "1.0", f"h11 closed early on {data[:600]!r}"
            return "http10-keep-alive"
        if mine is None and a.error is not None:
            rejected_by, message = "ours", a.error
        elif other is None and b.error is not None:
            rejected_by, message = "h11", b.error
        else:
            _fail(data, a, b)  # one side ended cleanly where the other read one more request
        for difference in DIFFERENCES:
            if difference.rejected_by == rejected_by and difference.applies(data, message):
                return difference.name
        _fail(data, a, b)
    return None


def _fail(data: bytes, a: Verdict, b: Verdict) -> str:
    raise AssertionError(f"unexplained disagreement on {data[:600]!r}:\n  ours: {str(a.requests)[:600]} then "
                         f"{a.status} {a.error!r}\n  h11:  {str(b.requests)[:600]} then {b.status} {b.error!r}")


# -- fixed inputs: the attack lists other tests already keep ----------------------------------------------------

FIXED = [pytest.param(data, id=name) for name, data, _ in SMUGGLING + HOSTILE_CALC] + [
    pytest.param(data, id=f"base-{i}") for i, data in enumerate(BASES)]
# Inputs that show each named difference at least once (most of them also occur in the lists above).
EXAMPLES = {
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n",
    "control-character-in-field": b"GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n",
    "host-syntax": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "request-target-form": b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "http-version": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "connect": b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    "expectation": b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n",
    "content-length-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    "repeated-singleton-field": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\nContent-Type: a/b\r\n\r\n",
    "forbidden-trailer-field": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
                               b"Content-Length: 1\r\n\r\n",
    "content-length-with-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked-in-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-line-grammar": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a b\r\nx\r\n0\r\n\r\n",
    "size-limits": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "http10-keep-alive": b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    "leading-empty-lines": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "bws-in-chunk-extension": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"1 ; a=b\r\nx\r\n0\r\n\r\n",
    "empty-transfer-coding-element": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("data", FIXED)
def test_fixed_attacks_get_the_same_verdict_from_h11_or_a_named_difference(data):
    judge(data)


@pytest.mark.parametrize(("name", "data"), EXAMPLES.items(), ids=list(EXAMPLES))
def test_each_named_difference_is_real_and_explains_its_example(name, data):
    assert judge(data) == name


def test_every_difference_has_an_example_and_is_documented():
    assert sorted(EXAMPLES) == sorted(d.name for d in DIFFERENCES)
    page = (ROOT / "docs" / "protocol-conformance.md").read_text()
    for difference in DIFFERENCES:
        assert f"`{difference.name}`" in page, difference.name


# -- generated inputs ---------------------------------------------------------------------------------------------

ORACLE = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@settings(ORACLE, max_examples=120)  # the valid-request generator is the slow one to draw from
@given(requests=st.lists(valid_request(), min_size=1, max_size=4))
def test_generated_valid_requests_read_the_same_by_h11(requests):
    """Valid requests, pipelined: h11 reads each the same, or stops for one of the named reasons."""
    judge(b"".join(raw for raw, _ in requests))


@ORACLE
@given(data=mutated())
def test_mutated_requests_get_the_same_verdict_from_h11(data):
    judge(data)


@ORACLE
@given(head=framing_head(), body=st.sampled_from([b"", b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"hello"]),
       after=st.sampled_from([b"", b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"]))
def test_framing_headers_get_the_same_verdict_from_h11(head, body, after):
    judge(head[0] + body + after)
