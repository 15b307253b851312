"""The request parser on its own: bytes in, requests or ProtocolError out. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import FirstBlocks, Limits, Phase, ProtocolError, RequestParser


def parse_all(data: bytes, limits: Limits | None = None) -> list:
    parser = RequestParser(limits)
    parser.feed(data)
    out = []
    while (request := parser.next_request()) is not None:
        out.append(request)
    return out


def parse_error(data: bytes, limits: Limits | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_all(data, limits)
    return info.value


def test_simple_get():
    (req,) = parse_all(b"GET /add/2/3?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n")
    assert (req.method, req.path, req.query, req.version) == ("GET", "/add/2/3", "x=1&y=%20", "HTTP/1.1")
    assert req.host == "example.com"
    assert req.headers == [("host", "example.com"), ("user-agent", "t")]
    assert req.keep_alive and not req.chunked and req.body == b""


def test_header_values_are_trimmed_and_names_lowercased():
    (req,) = parse_all(b"GET / HTTP/1.1\r\nHOST:   a  \r\nX-Thing:\tv 1\t\r\n\r\n")
    assert req.headers == [("host", "a"), ("x-thing", "v 1")]


@pytest.mark.parametrize(("version", "connection", "expected"), [
    ("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
    ("1.0", None, False), ("1.0", "keep-alive", True), ("1.0", "close", False),
])
def test_keep_alive_rules(version, connection, expected):
    extra = f"Connection: {connection}\r\n" if connection else ""
    (req,) = parse_all(f"GET / HTTP/{version}\r\nHost: a\r\n{extra}\r\n".encode())
    assert req.keep_alive is expected


def test_content_length_body_and_pipelining():
    data = (b"POST /calc HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = parse_all(data)
    assert first.body == b"hello" and second.path == "/second"


def test_chunked_body_with_extensions_and_trailers_dropped():
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;name=value;q=\"quoted \\\" x\"\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n")
    (req,) = parse_all(data)
    assert req.body == b"Wikipedia" and req.chunked
    assert ("x-trailer", "yes") not in req.headers


def test_absolute_form_target_wins_over_host():
    (req,) = parse_all(b"GET http://other.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (req.host, req.path, req.query, req.scheme) == ("other.example:8080", "/p", "q=1", "http")


def test_asterisk_form_only_for_options():
    (req,) = parse_all(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert req.path == "*"
    assert parse_error(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").status == 400


def test_leading_empty_lines_tolerated():
    (req,) = parse_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert req.method == "GET"


def test_expect_continue_is_signalled_once_while_body_is_pending():
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert parser.next_request() is None
    assert parser.phase is Phase.BODY
    assert parser.take_continue() is True
    assert parser.take_continue() is False
    parser.feed(b"abc")
    assert parser.next_request().body == b"abc"
    assert parser.phase is Phase.IDLE


def test_phase_tracks_progress():
    parser = RequestParser()
    assert parser.phase is Phase.IDLE
    parser.feed(b"GET / HT")
    assert parser.next_request() is None and parser.phase is Phase.HEAD
    parser.feed(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_request() is not None and parser.phase is Phase.IDLE


def test_eof_mid_request_is_an_error_but_eof_between_requests_is_not():
    parser = RequestParser()
    parser.feed_eof()
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    parser.next_request()
    with pytest.raises(ProtocolError) as info:
        parser.feed_eof()
    assert info.value.status == 400


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", 400),
])
def test_malformed_requests_are_rejected_with_the_right_status(data, status):
    error = parse_error(data)
    assert error.status == status, error.detail
    assert error.detail


@pytest.mark.parametrize("target", [b"/\xc3\xa0", b"/add/\xff/1", b"/a?q=\x80", b"http://a.example/\xe9"])
def test_raw_non_ascii_octets_in_the_target_are_rejected_with_a_clear_400(target):
    """RFC 9112 3.2 and RFC 3986 2: a target is ASCII; anything else is percent-encoded by the client."""
    for version in (b"HTTP/1.1\r\nHost: a", b"HTTP/1.0"):
        error = parse_error(b"GET " + target + b" " + version + b"\r\n\r\n")
        assert error.status == 400 and "ASCII" in error.detail and "percent-encode" in error.detail


def test_limits():
    limits = Limits(max_request_line=100, max_header_count=3, max_header_size=50, max_headers_total=200,
                    max_body_size=10, max_chunk_ext=20)
    assert parse_error(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n", limits).status == 414
    assert parse_error(b"GET /" + b"a" * 200, limits).status == 414  # before the line even ends
    many = b"".join(b"X%d: y\r\n" % i for i in range(4))
    assert parse_error(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", limits).status == 431
    assert parse_error(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 60 + b"\r\n\r\n", limits).status == 431
    assert parse_error(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", limits).status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse_error(chunked + b"b\r\n", limits).status == 413
    assert parse_error(chunked + b"1;" + b"e" * 30 + b"\r\n", limits).status == 400


# -- properties ---------------------------------------------------------------------------------------

VALID = [
    b"GET /add/2/3 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    b"POST /calc HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    b'{"op":"add"} ',
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nT: v\r\n\r\n",
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\n",
]


def _describe(requests: list) -> list[tuple]:
    return [(r.method, r.target, r.version, r.headers, r.body, r.keep_alive) for r in requests]


@settings(max_examples=300, deadline=None)
@given(data=st.sampled_from(VALID), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_byte_split_parses_the_same(data, cuts):
    expected = _describe(parse_all(data))
    parser = RequestParser()
    got = []
    positions = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    start = 0
    for end in positions:
        parser.feed(data[start:end])
        start = end
        while (request := parser.next_request()) is not None:
            got.append(request)
    assert _describe(got) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data):
    parser = RequestParser(Limits(max_request_line=200, max_headers_total=400, max_body_size=100))
    try:
        parser.feed(data)
        while parser.next_request() is not None:
            pass
        parser.feed_eof()
    except ProtocolError as exc:
        assert 400 <= exc.status < 600


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(VALID), position=st.integers(min_value=0, max_value=300),
       byte=st.integers(min_value=0, max_value=255))
def test_mutated_valid_requests_only_raise_protocol_error(base, position, byte):
    data = bytearray(base)
    data[position % len(data)] = byte
    try:
        parse_all(bytes(data))
    except ProtocolError as exc:
        assert 400 <= exc.status < 600


# -- a connection's repeated header block is interpreted once -----------------------------------------------

_LINES = [b"GET / HTTP/1.1", b"POST /p HTTP/1.0", b"PUT /q?x=1 HTTP/1.1", b"OPTIONS * HTTP/1.1",
          b"CONNECT a:1 HTTP/1.1"]
_BLOCKS = [b"", b"Host: a\r\n", b"Host: a\r\nContent-Length: 3\r\n", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
           b"Host: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n", b"Host: a\r\nConnection: close\r\n",
           b"Host: a\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\n", b"Host: a\r\nHost: b\r\n",
           b"Host: a\r\nExpect: nothing\r\n", b"Host: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n"]


def _message(line: bytes, block: bytes) -> bytes:
    body = b""
    if b"Content-Length: 3" in block:
        body = b"abc"
    elif b"chunked" in block:
        body = b"3\r\nabc\r\n0\r\n\r\n"
    return line + b"\r\n" + block + b"\r\n" + body


def _outcome(parser: RequestParser, data: bytes):
    parser.feed(data)
    try:
        return parser.next_request()
    except ProtocolError as exc:
        return exc.status, exc.detail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_LINES), st.sampled_from(_BLOCKS)), min_size=1, max_size=12))
def test_one_parser_answers_like_a_fresh_parser_for_each_request(messages):
    """Whatever was remembered from the last block, each request comes out as a fresh parser would
    make it: the checks that depend on the request line (HTTP/1.0, CONNECT, '*') still run."""
    shared = RequestParser()
    for line, block in messages:
        data = _message(line, block)
        expected = _outcome(RequestParser(), data)
        assert _outcome(shared, data) == expected
        if not hasattr(expected, "method"):
            break  # after an error the stream has lost its framing: a parser is not used again


# Header lines a proxy might repeat or vary, valid or not (tab and obs-text in values, a bare CR, a
# name that is no token, whitespace before the colon, no colon, a control character).
_FIELD_LINES = [b"Host: a", b"X-Request-ID: 1", b"X-Request-ID: 2", b"X-Forwarded-For: 10.0.0.1",
                b"User-Agent: wrk  ", b"Accept:\t*/*", b"X-Note: caf\xe9", b"X-Bad: a\rb", b"Bad Name: x",
                b"Host : a", b"no colon here", b"X-Ctl: a\x01b", b"X-Empty:", b"Content-Length: 3",
                b"Connection: close", b"Host: b", b"Connection: keep-alive", b"Expect: 100-continue"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_FIELD_LINES), max_size=6), min_size=1, max_size=40))
def test_remembered_header_lines_change_nothing(blocks):
    """Lines a connection sent before are reused (a proxy changes only its request id), and a block as
    long as the last one is read by its changed lines alone; every request still comes out, or fails,
    exactly as a fresh parser makes it, across the memory's bound."""
    shared = RequestParser()
    for lines in blocks:
        data = _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in lines))
        expected = _outcome(RequestParser(), data)
        assert _outcome(shared, data) == expected
        if not hasattr(expected, "method"):
            break


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_LINES), st.lists(st.sampled_from(_FIELD_LINES), max_size=4)),
                min_size=1, max_size=40))
