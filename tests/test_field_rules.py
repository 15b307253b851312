"""Field rules beyond framing (issue 25, finding 9): singleton fields, trailer fields, Content-Length digits.

- A field that RFC 9110 defines with a single value (not a list) may appear once: a second line
  cannot be combined with the first (RFC 9110 5.3), and two parsers may each believe a different one.
- A chunked trailer section must not carry fields needed before the content (RFC 9110 6.5.1):
  framing, routing, authentication, request modifiers, the content's format. They are refused,
  not dropped in silence.
- Content-Length is 1*DIGIT (RFC 9110 8.6): leading zeros are valid and do not count against the
  bound on its digits.
"""

from __future__ import annotations

import pytest

from server.protocol import Limits, ProtocolError, RequestParser
from server.protocol.facts import SINGLETON_FIELDS as _SINGLETON_FIELDS
from server.protocol.parser import _FORBIDDEN_TRAILERS

pytestmark = pytest.mark.usefixtures("both_parser_caches")


def parse(data: bytes) -> list:
    parser = RequestParser(Limits())
    parser.feed(data)
    out = []
    while (request := parser.next_request()) is not None:
        out.append(request)
    return out


def refused(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(data)
    return info.value


SINGLETONS = ["Content-Type", "Authorization", "Proxy-Authorization", "If-Modified-Since", "If-Unmodified-Since",
              "If-Range", "Range", "Max-Forwards", "Referer", "User-Agent", "From", "Date", "Content-Location",
              "Content-Range"]


def test_the_singleton_list_is_the_one_the_parser_uses():
    assert {name.lower() for name in SINGLETONS} == _SINGLETON_FIELDS


@pytest.mark.parametrize("name", SINGLETONS)
@pytest.mark.parametrize("same_value", [True, False], ids=["same", "different"])
def test_a_repeated_singleton_field_is_a_400_naming_it(name, same_value):
    second = b"v1" if same_value else b"v2"
    error = refused(b"GET / HTTP/1.1\r\nHost: a\r\n%s: v1\r\nX-Between: 1\r\n%s: %s\r\n\r\n"
                    % (name.encode(), name.lower().encode(), second))
    assert error.status == 400
    assert error.detail == f"more than one {name.lower()} header; it takes a single value (RFC 9110 5.3)"


@pytest.mark.parametrize("block", [
    b"Host: a\r\nHost: a\r\n",
    b"Host: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n",
])
def test_repeated_host_and_content_length_are_400_even_when_equal(block):
    error = refused(b"POST / HTTP/1.1\r\n" + block + b"\r\nabc")
    assert error.status == 400 and "more than one" in error.detail


@pytest.mark.parametrize("block", [
    b"Cookie: a=1\r\nCookie: b=2\r\n",  # RFC 6265 5.4: joined with "; "
    b"Accept: text/html\r\nAccept: application/json\r\n",  # lists: combined with ","
    b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n",
    b"Content-Type: a/b\r\nX-Content-Type: c/d\r\n",
])
def test_repeated_list_fields_are_still_accepted(block):
    (request,) = parse(b"GET / HTTP/1.1\r\nHost: a\r\n" + block + b"\r\n")
    assert len(request.headers) == 3


def test_a_block_that_changes_one_name_into_a_repeat_is_refused_on_a_kept_connection():
    """The parser's memo of the last block must not carry the old 'no repeats' over."""
    parser = RequestParser(Limits())
    first = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nX-Id: 1\r\n\r\n"
    for _ in range(3):
        parser.feed(first)
        assert parser.next_request() is not None
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nUser-Agent: 1\r\n\r\n")
    with pytest.raises(ProtocolError, match="more than one user-agent"):
        parser.next_request()


_CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"


@pytest.mark.parametrize("name", sorted(n.decode() for n in _FORBIDDEN_TRAILERS))
def test_a_trailer_that_governs_framing_routing_or_content_is_a_400(name):
    error = refused(_CHUNKED + b"X-Checksum: 1\r\n%s: 1\r\n\r\n" % name.title().encode())
    assert error.status == 400
    assert error.detail.startswith(f"{name} is not allowed in a chunked trailer")


def test_the_forbidden_trailers_cover_framing_routing_and_content():
    for name in (b"content-length", b"transfer-encoding", b"host", b"content-type", b"authorization",
                 b"content-encoding", b"trailer", b"connection"):
        assert name in _FORBIDDEN_TRAILERS


def test_other_trailers_are_accepted():
    (request,) = parse(_CHUNKED + b"X-Checksum: abc\r\nServer-Timing: db;dur=53\r\n\r\n")
    assert request.body == b"abc"


@pytest.mark.parametrize(("value", "length"), [
    (b"0000000000000000000036", 36), (b"036", 36), (b"0", 0), (b"000000000000000000000000000000", 0),
])
def test_content_length_leading_zeros_do_not_count_against_its_digits(value, length):
    body = b"x" * length
    (request,) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n%s" % (value, body))
    assert request.body == body


def test_content_length_with_too_many_significant_digits_is_still_413():
    error = refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0001234567890123456789\r\n\r\n")
    assert error.status == 413
