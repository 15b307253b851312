"""The parser's caches (server/protocol/header_cache.py) change nothing: with a server's HeaderCache a
parser gives exactly the requests and errors it gives with ``cache=None``.

The first tests aim at each layer (the connection's last block, the changed lines, block shapes, the
blocks that began connections); the last holds the two side by side on arbitrary byte streams in
arbitrary splits, over several connections sharing one cache, and from many threads at once.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import mutated, valid_request

from server.protocol import HeaderCache, Limits, ProtocolError, RequestParser


def cached(cache: HeaderCache | None = None, limits: Limits | None = None) -> RequestParser:
    """A parser with a cache (a new one unless given), as the server makes them."""
    limits = limits or Limits()
    return RequestParser(limits, cache or HeaderCache(limits))


def fresh(limits: Limits | None = None) -> RequestParser:
    """A parser with no cache at all: every block read in full."""
    return RequestParser(limits or Limits(), cache=None)


def test_a_cache_serves_only_parsers_with_its_limits():
    with pytest.raises(ValueError, match="limits"):
        RequestParser(Limits(max_header_count=5), HeaderCache(Limits()))


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
    shared = cached()
    for line, block in messages:
        data = _message(line, block)
        expected = _outcome(fresh(), data)
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
    shared = cached()
    for lines in blocks:
        data = _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in lines))
        expected = _outcome(fresh(), data)
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
    shared_cache = HeaderCache(Limits())
    for line, lines in connections:
        block = b"".join(field + b"\r\n" for field in lines)
        parser = cached(shared_cache)
        for data in (_message(line, block), _message(b"GET /again HTTP/1.1", block)):
            expected = _outcome(fresh(), data)
            assert _outcome(parser, data) == expected
            if not hasattr(expected, "method"):
                break


def test_a_connection_that_begins_like_another_takes_its_checked_block():
    shared_cache = HeaderCache(Limits())
    data = b"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"
    one, two = cached(shared_cache), cached(shared_cache)
    first, second = _outcome(one, data), _outcome(two, data)
    assert first == second == _outcome(fresh(), data)
    assert second.headers is first.headers  # the fields the first connection's parser checked


def test_a_refused_block_is_not_shared_and_the_memo_is_bounded():
    shared_cache = HeaderCache(Limits())
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n"
    for _ in range(2):
        assert _outcome(cached(shared_cache), bad) == _outcome(fresh(), bad)
        assert len(shared_cache._first_blocks) == 0
    for number in range(HeaderCache.FIRST_BLOCKS * 2 + 3):
        data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %d\r\n\r\n" % number
        assert _outcome(cached(shared_cache), data).headers[1] == ("x-request-id", str(number))
        assert 1 <= len(shared_cache._first_blocks) <= HeaderCache.FIRST_BLOCKS


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
            shared = cached()
            first = _outcome(shared, _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in _BASE_LINES)))
            assert hasattr(first, "method")
            data = _message(b"GET / HTTP/1.1", b"".join(line + b"\r\n" for line in lines))
            assert _outcome(shared, data) == _outcome(fresh(), data), (position, also_next)


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
        shared = cached()
        for number in range(3):
            assert hasattr(_outcome(shared, _message(b"GET / HTTP/1.1", block(number))), "method")
        assert shared._memo._shape is not None  # the shape is what reads the next block
        data = _message(b"GET / HTTP/1.1", block(9, position))
        expected = _outcome(fresh(), data)
        assert _outcome(shared, data) == expected, position
        if hasattr(expected, "method"):
            data = _message(b"GET / HTTP/1.1", block(10))
            assert _outcome(shared, data) == _outcome(fresh(), data), position


@pytest.mark.parametrize("varying", [1, 2, 3])
def test_a_shaped_block_gives_the_new_values(varying):
    """One, two or three lines that change on every request, between lines that stay (one, two and more
    values are filled in by different code): each new value lands in its own field, trimmed."""
    parser = cached()
    names = ["x-request-id", "x-forwarded-for", "traceparent"]
    for number in range(6):
        values = [f"v{k}-{number}" if k < varying else "same" for k in range(3)]
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %s \r\nAccept: */*\r\nX-Forwarded-For:%s  \r\n"
                    b"User-Agent: t\r\nTraceparent:  %s\r\n\r\n" % tuple(value.encode() for value in values))
        request = parser.next_request()
        assert request is not None
        assert request.headers == [("host", "a"), (names[0], values[0]), ("accept", "*/*"), (names[1], values[1]),
                                   ("user-agent", "t"), (names[2], values[2])]
    assert parser._memo._shape is not None and len(parser._memo._shape.slots) == varying  # the shape read the last ones


def test_a_changed_header_block_is_read_afresh():
    parser = cached()
    for length, body in ((3, b"abc"), (3, b"xyz"), (5, b"hello"), (3, b"abc")):
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (length, body))
        request = parser.next_request()
        assert request is not None and request.body == body
        assert request.headers == [("host", "a"), ("content-length", str(length))]


def test_a_remembered_block_still_needs_host_on_http11():
    parser = cached()
    parser.feed(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert parser.next_request() is not None  # HTTP/1.0 may leave Host out
    parser.feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    with pytest.raises(ProtocolError, match="must carry a Host"):
        parser.next_request()



# -- on against off, on anything -----------------------------------------------------------------------------

def _run(parser: RequestParser, data: bytes, cuts: list[int]) -> list[object]:
    """What a parser makes of ``data`` fed in the pieces ``cuts`` gives: each request's parts, then the error."""
    out: list[object] = []
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in pieces:
            parser.feed(piece)
            while (request := parser.next_request()) is not None:
                out.append((request.method, request.target, request.version, tuple(request.headers), request.host,
                            request.keep_alive, request.expect_continue, request.chunked, request.body))
        parser.feed_eof()
    except ProtocolError as error:
        out.append((error.status, error.detail))
    return out


