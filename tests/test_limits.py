"""Size and count limits, at their documented defaults and when configured, over real sockets.

Defaults are chosen to be comparable to gunicorn and nginx: a request line of 8190
bytes (gunicorn's limit_request_line is 4094, nginx's large_client_header_buffers
8k), 100 header fields (gunicorn limit_request_fields 100), 8190 bytes per field
(gunicorn limit_request_field_size 8190), 64 KiB of head in total (nginx 4 x 8k =
32k per request) and a 1 MiB body (nginx client_max_body_size 1m).

Each limit is checked on both sides of the boundary, and for the unbounded ones
(a request line or head that never ends) that the answer comes without waiting
for the rest: the server must not buffer what it is going to refuse.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from harness import RawClient, proc_fds, wait_until

from server import config

HOST = b"Host: limits.example\r\n"


def _get(path: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\n" + HOST + headers + b"\r\n"


def _fields(count: int, size: int = 10) -> bytes:
    """``count`` header lines, each exactly ``size`` bytes long (without CRLF)."""
    return b"".join(b"X-%04d: " % i + b"v" * (size - 8) + b"\r\n" for i in range(count))


def _rejected(server, data: bytes, status: int) -> dict:
    client = server.connect()
    try:
        client.send(data)
        got, headers, body = client.read_response()
        assert got == status, body[:300]
        assert headers["content-type"] == "application/problem+json"
        assert headers.get("connection") == "close"
        assert client.is_closed()
        return json.loads(body)
    finally:
        client.close()


def _accepted(server, data: bytes) -> tuple[int, bytes]:
    """A request within the limits: answered by the application, connection kept."""
    client = server.connect()
    try:
        status, headers, body = client.request(data)
        assert status < 500 and headers.get("connection") != "close", (status, body[:300])
        return status, body
    finally:
        client.close()


def test_defaults_are_documented_and_comparable_to_gunicorn_and_nginx():
    defaults = {option.name: option.default for option in config.OPTIONS}
    assert defaults["max_request_line"] == 8190
    assert defaults["max_header_count"] == 100
    assert defaults["max_header_size"] == 8190
    assert 32768 <= defaults["max_headers_total"] <= 65536
    assert defaults["max_body_size"] == 1 << 20
    assert defaults["max_chunk_ext"] <= 4096
    assert 1 <= defaults["max_pipeline"] <= 100
    help_text = config.build_parser().format_help()
    for flag in ("--max-request-line", "--max-header-count", "--max-header-size", "--max-headers-total",
                 "--max-body-size", "--max-chunk-ext", "--max-pipeline", "--max-connections"):
        assert flag in help_text


# -- at the defaults, on the shared calculator server ----------------------------------------------------------

def test_request_line_limit_at_default(calc_server):
    line_len = config.Settings().max_request_line
    fixed = len(b"GET /add/1/ HTTP/1.1")
    at_limit = b"/add/1/" + b"0" * (line_len - fixed)
    assert len(b"GET " + at_limit + b" HTTP/1.1") == line_len
    assert _accepted(calc_server, _get(at_limit))[0] == 422  # the app's answer: far too many digits
    problem = _rejected(calc_server, _get(at_limit + b"0"), 414)
    assert str(line_len) in problem["detail"]


def test_endless_request_line_is_refused_without_waiting_for_its_end(calc_server):
    client = calc_server.connect()
    try:
        client.send(b"GET /" + b"a" * 20_000)  # no CRLF, ever
        status, _, _ = client.read_response(timeout=5)
        assert status == 414
        assert client.is_closed()
    finally:
        client.close()


def test_header_count_limit_at_default(calc_server):
    count = config.Settings().max_header_count
    assert _accepted(calc_server, _get(b"/add/1/2", _fields(count - 1)))[1] == b"3"  # + Host = count
    problem = _rejected(calc_server, _get(b"/add/1/2", _fields(count)), 431)
    assert str(count) in problem["detail"]


def test_header_field_size_limit_at_default(calc_server):
    size = config.Settings().max_header_size
    assert _accepted(calc_server, _get(b"/add/1/2", _fields(1, size)))[1] == b"3"
    _rejected(calc_server, _get(b"/add/1/2", _fields(1, size + 1)), 431)


def test_total_header_size_limit_at_default(calc_server):
    total = config.Settings().max_headers_total
    per_field = 8000
    fields = total // (per_field + 2)  # each below the field limit, together just under the total
    assert _accepted(calc_server, _get(b"/add/1/2", _fields(fields, per_field)))[1] == b"3"
    _rejected(calc_server, _get(b"/add/1/2", _fields(fields + 1, per_field)), 431)


def test_endless_head_is_refused_without_waiting_for_its_end(calc_server):
    client = calc_server.connect()
    try:
        client.send(b"GET / HTTP/1.1\r\n" + HOST + _fields(40, 2000))  # 80 KB, no end of head
        status, _, _ = client.read_response(timeout=5)
        assert status == 431
        assert client.is_closed()
    finally:
        client.close()


def test_body_limit_at_default_is_refused_before_the_body_is_sent(calc_server):
    limit = config.Settings().max_body_size
    client = calc_server.connect()
    try:
        client.send(b"POST /calc HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % (limit + 1))
        status, _, body = client.read_response(timeout=5)  # nothing of the body was sent
        assert status == 413 and str(limit) in json.loads(body)["detail"]
        assert client.is_closed()
    finally:
        client.close()


def test_calc_accepts_small_bodies_only(calc_server):
    from server.calculator.request_body import MAX_BODY_BYTES

    def post(body: bytes) -> tuple[int, dict, bytes]:
        client = calc_server.connect()
        try:
            return client.request(b"POST /calc HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        finally:
            client.close()

    padded = b'{"op":"add","arg1":1,"arg2":2}'
    padded += b" " * (MAX_BODY_BYTES - len(padded))
    status, _, body = post(padded)
    assert (status, json.loads(body)["result"]) == (200, 3)
    status, headers, body = post(padded + b" ")
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "/problems/body-too-large"


# -- configured limits: flags and environment -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tight(request):
    """A server with small limits, some set by flag, some by environment variable."""
    from harness import start_server

    server = start_server("--app", "apps:echo", "--no-access-log", "--max-request-line", "100",
                          "--max-header-count", "5", "--max-header-size", "200", "--max-body-size", "50",
                          env={"CALC_MAX_HEADERS_TOTAL": "600", "CALC_MAX_CHUNK_EXT": "40"})
    yield server
    server.stop()


def test_configured_request_line(tight):
    target = b"/" + b"a" * (100 - len(b"GET / HTTP/1.1"))
    assert _accepted(tight, _get(target))[0] == 200
    _rejected(tight, _get(target + b"a"), 414)


def test_configured_header_count_and_size(tight):
    assert _accepted(tight, _get(b"/", _fields(4)))[0] == 200
    _rejected(tight, _get(b"/", _fields(5)), 431)
    assert _accepted(tight, _get(b"/", _fields(1, 200)))[0] == 200
    _rejected(tight, _get(b"/", _fields(1, 201)), 431)


def test_configured_total_head_size_from_environment(tight):
    head = b"GET / HTTP/1.1\r\n" + HOST + _fields(3, 150)
    assert len(head) < 600
    assert _accepted(tight, head + b"\r\n")[0] == 200
    _rejected(tight, head + b"X-More: " + b"m" * 150 + b"\r\n\r\n", 431)


def test_configured_body_limit_for_length_and_chunked(tight):
    def post(framing: bytes, body: bytes) -> bytes:
        return b"POST / HTTP/1.1\r\n" + HOST + framing + b"\r\n" + body

    assert _accepted(tight, post(b"Content-Length: 50\r\n", b"b" * 50))[0] == 200
    _rejected(tight, post(b"Content-Length: 51\r\n", b""), 413)
    chunks = b"19\r\n" + b"c" * 25 + b"\r\n"
    assert _accepted(tight, post(b"Transfer-Encoding: chunked\r\n", chunks * 2 + b"0\r\n\r\n"))[0] == 200
    # 51 bytes in three chunks: refused when the third chunk's size line arrives, not after its data
    _rejected(tight, post(b"Transfer-Encoding: chunked\r\n", chunks * 2 + b"1\r\n"), 413)


def test_configured_chunk_extension_limit_from_environment(tight):
    def chunked(size_line: bytes) -> bytes:
        return (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                + size_line + b"\r\nabc\r\n0\r\n\r\n")

    ext = b"3;name=" + b"v" * 33
    assert len(ext) == 40
    status, body = _accepted(tight, chunked(ext))
    assert status == 200 and json.loads(body)["body"] == "abc"
    _rejected(tight, chunked(ext + b"v"), 400)
    client = tight.connect()
    try:  # an extension that never ends is refused as soon as it passes the limit
        client.send(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 5000)
        assert client.read_response()[0] == 400
    finally:
        client.close()


def test_many_trailers_are_limited(tight):
    trailers = b"".join(b"T-%d: x\r\n" % i for i in range(200))
    data = (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
            + trailers + b"\r\n")
    _rejected(tight, data, 431)


# -- pipelining ------------------------------------------------------------------------------------------------

def test_500_pipelined_requests_are_answered_in_order_while_another_client_is_served(server_factory):
    """One thread, a paced app, 500 requests in one write: the worker yields every max_pipeline requests."""
    server = server_factory("--app", "apps:paced", "--no-access-log", "--threads", "1", "--max-pipeline", "16")
    count = 500
    pipelined = server.connect(timeout=30)
    received: list[bytes] = []
    other_done_at: list[int] = []
    try:
        pipelined.send(b"".join(_get(b"/p/%d?sleep=0.002" % i) for i in range(count)))
        status, _, body = pipelined.read_response(timeout=10)
        received.append(body)

        def other_client() -> None:
            client = RawClient.connect(server.address, timeout=10)
            try:
                status, _, body = client.request(_get(b"/other"), timeout=10)
                assert (status, body) == (200, b"/other")
                other_done_at.append(len(received))
            finally:
                client.close()

        other = threading.Thread(target=other_client)
        other.start()
        for _ in range(count - 1):
            status, headers, body = pipelined.read_response(timeout=10)
            assert status == 200 and headers.get("connection") != "close"
            received.append(body)
        other.join(timeout=10)
        assert received == [b"/p/%d" % i for i in range(count)]
        assert other_done_at, "the other client was not served"
        assert other_done_at[0] < count - 16, (
            f"the other client was answered only after {other_done_at[0]} of {count} pipelined responses")
        assert not pipelined.is_closed(timeout=0.2)
    finally:
        pipelined.close()


def test_pipelined_flood_is_not_buffered_without_bound(server_factory):
    """A client that pipelines without reading meets back-pressure: the server stops reading from it."""
    server = server_factory("--app", "apps:paced", "--no-access-log", "--threads", "2", "--send-timeout", "2")
    pid = server.proc.pid
    rss_before = _rss_kib(pid)
    fds_before = proc_fds(pid)
    flood = socket.create_connection(server.address, timeout=1.0)
    block = b"".join(_get(b"/flood/%d" % i) for i in range(20_000))  # about 1 MB
    sent = 0
    started = time.monotonic()
    try:
        while sent < 200 << 20 and time.monotonic() - started < 20:
            try:
                flood.sendall(block)
            except TimeoutError:
                break  # the server stopped reading: back-pressure
            except OSError:
                break  # or dropped us once its responses stalled past the send timeout
            sent += len(block)
        grown = _rss_kib(pid) - rss_before
        print(f"flood: sent {sent >> 10} KiB before back-pressure, server RSS grew {grown} KiB")
    finally:
        flood.close()
    assert sent < 64 << 20, f"the server accepted {sent >> 20} MiB of pipelined requests without reading answers"
    assert grown < 48 * 1024, f"server memory grew by {grown} KiB"
    client = server.connect()
    try:
        assert client.request(_get(b"/after"))[2] == b"/after"
    finally:
        client.close()
    wait_until(lambda: proc_fds(pid) <= fds_before, timeout=10, what="the flooding connection to be closed")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
