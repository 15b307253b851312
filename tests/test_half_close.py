"""Clients that close their sending side (RFC 9112 9.6): every complete request before the EOF is answered.

``shutdown(SHUT_WR)`` after the request is what ``nc -N``, many HTTP/1.0 tools
and some health checkers do. The server must answer every complete request it
received before the EOF, in order, and only then close; a request the EOF cut
off gets a 400. Each test takes one path an answer can go out by: held for a
batch, streamed, written by the monitor for a stalled thread, after an interim
100 Continue, an error, and during shutdown.
"""

from __future__ import annotations

import signal
import socket

import pytest
from harness import RawClient, both_listeners, get, proc_fds, wait_until


def _answers_then_close(client: RawClient, count: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Read ``count`` answers, then check the server closed the connection."""
    got = [client.read_response(timeout=timeout)[::2] for _ in range(count)]
    assert client.is_closed(timeout=timeout), f"still open after {got}"
    return got


@pytest.fixture
def paced(server_factory):
    return server_factory("--app", "apps:paced", "--no-access-log", "--threads", "2")


def test_one_request_then_half_close_is_answered(calc_server, raw_factory):
    client = raw_factory(calc_server.address)
    client.send(get("/add/2/3"))
    client.half_close()
    assert _answers_then_close(client, 1) == [(200, b"5")]


def test_pipelined_requests_then_half_close_are_all_answered_in_order(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(b"".join(get(f"/p{i}") for i in range(10)))
    client.half_close()
    assert _answers_then_close(client, 10) == [(200, f"/p{i}".encode()) for i in range(10)]


def test_more_pipelined_requests_than_one_turn_serves_then_half_close(server_factory, raw_factory):
    """Past --max-pipeline the connection goes to the back of the queue with requests still buffered."""
    server = server_factory("--app", "apps:paced", "--no-access-log", "--max-pipeline", "2")
    client = raw_factory(server.address)
    client.send(b"".join(get(f"/q{i}") for i in range(7)))
    client.half_close()
    assert _answers_then_close(client, 7) == [(200, f"/q{i}".encode()) for i in range(7)]


def test_half_close_in_a_later_packet_after_the_request(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(get("/first"))
    assert client.read_response()[::2] == (200, b"/first")
    client.send(get("/second"))
    client.half_close()
    assert _answers_then_close(client, 1) == [(200, b"/second")]


def test_streamed_answer_then_half_close(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(get("/held") + get("/s?stream=1&sleep=0.2") + get("/after"))
    client.half_close()
    assert _answers_then_close(client, 3) == [(200, b"/held"), (200, b"/s:begun;/s"), (200, b"/after")]


@pytest.fixture
def batch_then_stall(server_factory, raw_factory):
    """One thread; /b and then /a (3 s) come back from one poll, so /b's answer is held while /a runs."""
    server = server_factory("--app", "apps:paced", "--no-access-log", "--threads", "1")
    busy, fast, slow = (raw_factory(server.address) for _ in range(3))
    for client in (busy, fast, slow):
        assert client.request(get("/warm"))[2] == b"/warm"
    busy.send(get("/c?sleep=0.5&stream=1"))
    busy.read_until(b"/c:begun;")  # the only thread is inside this call
    yield fast, slow
    assert slow.read_response(timeout=15)[::2] == (200, b"/a")
    assert busy.read_response()[::2] == (200, b"/c:begun;/c")


def test_half_closed_client_in_a_batch_before_a_slow_call_is_answered_at_once(batch_then_stall):
    fast, slow = batch_then_stall
    fast.send(get("/b"))
    fast.half_close()
    slow.send(get("/a?sleep=3"))
    assert _answers_then_close(fast, 1, timeout=2.5) == [(200, b"/b")]  # not after /a's 3 s


def test_half_close_after_the_monitor_wrote_a_held_answer(batch_then_stall):
    """The monitor writes /b for the stuck thread and lets the connection go; the EOF that follows
    is read once a thread is free again, and closes the connection with nothing more written."""
    fast, slow = batch_then_stall
    fast.send(get("/b"))
    slow.send(get("/a?sleep=3"))
    assert fast.read_response(timeout=2.5)[::2] == (200, b"/b")
    fast.send(get("/b2"))
    fast.half_close()
    assert _answers_then_close(fast, 1, timeout=10) == [(200, b"/b2")]


def test_expect_100_continue_body_then_half_close(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert client.read_response()[0] == 100
    client.send(b"body")
    client.half_close()
    assert _answers_then_close(client, 1) == [(200, b"/e")]


def test_expect_100_continue_head_cut_off_by_half_close_gets_400(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(get("/before") + b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    client.half_close()
    first, interim = client.read_response()[::2], client.read_response()[0]
    assert (first, interim) == ((200, b"/before"), 100)
    status, _, body = client.read_response()
    assert status == 400 and b"body was complete" in body
    assert client.is_closed()


def test_request_cut_off_by_half_close_gets_400_after_the_answers_before_it(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(get("/one") + get("/two") + b"GET /three HTTP/1.1\r\nHo")
    client.half_close()
    got = _answers_then_close(client, 3)
    assert got[:2] == [(200, b"/one"), (200, b"/two")]
    assert got[2][0] == 400 and b"head was complete" in got[2][1]


def test_malformed_request_after_a_good_one_then_half_close(paced, raw_factory):
    client = raw_factory(paced.address)
    client.send(get("/ok") + b"NOT A REQUEST LINE\r\n\r\n" + get("/never"))
    client.half_close()
    got = _answers_then_close(client, 2)
    assert got[0] == (200, b"/ok") and got[1][0] == 400  # nothing after the error answer


def test_application_error_then_half_close(server_factory, raw_factory):
    server = server_factory("--app", "apps:crash", "--no-access-log")
    client = raw_factory(server.address)
    client.send(get("/"))
    client.half_close()
    assert [status for status, _ in _answers_then_close(client, 1)] == [500]


def test_half_closed_requests_are_answered_during_shutdown(server_factory, raw_factory):
    server = server_factory("--app", "apps:paced", "--no-access-log", "--threads", "2", "--graceful-timeout", "10")
    running = raw_factory(server.address)
    idle = raw_factory(server.address)
    assert idle.request(get("/warm"))[2] == b"/warm"
    running.send(get("/long?sleep=0.5&stream=1") + get("/next"))
    running.half_close()
    running.read_until(b"/long:begun;")
    server.signal(signal.SIGTERM)
    idle.send(get("/late") + get("/later"))  # sent just after the signal, before the server closes idle ones
    idle.half_close()
    assert _answers_then_close(running, 2, timeout=10) == [(200, b"/long:begun;/long"), (200, b"/next")]
    # Both were sent before the server closed anything: both are answered, the last with Connection: close.
    late, later = idle.read_response(timeout=10), idle.read_response(timeout=10)
    assert late[::2] == (200, b"/late") and "connection" not in late[1]
    assert later[::2] == (200, b"/later") and later[1]["connection"] == "close"
    assert idle.is_closed()
    assert server.proc.wait(timeout=15) == 0


@both_listeners
def test_a_client_closing_after_its_last_bytes_is_forgotten_at_once(server_factory, listener_kind):
    """After an answer with ``Connection: close`` the server lingers (up to 2 s) for the client's close.
    A client's last bytes and its FIN can come in one segment: a TLS client's close_notify and its close,
    here forced with TCP_CORK. The server must read on to the EOF and close then, not keep the
    connection (and its TLS state) open until the linger ends: a busy TLS server held thousands so."""
    server = server_factory("--no-access-log")
    baseline = proc_fds(server.proc.pid)
    for _ in range(5):
        client = RawClient.connect(server.address, tls=server.tls)
        status, headers, body = client.request(get("/add/2/3", "Connection: close\r\n"))
        assert (status, headers.get("connection"), body) == (200, "close", b"5")
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # hold what follows until the FIN
        if server.tls is None:
            client.sock.sendall(b"\r\n")  # bytes the draining server reads and drops
            raw = client.sock
        else:
            raw = client.sock.unwrap()  # our close_notify (held back by the cork); the server's was read
        raw.shutdown(socket.SHUT_WR)  # the held bytes and the FIN leave together
        raw.close()
    wait_until(lambda: proc_fds(server.proc.pid) <= baseline, timeout=1.0,
               what="the server closing every connection well before its 2 s linger ends")
