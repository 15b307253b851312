"""Response framing decisions and serialisation, without sockets."""

from __future__ import annotations

import json

import pytest

from server.protocol import ResponseCache, plan_response
from server.protocol.writer import chunk, error_response, http_date, status_line

DATE = "Fri, 20 Nov 2026 12:00:00 GMT"


_CACHE: list[ResponseCache | None] = [None]  # the current test's: a server's ResponseCache, or none


@pytest.fixture(autouse=True, params=["cache", "no-cache"])
def responses(request: pytest.FixtureRequest):
    """Every test runs with a server's ResponseCache (shared by its calls) and without one."""
    _CACHE[0] = ResponseCache() if request.param == "cache" else None
    yield _CACHE[0]
    _CACHE[0] = None


def plan(**overrides):
    args = {"status": "200 OK", "headers": [("Content-Type", "text/plain")], "http11": True, "head_only": False,
            "keep_alive": True, "length_hint": None, "date": DATE, "server": "calc-server", "cache": _CACHE[0]}
    args.update(overrides)
    return plan_response(**args)


def head_lines(p) -> list[str]:
    return p.head.decode("latin-1").split("\r\n")


def test_known_length_uses_content_length_and_keeps_alive():
    p = plan(length_hint=5)
    lines = head_lines(p)
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Content-Length: 5" in lines and f"Date: {DATE}" in lines and "Server: calc-server" in lines
    assert p.head.endswith(b"\r\n\r\n") and p.keep_alive and not p.chunked


def test_unknown_length_is_chunked_on_http11_and_closes_on_http10():
    p11 = plan()
    assert p11.chunked and "Transfer-Encoding: chunked" in head_lines(p11)
    p10 = plan(http11=False)
    assert not p10.chunked and not p10.keep_alive and "Connection: close" in head_lines(p10)


def test_http10_keep_alive_is_announced():
    p = plan(http11=False, length_hint=1)
    assert p.keep_alive and "Connection: keep-alive" in head_lines(p)


def test_head_and_bodiless_statuses_send_no_body():
    assert not plan(head_only=True, length_hint=3).send_body
    for status in ("204 No Content", "304 Not Modified"):
        p = plan(status=status)
        assert not p.send_body and not p.chunked and "Content-Length" not in p.head.decode()


def test_application_connection_close_is_honoured_and_not_duplicated():
    p = plan(headers=[("Connection", "close")], length_hint=0)
    assert not p.keep_alive
    assert p.head.decode().count("Connection:") == 1


def test_application_date_and_server_win():
    p = plan(headers=[("Date", "x"), ("Server", "mine")], length_hint=0)
    text = p.head.decode()
    assert text.count("Date:") == 1 and "Server: mine" in text


@pytest.mark.parametrize("headers", [
    [("X-Evil", "a\r\nSet-Cookie: x=1")], [("Bad\nName", "v")], [("Transfer-Encoding", "chunked")],
    [("Content-Length", "abc")],
])
def test_headers_that_would_corrupt_the_stream_are_refused(headers):
    with pytest.raises(ValueError):
        plan(headers=headers)


def test_chunk_framing():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert chunk(b"") == b""


def test_error_response_is_problem_json():
    raw = error_response(431, "too many headers", date=DATE, server="s")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert b"Content-Type: application/problem+json" in head and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    doc = json.loads(body)
    assert doc["status"] == 431 and doc["detail"] == "too many headers" and doc["title"]


def test_http_date_and_status_line():
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"  # the example date in RFC 9110
    assert status_line(404) == "404 Not Found"


@pytest.mark.parametrize("headers", [
    [("Bad Name", "v")], [("X-Nul", "a\x00b")], [("X-Wide", "\u2603")],
    [("Content-Length", "3"), ("Content-Length", "4")], [("Content-Length", "\u0661")],
])
def test_more_headers_that_are_refused(headers):
    with pytest.raises(ValueError):
        plan(headers=headers)


@pytest.mark.parametrize("headers", [
    [["X-List", "v"]], [("X-Int", 1)], [("X-Three", "a", "b")], "X: v", [("X", ["v"])],
])
def test_headers_that_are_not_str_pairs_are_a_type_error(headers):
    with pytest.raises(TypeError, match="str, str"):
        plan(headers=headers)


@pytest.mark.parametrize("status", ["200", "2000 OK", "20x OK", "600 Big", "200 O\r\nK", 200, "200 \u2603"])
def test_bad_status_lines_are_refused(status):
    with pytest.raises(ValueError):
        plan(status=status)


def test_remembered_headers_render_the_same_as_new_ones():
    headers = [("X-Seen", "again"), ("Content-Length", "2")]
    first, second = plan(headers=list(headers)), plan(headers=list(headers))
    assert first.head == second.head and first.content_length == second.content_length == 2
    assert "X-Seen: again" in head_lines(second) and head_lines(second).count("Content-Length: 2") == 1
    # a header once remembered as valid does not make a bad one pass
    with pytest.raises(ValueError):
        plan(headers=[("X-Seen", "again\r\nX-Injected: 1")])


def test_remembered_heads_still_follow_date_and_framing():
    headers = [("Content-Type", "text/plain")]
    base = plan(headers=list(headers), length_hint=1)
    again = plan(headers=list(headers), length_hint=1)
    assert again == base and (again is base or _CACHE[0] is None)  # same inputs: the remembered plan
    later = plan(headers=list(headers), length_hint=1, date="Fri, 20 Nov 2026 12:00:01 GMT")
    assert "Date: Fri, 20 Nov 2026 12:00:01 GMT" in head_lines(later)
    closing = plan(headers=list(headers), length_hint=1, keep_alive=False)
    assert not closing.keep_alive and "Connection: close" in head_lines(closing)
    assert "Content-Length: 2" in head_lines(plan(headers=list(headers), length_hint=2))
    with pytest.raises(AttributeError):
        base.keep_alive = False  # shared between responses, so it cannot be changed


def test_remembered_results_stay_bounded(responses):
    for i in range(3 * ResponseCache.LIMIT):
        p = plan(headers=[("X-N", str(i))], length_hint=0)
        assert f"X-N: {i}" in head_lines(p)
    if responses is not None:
        for table in (responses._fields, responses._plans):
            assert 1 <= len(table) <= ResponseCache.LIMIT