# A proxy's block with a varying id and address: blocks the shapes and the changed-lines reading take.
_PROXY_BLOCK = (b"GET /add/%d/3 HTTP/1.1\r\nHost: calc\r\nX-Request-ID: %s\r\nX-Forwarded-For: 10.0.0.%d\r\n"
                b"User-Agent: proxy\r\n\r\n")


@st.composite
def streams(draw) -> bytes:
    """A connection's bytes: valid requests, repeated proxy blocks with varying values, and mutated input."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["valid", "proxy", "proxy", "mutated"]))
        if kind == "valid":
            parts.append(draw(valid_request())[0])
        elif kind == "proxy":
            value = draw(st.sampled_from([b"1", b"2", b"  x\t", b"caf\xe9", b"a\x01b", b"", b"a b", b"x" * 300]))
            parts.append(_PROXY_BLOCK % (draw(st.integers(0, 9)), value, draw(st.integers(0, 255))))
        else:
            parts.append(draw(mutated()))
    return b"".join(parts)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(connections=st.lists(st.tuples(streams(), st.lists(st.integers(0, 2000), max_size=6)), min_size=1,
                            max_size=4))
def test_a_cached_parser_reads_any_stream_in_any_split_as_an_uncached_one(connections):
    """Several connections share one server's cache, as in the server; each reads as with no cache."""
    cache = HeaderCache(Limits())
    for data, cuts in connections:
        cuts = sorted({cut % (len(data) + 1) for cut in cuts})
        assert _run(cached(cache), data, cuts) == _run(fresh(), data, cuts)


def test_many_threads_sharing_one_cache_read_what_an_uncached_parser_reads():
    """The cache is shared by every worker thread: each thread's parsers must still read exactly right."""
    cache = HeaderCache(Limits())
    streams = [b"".join(_PROXY_BLOCK % (n % 10, b"%d" % (n * 7 + k), k % 256) for k in range(40)) for n in range(8)]
    expected = [_run(fresh(), data, []) for data in streams]
    failures: list[str] = []

    def work(index: int) -> None:
        for _ in range(25):
            if _run(cached(cache), streams[index], []) != expected[index]:
                failures.append(f"thread {index}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