def test_blocks_that_began_other_connections_change_nothing(connections):
    """The parsers of one server share the header blocks that began their connections. Whatever other
    connections began with, valid or not, each new connection's first request, and a second one with
    the same block, comes out or fails exactly as a fresh parser makes it."""
    first_blocks = FirstBlocks()
    for line, lines in connections:
        block = b"".join(field + b"\r\n" for field in lines)
        parser = RequestParser(first_blocks=first_blocks)
        for data in (_message(line, block), _message(b"GET /again HTTP/1.1", block)):
            expected = _outcome(RequestParser(), data)
            assert _outcome(parser, data) == expected
            if not hasattr(expected, "method"):
                break


def test_a_connection_that_begins_like_another_takes_its_checked_block():
    first_blocks = FirstBlocks()
    data = b"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"
    one, two = RequestParser(first_blocks=first_blocks), RequestParser(first_blocks=first_blocks)
    first, second = _outcome(one, data), _outcome(two, data)
    assert first == second == _outcome(RequestParser(), data)
    assert second.headers is first.headers  # the fields the first connection's parser checked
    assert one._known_lines and not two._known_lines  # the second parser checked no line itself


def test_a_refused_block_is_not_shared_and_the_memo_is_bounded():
    first_blocks = FirstBlocks()
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n"
    for _ in range(2):
        assert _outcome(RequestParser(first_blocks=first_blocks), bad) == _outcome(RequestParser(), bad)
        assert len(first_blocks._facts) == 0
    for number in range(FirstBlocks.LIMIT * 2 + 3):
        data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %d\r\n\r\n" % number
        assert _outcome(RequestParser(first_blocks=first_blocks), data).headers[1] == ("x-request-id", str(number))
        assert 1 <= len(first_blocks._facts) <= FirstBlocks.LIMIT


