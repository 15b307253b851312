"""Hostile and malformed input, sent as raw bytes over a socket to the real server.

Request smuggling (RFC 9112 6.1 and 6.3) and every other framing ambiguity must end
the connection: the server answers the bad request with one 4xx (or 501/505) and
closes, so a valid request appended behind the bad one is never read as a second
request. Each case below therefore sends ``bad + NEXT`` in one write and asserts
that exactly one response arrives, followed by EOF.

The calculator part sends numbers, JSON and bytes chosen to be expensive or to
crash a naive implementation; each must be a fast, clear problem+json 4xx.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

NEXT = b"GET /add/40/2 HTTP/1.1\r\nHost: next.example\r\n\r\n"
HOST = b"Host: calc.example\r\n"


def _post(framing: bytes, body: bytes) -> bytes:
    return b"POST /calc HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n" + framing + b"\r\n" + body


def _chunked(body: bytes) -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", body)


JSON = b'{"op":"add","arg1":1,"arg2":2}'  # 30 bytes

# (id, bytes sent before NEXT, expected status)
SMUGGLING = [
    # RFC 9112 6.3 item 3: Content-Length with Transfer-Encoding is an attack signature.
    ("cl-then-te", _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-then-cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400),
    ("cl-zero-with-te", _post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-identity-with-cl", _post(b"Transfer-Encoding: identity\r\nContent-Length: 30\r\n", JSON), 400),
    # 6.3 item 4 / 6.1: the final coding of a request must be chunked.
    ("te-gzip-last", _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    ("te-gzip-only", _post(b"Transfer-Encoding: gzip\r\n", JSON), 400),
    ("te-identity", _post(b"Transfer-Encoding: identity\r\n", JSON), 400),
    ("te-unknown", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501),
    ("te-chunked-twice", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-split-headers", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-gzip-then-chunked-headers", _post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                                           b"0\r\n\r\n"), 501),
    ("te-empty", _post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n"), 400),
    ("te-comma-only", _post(b"Transfer-Encoding: ,\r\n", b"0\r\n\r\n"), 400),
    ("te-vertical-tab", _post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), 400),
    ("te-in-http10", b"POST /calc HTTP/1.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\n", 400),
    # 6.3 item 5: differing or listed Content-Length values.
    ("cl-differing", _post(b"Content-Length: 30\r\nContent-Length: 31\r\n", JSON + b" "), 400),
    ("cl-duplicated", _post(b"Content-Length: 30\r\nContent-Length: 30\r\n", JSON), 400),
    ("cl-comma-list", _post(b"Content-Length: 30, 30\r\n", JSON), 400),
    ("cl-comma-differing", _post(b"Content-Length: 30,5\r\n", JSON), 400),
    ("cl-plus-sign", _post(b"Content-Length: +30\r\n", JSON), 400),
    ("cl-minus-sign", _post(b"Content-Length: -1\r\n", JSON), 400),
    ("cl-inner-space", _post(b"Content-Length: 3 0\r\n", JSON), 400),
    ("cl-underscore", _post(b"Content-Length: 3_0\r\n", JSON), 400),
    ("cl-hex", _post(b"Content-Length: 0x1e\r\n", JSON), 400),
    ("cl-decimal-point", _post(b"Content-Length: 30.0\r\n", JSON), 400),
    ("cl-exponent", _post(b"Content-Length: 3e1\r\n", JSON), 400),
    ("cl-empty", _post(b"Content-Length: \r\n", JSON), 400),
    ("cl-arabic-digits", _post("Content-Length: \u0663\u0660\r\n".encode(), JSON), 400),
    ("cl-overflow", _post(b"Content-Length: 99999999999999999999999999\r\n", JSON), 413),
    ("cl-overflow-after-zeros", _post(b"Content-Length: 0000099999999999999999999\r\n", JSON), 413),
    # RFC 9110 5.3: a field defined with one value may appear once (issue 25, finding 9).
    ("content-type-twice", _post(b"Content-Type: text/plain\r\nContent-Length: 30\r\n", JSON), 400),
    ("authorization-twice", _post(b"Authorization: Basic YTpi\r\nAuthorization: Basic Yzpk\r\n"
                                  b"Content-Length: 30\r\n", JSON), 400),
    ("user-agent-twice", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"User-Agent: a\r\nUser-Agent: b\r\n\r\n", 400),
    ("host-twice-equal", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + HOST + b"\r\n", 400),
    # RFC 9110 6.5.1: a trailer must not carry what frames, routes or describes the content.
    ("trailer-content-length", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\nContent-Length: 30\r\n\r\n"), 400),
    ("trailer-transfer-encoding", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
     400),
    ("trailer-host", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\nHost: other.example\r\n\r\n"), 400),
    ("trailer-content-type", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\nX-T: 1\r\nContent-Type: text/plain\r\n\r\n"),
     400),
    # Chunk sizes: hex digits only, no sign, prefix, separator or padding.
    ("chunk-plus-sign", _chunked(b"+1e\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-minus-sign", _chunked(b"-1\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-hex-prefix", _chunked(b"0x1e\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-underscore", _chunked(b"1_e\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-leading-space", _chunked(b" 1e\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-trailing-space", _chunked(b"1e \r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-inner-space", _chunked(b"1 e\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-empty-size", _chunked(b"\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-not-hex", _chunked(b"1g\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", _chunked(b"fffffffffffffffffff\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-size-huge", _chunked(b"ffffffffffffffff\r\n" + JSON + b"\r\n0\r\n\r\n"), 413),
    ("chunk-bad-extension", _chunked(b"1e;a b\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bare-lf", _chunked(b"1e;a=\nb\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    # Missing CRLFs: a chunk longer than its size, a body with no last-chunk end.
    ("chunk-data-without-crlf", _chunked(b"1e\r\n" + JSON + b"0\r\n\r\n"), 400),
    ("chunk-longer-than-size", _chunked(b"1d\r\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("last-chunk-without-final-crlf", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\n"), 400),
    ("trailer-without-final-crlf", _chunked(b"1e\r\n" + JSON + b"\r\n0\r\nX-T: 1\r\n"), 400),
    # Line endings: CRLF only.
    ("bare-lf-everywhere", b"GET /add/1/2 HTTP/1.1\n" + b"Host: calc.example\n\n", 400),
    ("bare-lf-request-line", b"GET /add/1/2 HTTP/1.1\n" + HOST + b"\r\n", 400),
    ("bare-lf-between-headers", b"GET /add/1/2 HTTP/1.1\r\nHost: calc.example\nX: y\r\n\r\n", 400),
    ("bare-cr-between-headers", b"GET /add/1/2 HTTP/1.1\r\nHost: calc.example\rX: y\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: a\rb\r\n\r\n", 400),
    ("bare-lf-chunk-size", _chunked(b"1e\n" + JSON + b"\r\n0\r\n\r\n"), 400),
    ("bare-lf-after-chunk-data", _chunked(b"1e\r\n" + JSON + b"\n0\r\n\r\n"), 400),
    ("bare-lf-end-of-head", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"\n", 400),
    # Whitespace between a field name and its colon (RFC 9112 5.1) and obs-fold (5.2).
    ("space-before-colon-cl", _post(b"Content-Length : 30\r\n", JSON), 400),
    ("tab-before-colon-te", _post(b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n"), 400),
    ("space-before-colon-host", b"GET /add/1/2 HTTP/1.1\r\nHost : calc.example\r\n\r\n", 400),
    ("space-before-name", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b" X: y\r\n\r\n", 400),
    ("obs-fold", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: a\r\n\tb\r\n\r\n", 400),
    ("obs-fold-te", _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), 400),
    # Control characters in names, values and the target.
    ("nul-in-name", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X\x00Y: 1\r\n\r\n", 400),
    ("nul-in-value", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n", 400),
    ("esc-in-value", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: \x1b[31m\r\n\r\n", 400),
    ("del-in-value", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X: a\x7fb\r\n\r\n", 400),
    ("nul-in-host", b"GET /add/1/2 HTTP/1.1\r\nHost: calc\x00.example\r\n\r\n", 400),
    ("non-token-name", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + "X-\u00e4: 1\r\n\r\n".encode(), 400),
    ("empty-name", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b": 1\r\n\r\n", 400),
    ("no-colon", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X-No-Colon\r\n\r\n", 400),
    ("nul-in-target", b"GET /add/1\x00/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("del-in-target", b"GET /add/1\x7f/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("tab-in-target", b"GET /add/1\t/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("space-in-target", b"GET /add/1 /2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("fragment-in-target", b"GET /add/1/2#x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("utf8-in-target", b"GET /add/\xc3\xa0/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("latin1-in-target", b"GET /add/1/2?x=\xe9 HTTP/1.0\r\n\r\n", 400),
    # Request line: method token, separators, version.
    ("method-paren", b"G(T /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-nul", b"G\x00T /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-quoted", b'"GET" /add/1/2 HTTP/1.1\r\n' + HOST + b"\r\n", 400),
    ("method-non-ascii", "G\u00c9T /add/1/2 HTTP/1.1\r\n".encode() + HOST + b"\r\n", 400),
    ("method-empty", b" /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-slash", b"GET/ /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("double-space", b"GET  /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("tab-separator", b"GET\t/add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("trailing-space", b"GET /add/1/2 HTTP/1.1 \r\n" + HOST + b"\r\n", 400),
    ("leading-space", b" GET /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("no-version", b"GET /add/1/2\r\n" + HOST + b"\r\n", 400),
    ("lowercase-version", b"GET /add/1/2 http/1.1\r\n" + HOST + b"\r\n", 400),
    ("version-two-digit-minor", b"GET /add/1/2 HTTP/1.10\r\n" + HOST + b"\r\n", 400),
    ("version-2", b"GET /add/1/2 HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    ("version-0.9", b"GET /add/1/2 HTTP/0.9\r\n" + HOST + b"\r\n", 505),
    ("too-many-empty-lines", b"\r\n" * 10 + b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    # Host (RFC 9112 3.2): exactly one in HTTP/1.1, and a valid one.
    ("no-host", b"GET /add/1/2 HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET /add/1/2 HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    ("two-identical-hosts", b"GET /add/1/2 HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n", 400),
    ("host-with-space", b"GET /add/1/2 HTTP/1.1\r\nHost: a.example b.example\r\n\r\n", 400),
    ("host-with-slash", b"GET /add/1/2 HTTP/1.1\r\nHost: a.example/evil\r\n\r\n", 400),
    ("absolute-form-userinfo", b"GET http://user@a.example/add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("absolute-form-no-host", b"GET http:///add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("absolute-form-bad-scheme", b"GET file://a.example/etc/passwd HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    # Target forms (RFC 9112 3.2.3, 3.2.4): '*' only for OPTIONS, authority-form only for CONNECT.
    ("asterisk-with-get", b"GET * HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("asterisk-with-post", _post(b"Content-Length: 30\r\n", JSON).replace(b"/calc", b"*", 1), 400),
    ("authority-form-with-get", b"GET calc.example:80 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("authority-form-with-options", b"OPTIONS calc.example:80 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("connect", b"CONNECT calc.example:443 HTTP/1.1\r\nHost: calc.example:443\r\n\r\n", 501),
    ("relative-target", b"GET add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    # Expectations other than 100-continue (RFC 9110 10.1.1).
    ("unknown-expectation", b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"Expect: 200-ok\r\n\r\n", 417),
]


def _exchange_then_eof(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data + NEXT`` in one write; return the one response after checking that EOF follows it."""
    client = server.connect()
    try:
        client.send(data + NEXT)
        status, headers, body = client.read_response()
        assert not client.buffer, f"bytes after the first response: {client.buffer[:200]!r}"
        assert client.is_closed(timeout=5.0), "the connection stayed open after a framing error"
        assert not client.buffer
        return status, headers, body
    finally:
        client.close()


