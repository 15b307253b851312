"""The server engine over real sockets: keep-alive, pipelining, framing, timeouts, concurrency, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import RawClient, both_listeners, get

GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture
def echo(server_factory):
    return server_factory("--app", "apps:echo", "--no-access-log")


@both_listeners
def test_keep_alive_serves_many_requests_on_one_connection(echo, raw_factory):
    client = raw_factory(echo.address)
    for i in range(5):
        status, headers, body = client.request(get(f"/n{i}"))
        assert status == 200 and json.loads(body)["path"] == f"/n{i}"
        assert "connection" not in headers
    assert not client.is_closed(timeout=0.2)


@both_listeners
def test_http10_closes_unless_keep_alive_is_asked_for(echo, raw_factory):
    plain = raw_factory(echo.address)
    status, headers, _ = plain.request(b"GET /a HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close" and plain.is_closed()
    kept = raw_factory(echo.address)
    status, headers, _ = kept.request(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert headers["connection"] == "keep-alive"
    status, _, body = kept.request(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert status == 200 and json.loads(body)["protocol"] == "HTTP/1.0"


@both_listeners
def test_client_connection_close_is_honoured(echo, raw_factory):
    client = raw_factory(echo.address)
    _, headers, _ = client.request(get("/", "Connection: close\r\n"))
    assert headers["connection"] == "close"
    assert client.is_closed()


@both_listeners
def test_pipelined_requests_are_answered_in_order(echo, raw_factory):
    client = raw_factory(echo.address)
    client.send(b"".join(get(f"/p{i}") for i in range(10)))
    paths = [json.loads(client.read_response()[2])["path"] for _ in range(10)]
    assert paths == [f"/p{i}" for i in range(10)]


@both_listeners
def test_chunked_request_body_reaches_the_app_with_its_length(echo, raw_factory):
    client = raw_factory(echo.address)
    status, _, body = client.request(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n")
    info = json.loads(body)
    assert status == 200 and info["body"] == "hello world" and info["content_length"] == "11"
    assert "HTTP_X_TRAILER" not in info["headers"] and "HTTP_TRANSFER_ENCODING" not in info["headers"]


@both_listeners
def test_streamed_response_is_chunked_on_http11_and_close_delimited_on_http10(server_factory, raw_factory):
    server = server_factory("--app", "apps:streaming", "--no-access-log")
    client = raw_factory(server.address)
    status, headers, body = client.request(get("/"))
    assert headers["transfer-encoding"] == "chunked" and body == b"part0;part1;part2;part3;part4;"
    status, _, body = client.request(get("/again"))  # still usable: the terminating chunk was sent
    assert status == 200 and body.endswith(b"part4;")
    old = raw_factory(server.address)
    status, headers, body = old.request(b"GET / HTTP/1.0\r\n\r\n")
    assert "transfer-encoding" not in headers and body == b"part0;part1;part2;part3;part4;"


@both_listeners
def test_head_has_headers_but_no_body(server_factory, raw_factory):
    server = server_factory("--app", "apps:big", "--no-access-log")
    client = raw_factory(server.address)
    _, get_headers, get_body = client.request(get("/same?bytes=1000"))
    status, headers, body = client.request(b"HEAD /same?bytes=1000 HTTP/1.1\r\nHost: test\r\n\r\n")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(get_body) == int(get_headers["content-length"])
    # the next response must start right where the HEAD response ended
    status, _, _ = client.request(get("/after"))
    assert status == 200


def test_date_and_server_headers(echo, raw_factory):
    _, headers, _ = raw_factory(echo.address).request(get("/"))
    assert headers["server"] == "calc-server"
    assert headers["date"].endswith(" GMT") and len(headers["date"]) == 29


@both_listeners
def test_expect_100_continue(echo, raw_factory):
    client = raw_factory(echo.address)
    client.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = client.read_response()
    assert status == 100
    client.send(b"body")
    status, _, body = client.read_response()
    assert status == 200 and json.loads(body)["body"] == "body"


def test_absolute_form_and_percent_decoding(echo, raw_factory):
    client = raw_factory(echo.address)
    _, _, body = client.request(b"GET http://example.org:81/a%20b/c%2Fd?x=%20 HTTP/1.1\r\nHost: ignored\r\n\r\n")
    info = json.loads(body)
    assert info["path"] == "/a b/c/d" and info["query"] == "x=%20" and info["host"] == "example.org:81"


def test_headers_with_underscores_are_not_passed_as_lookalikes(echo, raw_factory):
    _, _, body = raw_factory(echo.address).request(get("/", "X_Forwarded_For: 6.6.6.6\r\nX-Real: 1\r\n"))
    headers = json.loads(body)["headers"]
    assert "HTTP_X_FORWARDED_FOR" not in headers and headers["HTTP_X_REAL"] == "1"


def test_forwarded_for_is_trusted_only_from_configured_proxies(server_factory, raw_factory):
    trusting = server_factory("--app", "apps:echo", "--no-access-log")  # default trusts 127.0.0.1
    extra = "X-Forwarded-For: 203.0.113.7, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
    info = json.loads(raw_factory(trusting.address).request(get("/", extra))[2])
    assert info["remote_addr"] == "203.0.113.7" and info["scheme"] == "https"
    wary = server_factory("--app", "apps:echo", "--no-access-log", "--forwarded-allow-ips", "10.9.9.9")
    info = json.loads(raw_factory(wary.address).request(get("/", extra))[2])
    assert info["remote_addr"] == "127.0.0.1" and info["scheme"] == "http"


@both_listeners
def test_server_errors_close_after_a_framing_error(echo, raw_factory):
    client = raw_factory(echo.address)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n" + get("/smuggled"))
    status, headers, body = client.read_response()
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert "Content-Length" in json.loads(body)["detail"]
    assert client.is_closed()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: snappy\r\n\r\n", 501),
    (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
])
def test_limit_and_version_errors(echo, raw_factory, request_bytes, status):
    client = raw_factory(echo.address)
    got, _, body = client.request(request_bytes)
    assert got == status and json.loads(body)["status"] == status
    assert client.is_closed()


def test_application_exception_is_a_500_and_logged(server_factory, raw_factory):
    server = server_factory("--app", "apps:crash")
    status, headers, body = raw_factory(server.address).request(get("/"))
    assert status == 500 and headers["content-type"] == "application/problem+json"
    assert "boom" not in body.decode()  # no internals leak to the client
    server.wait_for_line(r"RuntimeError: boom: deliberate failure")


def test_exc_info_replaces_a_response_not_yet_sent(server_factory, raw_factory):
    server = server_factory("--app", "apps:crash_after_start", "--no-access-log")
    status, _, body = raw_factory(server.address).request(get("/"))
    assert status == 503 and body == b"replaced"


@both_listeners
def test_short_body_closes_the_connection(server_factory, raw_factory):
    server = server_factory("--app", "apps:short_body", "--no-access-log")
    client = raw_factory(server.address)
    client.send(get("/"))
    with pytest.raises(ConnectionError):
        client.read_response()  # 10 of 100 declared bytes, then the server closes rather than desync


@both_listeners
def test_keepalive_timeout_closes_idle_connections(server_factory, raw_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--keepalive-timeout", "1")
    client = raw_factory(server.address)
    assert client.request(get("/"))[0] == 200
    assert not client.is_closed(timeout=0.3)
    assert client.is_closed(timeout=5)


@both_listeners
def test_header_timeout_answers_408(server_factory, raw_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--header-timeout", "1")
    client = raw_factory(server.address)
    client.send(b"GET / HTTP/1.1\r\nHost:")
    status, _, body = client.read_response(timeout=5)
    assert status == 408 and "head" in json.loads(body)["detail"]
    assert client.is_closed()


@both_listeners
def test_body_timeout_answers_408(server_factory, raw_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--body-timeout", "1")
    client = raw_factory(server.address)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    status, _, body = client.read_response(timeout=5)
    assert status == 408 and "body" in json.loads(body)["detail"]


@both_listeners
def test_slow_app_call_does_not_stall_other_clients(server_factory, raw_factory):
    server = server_factory("--app", "apps:slow", "--no-access-log", "--threads", "4")
    slow = raw_factory(server.address)
    slow.send(get("/?seconds=3"))
    fast = raw_factory(server.address)
    for _ in range(3):
        assert fast.request(get("/?seconds=0"))[2] == b"done"
    # the fast requests completed while the slow one is still running
    slow.sock.settimeout(0.01)
    with pytest.raises(TimeoutError):
        slow.sock.recv(1)
    assert slow.read_response(timeout=10)[2] == b"done"


@both_listeners
def test_idle_keep_alive_connections_do_not_hold_threads(server_factory, raw_factory):
    server = server_factory("--app", "apps:threads", "--no-access-log", "--threads", "2")
    idle = [raw_factory(server.address) for _ in range(60)]
    for client in idle:
        assert client.request(get("/"))[0] == 200
    count = int(raw_factory(server.address).request(get("/"))[2])
    # main loop + 2 workers (+ at most the access-log flusher): never one per connection
    assert count <= 4, count
    for client in idle:  # and all of them are still usable
        assert client.request(get("/"))[0] == 200


def test_many_concurrent_clients(server_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--threads", "8")

    def client_run(n: int) -> int:
        client = RawClient.connect(server.address, timeout=10)
        ok = 0
        try:
            for i in range(20):
                status, _, body = client.request(get(f"/c{n}/{i}"), timeout=10)
                ok += status == 200 and json.loads(body)["path"] == f"/c{n}/{i}"
        finally:
            client.close()
        return ok

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client_run, range(100)))
    assert sum(results) == 100 * 20


@both_listeners
def test_graceful_shutdown_finishes_in_flight_requests(server_factory, raw_factory):
    server = server_factory("--app", "apps:slow", "--threads", "4", "--graceful-timeout", "10")
    busy = raw_factory(server.address)
    busy.send(get("/?seconds=1.5"))
    idle = raw_factory(server.address)
    assert idle.request(get("/?seconds=0"))[0] == 200
    server.wait_for_line(r'"GET /\?seconds=0 HTTP/1.1" 200')
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    status, headers, body = busy.read_response(timeout=10)
    assert status == 200 and body == b"done" and headers["connection"] == "close"
    assert idle.is_closed(timeout=5)
    assert server.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()


def test_a_request_outlasting_the_grace_period_does_not_keep_the_server_running(server_factory, raw_factory):
    server = server_factory("--app", "apps:paced", "--threads", "2", "--graceful-timeout", "1", "--no-access-log")
    busy = raw_factory(server.address)
    busy.send(get("/long?sleep=60&stream=1"))
    busy.read_until(b"/long:begun;")  # inside the application, for a minute
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0  # the grace period (1 s) and a little more, not the minute
    with pytest.raises(ConnectionError):
        busy.read_response(timeout=5)  # cut off: the answer never completed


def test_sigint_also_shuts_down_cleanly(server_factory):
    server = server_factory("--app", "apps:echo")
    server.signal(signal.SIGINT)
    assert server.proc.wait(timeout=10) == 0


@both_listeners
def test_access_log_line(server_factory, raw_factory):
    server = server_factory("--app", "apps:echo")
    raw_factory(server.address).request(get("/logged?q=1", "X-Request-ID: req-42\r\nUser-Agent: ua/1\r\n"))
    match = server.wait_for_line(r'(\S+) - - \[[^\]]+\] "GET /logged\?q=1 HTTP/1.1" 200 (\d+) "-" "ua/1" '
                                 r'([0-9.]+) rid=req-42')
    assert match.group(1) == "127.0.0.1" and int(match.group(2)) > 0


def test_no_access_log_is_quiet(server_factory, raw_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log")
    raw_factory(server.address).request(get("/quiet", "Connection: close\r\n"))
    server.stop()
    assert "/quiet" not in server.output()


def _children(pid: int) -> set[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as fh:
        return {int(p) for p in fh.read().split()}


def _n_children(pid: int, n: int) -> set[int] | None:
    children = _children(pid)
    return children if len(children) == n else None


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_prefork_workers_share_the_socket_and_are_replaced(server_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--workers", "2")
    workers = _wait_for(lambda: _n_children(server.proc.pid, 2))
    victim = next(iter(workers))
    os.kill(victim, signal.SIGKILL)
    replaced = _wait_for(lambda: (c := _n_children(server.proc.pid, 2)) and victim not in c and c)
    assert victim not in replaced
    server.wait_for_line(rf"worker {victim} died \(signal 9\)")
    pids = set()
    for _ in range(40):
        client = RawClient.connect(server.address)
        pids.add(json.loads(client.request(get("/"))[2])["pid"])
        client.close()
    assert pids <= replaced and pids
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert all(not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid) for pid in replaced)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_threads_serve_concurrently(server_factory):
    server = server_factory("--app", "apps:slow", "--no-access-log", "--threads", "4")
    barrier_hits: list[bytes] = []

    def call() -> None:
        client = RawClient.connect(server.address, timeout=10)
        barrier_hits.append(client.request(get("/?seconds=1"), timeout=10)[2])
        client.close()

    started = time.monotonic()
    workers = [threading.Thread(target=call) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert barrier_hits == [b"done"] * 4
    assert time.monotonic() - started < 3.5  # four 1 s calls overlap on four threads, not 4 s in a row


@both_listeners
def test_large_answers_between_small_ones_arrive_whole_and_in_order(server_factory, raw_factory):
    """Answers above the runner's join limit go out as head and body pieces (sendmsg): with pipelined
    small answers around them, and 3 MiB that no socket buffer takes at once (partial sends), every
    answer arrives complete, in order, framed by its Content-Length."""
    server = server_factory("--app", "apps:big", "--no-access-log")
    client = raw_factory(server.address)
    sizes = [10, 3 << 20, 100, 40000, 5]
    client.send(b"".join(get(f"/n{i}?bytes={size}") for i, size in enumerate(sizes)))
    for size in sizes:
        status, headers, body = client.read_response()
        assert status == 200 and int(headers["content-length"]) == size and body == b"x" * size
