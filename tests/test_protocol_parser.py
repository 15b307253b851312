"""The request parser on its own: bytes in, requests or ProtocolError out. No sockets.

Every test runs twice: with the parsers given a server's HeaderCache, and without (``both_parser_caches``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import Limits, Phase, ProtocolError, RequestParser

pytestmark = pytest.mark.usefixtures("both_parser_caches")


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