_BASE_LINES = [b"Host: a", b"X-Request-ID: 1", b"User-Agent: wrk", b"X-Forwarded-For: 10.0.0.1"]


@pytest.mark.parametrize("changed", [*_FIELD_LINES, b"X-Long: " + b"a" * 8190, b"Transfer-Encoding: chunked"],
                         ids=lambda line: repr(line[:24]))
def test_a_block_like_the_last_one_is_checked_in_every_changed_line(changed):
    """A block with as many lines as the last one is read by its changed lines alone: whichever line
    changes, alone or with the one after it, the request comes out (or fails) as a fresh parser makes it."""
    for position in range(len(_BASE_LINES)):
        for also_next in (False, True):
            lines = list(_BASE_LINES)
            lines[position] = changed
            if also_next:
                lines[(position + 1) % len(lines)] = b"X-Request-ID: 2"
            shared = RequestParser()
            first = _outcome(shared, _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in _BASE_LINES)))
            assert hasattr(first, "method")
            data = _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in lines))
            assert _outcome(shared, data) == _outcome(RequestParser(), data), (position, also_next)


# What a proxy's varying lines may bring: the same name with values the field rule takes or refuses
# (padding, a tab, obs-text, controls, a bare CR or LF), the name in other letter case, a framing field.
_VARYING_LINES = [b"X-Request-ID: 7", b"X-Request-ID:  padded \t", b"X-Request-ID:\tx", b"X-Request-ID: caf\xe9",
                  b"X-Request-ID:", b"X-Request-ID: a\x01b", b"X-Request-ID: a\x7fb", b"X-Request-ID: a\rb",
                  b"X-Request-ID: a\nb", b"x-request-id: 7", b"X-Request-Id : 7", b"X-Forwarded-For: a\x00b",
                  b"X-Forwarded-For: " + b"1" * 8190, b"Content-Length: 3", b"Transfer-Encoding: chunked", b"Host: b",
                  b"Host: a b", b"Connection: close", b"Expect: 100-continue", b"X-Other: 1"]