def _assert_problem(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers.get("content-type") == "application/problem+json", headers
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["title"]
    assert problem.get("detail")
    return problem


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, s, id=i) for i, d, s in SMUGGLING])
def test_framing_attack_gets_one_error_and_the_connection_closes(calc_server, data, expected):
    status, headers, body = _exchange_then_eof(calc_server, data)
    assert status == expected, body
    assert headers.get("connection", "").lower() == "close"
    _assert_problem(status, headers, body)


def test_the_appended_request_alone_is_answered(calc_server):
    """Control for the cases above: NEXT on its own is valid, so its absence there is the server's choice."""
    client = calc_server.connect()
    try:
        status, _, body = client.request(NEXT)
        assert (status, body) == (200, b"42")
        assert not client.is_closed(timeout=0.3)
    finally:
        client.close()


@pytest.mark.parametrize("data", [
    pytest.param(b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", id="options-asterisk"),
    pytest.param(b"GET http://calc.example/add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", id="absolute-form"),
    pytest.param(b"GET /add/1/2 HTTP/1.1\r\nHost:calc.example\r\nX:\t v \t\r\n\r\n", id="optional-whitespace"),
    pytest.param(b"\r\nGET /add/1/2 HTTP/1.1\r\n" + HOST + b"\r\n", id="one-leading-empty-line"),
    pytest.param(_post(b"Content-Length:  30 \r\n", JSON), id="cl-with-ows"),
    pytest.param(_post(b"Content-Length: 0000000000000000000030\r\n", JSON), id="cl-leading-zeros"),
    pytest.param(b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"Cookie: a=1\r\nCookie: b=2\r\n\r\n", id="cookie-twice"),
    pytest.param(_chunked(b"01E;ext=1;q=\"a b\"\r\n" + JSON + b"\r\n0\r\nX-Trailer: t\r\n\r\n"), id="chunk-with-ext"),
    pytest.param(_post(b"Transfer-Encoding: Chunked\r\n", b"1e\r\n" + JSON + b"\r\n0\r\n\r\n"), id="te-case"),
])
def test_strictness_does_not_reject_valid_edge_cases(calc_server, data):
    """The lenient-looking but valid forms keep the connection and the appended request is served."""
    client = calc_server.connect()
    try:
        client.send(data + NEXT)
        first, headers, _ = client.read_response()
        assert first < 500 and headers.get("connection", "").lower() != "close"
        status, _, body = client.read_response()
        assert (status, body) == (200, b"42")
    finally:
        client.close()


@pytest.mark.parametrize("data", [
    pytest.param(b"GET /add/1/2 HTTP/1.1\r\n" + HOST, id="head-without-final-crlf"),
    pytest.param(_post(b"Content-Length: 30\r\n", JSON[:10]), id="body-shorter-than-length"),
    pytest.param(_chunked(b"1e\r\n" + JSON + b"\r\n"), id="chunked-without-last-chunk"),
])
def test_truncated_request_then_eof_is_a_400_not_a_request(calc_server, data):
    """A request cut short by the client's FIN must not be served as if it were complete."""
    client = calc_server.connect()
    try:
        client.send(data)
        client.sock.shutdown(socket.SHUT_WR)
        status, headers, body = client.read_response()
        assert status == 400
        _assert_problem(status, headers, body)
        assert client.is_closed()
    finally:
        client.close()


# -- the calculator -------------------------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _calc_body(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"POST /calc HTTP/1.1\r\n" + HOST + b"Content-Type: " + content_type + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


DIGITS_100K = b"9" * 100_000
HOSTILE_CALC = [
    ("path-100k-digits", b"GET /add/" + DIGITS_100K + b"/1 HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    ("path-8000-digits", b"GET /add/" + b"9" * 8000 + b"/1 HTTP/1.1\r\n" + HOST + b"\r\n", 422),
    ("path-huge-exponent", b"GET /mult/1e999999999/1e999999999 HTTP/1.1\r\n" + HOST + b"\r\n", 422),
    ("path-huge-negative-exponent", b"GET /div/1e-999999999/3 HTTP/1.1\r\n" + HOST + b"\r\n", 422),
    ("path-exponent-with-20-digits", b"GET /add/1e99999999999999999999/1 HTTP/1.1\r\n" + HOST + b"\r\n", 422),
    ("path-zero-huge-exponent", b"GET /div/1/0e999999999 HTTP/1.1\r\n" + HOST + b"\r\n", 422),
    ("path-nan", b"GET /add/NaN/1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("path-non-utf8", b"GET /add/%ff%fe/1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("path-raw-non-utf8", b"GET /add/\xff\xfe/1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("path-percent-nul", b"GET /add/1%00/1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("body-100k-digits", _calc_body(b'{"op":"add","arg1":' + DIGITS_100K + b',"arg2":1}'), 413),
    ("body-16k-digits", _calc_body(b'{"op":"add","arg1":' + b"7" * 16_000 + b',"arg2":1}'), 422),
    ("body-huge-exponent", _calc_body(b'{"op":"mult","arg1":1e999999999,"arg2":1e999999999}'), 422),
    ("body-huge-negative-exponent", _calc_body(b'{"op":"div","arg1":1,"arg2":1e-999999999}'), 422),
    ("body-long-exponent", _calc_body(b'{"op":"add","arg1":1E+' + b"9" * 5000 + b',"arg2":1}'), 422),
    ("body-long-fraction", _calc_body(b'{"op":"add","arg1":0.' + b"0" * 12_000 + b'1,"arg2":1}'), 422),
    ("body-nested-arrays", _calc_body(b"[" * 15_000), 400),
    ("body-nested-objects", _calc_body(b'{"a":' * 3_000), 400),
    ("body-nested-in-operand", _calc_body(b'{"op":"add","arg1":' + b"[" * 8_000 + b"]" * 8_000 + b',"arg2":1}'),
     400),
    ("body-duplicate-keys", _calc_body(b'{"op":"add","arg1":1,"arg2":2,"arg1":3}'), 400),
    ("body-many-duplicate-keys", _calc_body(b"{" + b'"op":"add",' * 1_300 + b'"arg1":1,"arg2":2}'), 400),
    ("body-latin1", _calc_body('{"op":"add","arg1":1,"arg2":2,"\u00e9":1}'.encode("latin-1")), 400),
    ("body-utf16", _calc_body('{"op":"add","arg1":1,"arg2":2}'.encode("utf-16")), 400),
    ("body-overlong-utf8", _calc_body(b'{"op":"\xc0\xafadd","arg1":1,"arg2":2}'), 400),
    ("body-encoded-surrogate", _calc_body(b'{"op":"\xed\xa0\x80","arg1":1,"arg2":2}'), 400),
    ("body-escaped-surrogate-value", _calc_body(b'{"op":"\\ud800","arg1":1,"arg2":2}'), 400),
    ("body-escaped-surrogate-key", _calc_body(b'{"op":"add","arg1":1,"arg2":2,"\\ud800":1}'), 400),
    ("body-array-8000", _calc_body(b"[" + b"1," * 8_000 + b"1]"), 400),
    ("body-array-in-operand", _calc_body(b'{"op":"add","arg1":[' + b"1," * 8_000 + b'1],"arg2":1}'), 400),
    ("body-array-1m", _calc_body(b"[" + b"1," * 500_000 + b"1]"), 413),
    ("body-object-many-keys", _calc_body(b"{" + b",".join(b'"k%d":1' % i for i in range(1_500)) + b"}"), 400),
    ("body-long-string-op", _calc_body(b'{"op":"' + b"a" * 16_000 + b'","arg1":1,"arg2":2}'), 400),
    ("body-nan-literal", _calc_body(b'{"op":"add","arg1":NaN,"arg2":1}'), 400),
    ("body-infinity-literal", _calc_body(b'{"op":"add","arg1":-Infinity,"arg2":1}'), 400),
    ("body-not-json-type", _calc_body(JSON, content_type=b"text/plain"), 415),
    ("body-utf16-charset", _calc_body(JSON, content_type=b"application/json; charset=utf-16"), 415),
]


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, s, id=n) for n, d, s in HOSTILE_CALC])
def test_hostile_calculator_input_is_a_cheap_clear_4xx(calc_server, data, expected):
    pid = calc_server.proc.pid
    cpu_before = _cpu_seconds(pid)
    client = calc_server.connect()
    try:
        status, headers, body = client.request(data, timeout=5.0)
    finally:
        client.close()
    cpu_used = _cpu_seconds(pid) - cpu_before
    assert status == expected, body[:300]
    problem = _assert_problem(status, headers, body)
    assert len(problem["detail"]) < 600, "the problem should be a short sentence, not an echo of the input"
    assert cpu_used < 1.0, f"the server spent {cpu_used:.2f} s of CPU on one request"
    health = calc_server.connect()
    try:
        assert health.request(b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n", timeout=2.0)[0] == 200
    finally:
        health.close()


def _pad_line(run: bytes, end: bytes) -> bytes:
    """A header line of nearly the field limit (the whole block stays under it, so every pattern over
    the block sees it): a long run of whitespace or text, then a bad octet."""
    return b"X-Pad-0: " + run * (8100 // len(run)) + end + b"\r\n"


# Heads whose bad octet comes after a long run a backtracking pattern could split many ways: each
# must be refused with the exact problem and cost next to nothing.
HOSTILE_HEADS = [
    ("spaces-then-control", b"GET / HTTP/1.1\r\n" + HOST + _pad_line(b" ", b"\x01") + b"\r\n",
     "invalid control characters in the value of header 'X-Pad-0'"),
    ("tabs-then-nul", b"GET / HTTP/1.1\r\n" + HOST + _pad_line(b"\t", b"\x00") + b"\r\n",
     "invalid control characters in the value of header 'X-Pad-0'"),
    ("words-then-del", b"GET / HTTP/1.1\r\n" + HOST + _pad_line(b"a ", b"\x7f") + b"\r\n",
     "invalid control characters in the value of header 'X-Pad-0'"),
    ("absolute-target-with-fragment", b"GET http://" + b"a" * 8100 + b"# HTTP/1.1\r\n" + HOST + b"\r\n",
     "request target must be a path starting with '/' or an absolute http URL"),
]


@pytest.mark.parametrize(("data", "detail"), [pytest.param(d, t, id=n) for n, d, t in HOSTILE_HEADS])
def test_hostile_head_is_a_cheap_clear_400(calc_server, data, detail):
    pid = calc_server.proc.pid
    cpu_before = _cpu_seconds(pid)
    status, headers, body = _exchange_then_eof(calc_server, data)
    cpu_used = _cpu_seconds(pid) - cpu_before
    assert status == 400, body[:300]
    assert _assert_problem(status, headers, body)["detail"] == detail
    assert cpu_used < 0.3, f"the server spent {cpu_used:.2f} s of CPU on one request head"


def test_hostile_value_in_a_proxy_varying_line_is_a_cheap_clear_400(calc_server):
    """The same attack in the line a proxy changes on every request (read through the block's shape)."""
    pid = calc_server.proc.pid
    client = calc_server.connect()
    try:
        for number in range(4):
            status, _, _ = client.request(b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X-Request-ID: %d\r\n\r\n" % number)
            assert status == 200
        cpu_before = _cpu_seconds(pid)
        status, headers, body = client.request(
            b"GET /add/1/2 HTTP/1.1\r\n" + HOST + b"X-Request-ID: " + b" " * 8100 + b"\x01\r\n\r\n")
        cpu_used = _cpu_seconds(pid) - cpu_before
    finally:
        client.close()
    assert status == 400, body[:300]
    assert _assert_problem(status, headers, body)["detail"] == (
        "invalid control characters in the value of header 'X-Request-ID'")
    assert cpu_used < 0.3, f"the server spent {cpu_used:.2f} s of CPU on one request head"