@pytest.mark.parametrize("changed", _VARYING_LINES, ids=lambda line: repr(line[:24]))
def test_a_block_of_a_known_shape_is_checked_in_its_varying_lines(changed):
    """Once two blocks running changed the same lines (a proxy's request id and client address), the
    block's shape reads the next in one pass. Whatever then comes in any line, the request comes out (or
    fails) as a fresh parser makes it, and the requests after it too."""
    def block(number: int, position: int | None = None) -> bytes:
        lines = list(_BASE_LINES)
        lines[1] = b"X-Request-ID: %d" % number
        lines[3] = b"X-Forwarded-For: 10.0.0.%d" % number
        if position is not None:
            lines[position] = changed
        return b"".join(line + b"\r\n" for line in lines)

    for position in range(len(_BASE_LINES)):
        shared = RequestParser()
        for number in range(3):
            assert hasattr(_outcome(shared, _message(b"GET / HTTP/1.1", block(number))), "method")
        assert shared._shape is not None  # the shape is what reads the next block
        data = _message(b"GET / HTTP/1.1", block(9, position))
        expected = _outcome(RequestParser(), data)
        assert _outcome(shared, data) == expected, position
        if hasattr(expected, "method"):
            data = _message(b"GET / HTTP/1.1", block(10))
            assert _outcome(shared, data) == _outcome(RequestParser(), data), position


@pytest.mark.parametrize("varying", [1, 2, 3])
def test_a_shaped_block_gives_the_new_values(varying):
    """One, two or three lines that change on every request, between lines that stay (one, two and more
    values are filled in by different code): each new value lands in its own field, trimmed."""
    parser = RequestParser()
    names = ["x-request-id", "x-forwarded-for", "traceparent"]
    for number in range(6):
        values = [f"v{k}-{number}" if k < varying else "same" for k in range(3)]
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %s \r\nAccept: */*\r\nX-Forwarded-For:%s  \r\n"
                    b"User-Agent: t\r\nTraceparent:  %s\r\n\r\n" % tuple(value.encode() for value in values))
        request = parser.next_request()
        assert request is not None
        assert request.headers == [("host", "a"), (names[0], values[0]), ("accept", "*/*"), (names[1], values[1]),
                                   ("user-agent", "t"), (names[2], values[2])]
    assert parser._shape is not None and len(parser._shape.slots) == varying  # the shape read the last ones


def test_a_changed_header_block_is_read_afresh():
    parser = RequestParser()
    for length, body in ((3, b"abc"), (3, b"xyz"), (5, b"hello"), (3, b"abc")):
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (length, body))
        request = parser.next_request()
        assert request is not None and request.body == body
        assert request.headers == [("host", "a"), ("content-length", str(length))]


def test_a_remembered_block_still_needs_host_on_http11():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert parser.next_request() is not None  # HTTP/1.0 may leave Host out
    parser.feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    with pytest.raises(ProtocolError, match="must carry a Host"):
        parser.next_request()
