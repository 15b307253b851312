"""Answers written in batches: nothing held back reorders, loses or delays an answer behind a slow call."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from harness import RawClient, both_listeners, get

from server.protocol import RequestParser
from server.transport.connection import HOLD_LIMIT, Connection
from server.wsgi.peer import PeerInfo


@pytest.fixture
def paced_one_thread(server_factory):
    """One worker thread, so which request holds it is known."""
    return server_factory("--app", "apps:paced", "--no-access-log", "--threads", "1")


# -- the connection's held answers, over a real socket pair ------------------------------------------------

@pytest.fixture
def conn_and_peer():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(ours, PeerInfo("local", "0"), RequestParser(), 0.0, send_timeout=5.0)
    peer.settimeout(5)
    yield conn, peer
    conn.close()
    peer.close()


def _received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_a_held_answer_is_written_by_flush_and_not_before(conn_and_peer):
    conn, peer = conn_and_peer
    conn.send_response(b"first;")
    conn.send_response(b"second;")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # held, not written
    peer.setblocking(True)
    peer.settimeout(5)
    assert conn.flush() is True and conn.out == b""
    assert _received(peer, 13) == b"first;second;"


def test_every_other_write_sends_held_answers_first(conn_and_peer):
    conn, peer = conn_and_peer
    conn.send_response(b"held;")
    conn.send_all(b"streamed;")
    assert _received(peer, 14) == b"held;streamed;"
    conn.send_response(b"held again;")
    assert conn.send_nowait(b"interim;") is True
    assert _received(peer, 19) == b"held again;interim;"
    assert conn.out == b""


def test_answers_beyond_the_hold_limit_are_written_at_once(conn_and_peer):
    conn, peer = conn_and_peer
    conn.send_response(b"x" * 100)
    big = b"y" * HOLD_LIMIT
    conn.send_response(big)
    assert conn.out == b""
    assert _received(peer, 100 + HOLD_LIMIT) == b"x" * 100 + big


def test_closing_our_side_writes_held_answers_first(conn_and_peer):
    conn, peer = conn_and_peer
    conn.send_response(b"last answer")
    conn.start_draining(0.0)
    assert _received(peer, 11) == b"last answer"
    assert peer.recv(1) == b""  # and then the FIN


# -- through the server -----------------------------------------------------------------------------------

@both_listeners
def test_held_answer_is_written_while_a_later_request_of_its_batch_runs_slow(paced_one_thread, raw_factory):
    server = paced_one_thread
    busy, fast, slow = (raw_factory(server.address) for _ in range(3))
    for client in (busy, fast, slow):
        assert client.request(get("/warm"))[2] == b"/warm"  # accepted and idle
    busy.send(get("/c?sleep=0.5&stream=1"))
    busy.read_until(b"/c:begun;")  # the only thread is inside this call now
    fast.send(get("/b"))
    slow.send(get("/a?sleep=4"))
    # Both come back from one poll once /c is done, /b first: its answer is held for the batch
    # while /a holds the thread for 4 s. The monitor must write it without waiting for /a.
    status, _, body = fast.read_response(timeout=2.5)
    assert (status, body) == (200, b"/b")
    status, _, body = slow.read_response(timeout=15)
    assert (status, body) == (200, b"/a")
    status, _, body = busy.read_response(timeout=5)
    assert status == 200 and body == b"/c:begun;/c"


@both_listeners
def test_pipelined_answer_is_not_held_back_by_the_slow_request_after_it(paced_one_thread, raw_factory):
    client = raw_factory(paced_one_thread.address)
    client.send(get("/fast") + get("/slow?sleep=4"))
    status, _, body = client.read_response(timeout=2.5)
    assert (status, body) == (200, b"/fast")
    status, _, body = client.read_response(timeout=15)
    assert (status, body) == (200, b"/slow")


@both_listeners
def test_interim_100_continue_comes_after_the_answer_before_it(paced_one_thread, raw_factory):
    client = raw_factory(paced_one_thread.address)
    client.send(get("/one") + b"POST /two HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 5\r\n\r\n")
    assert client.read_response()[::2] == (200, b"/one")
    assert client.read_response()[0] == 100
    client.send(b"hello")
    assert client.read_response()[::2] == (200, b"/two")


@both_listeners
def test_error_for_a_bad_pipelined_request_comes_after_the_answer_before_it(paced_one_thread, raw_factory):
    client = raw_factory(paced_one_thread.address)
    client.send(get("/one") + b"NOT A REQUEST LINE\r\n\r\n")
    assert client.read_response()[::2] == (200, b"/one")
    status, headers, body = client.read_response()
    assert status == 400 and headers["content-type"] == "application/problem+json" and b"request line" in body
    assert client.is_closed()


@both_listeners
def test_connection_close_answer_and_the_one_before_it_both_arrive_before_the_close(paced_one_thread,
                                                                                     raw_factory):
    client = raw_factory(paced_one_thread.address)
    client.send(get("/one") + get("/two", "Connection: close\r\n"))
    assert client.read_response()[::2] == (200, b"/one")
    status, headers, body = client.read_response()
    assert (status, body, headers["connection"]) == (200, b"/two", "close")
    assert client.is_closed()


@both_listeners
def test_requests_arriving_while_an_answer_is_held_are_served_in_order(server_factory, raw_factory):
    """The next request sent right behind the previous one, in its own packet, can land while the
    connection is still held for its batch; it must be read once the batch is written."""
    server = server_factory("--app", "apps:paced", "--no-access-log", "--threads", "2")
    failures: list[str] = []

    def client_run(index: int) -> None:
        client = raw_factory(server.address)
        for round_ in range(40):
            paths = [f"/c{index}/r{round_}/{part}" for part in range(3)]
            for path in paths:
                client.send(get(path))  # three writes without waiting for answers
            got = [client.read_response(timeout=10)[2].decode() for _ in paths]
            if got != paths:
                failures.append(f"client {index}: sent {paths}, got {got}")
                return

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert failures == []


def test_a_pipelining_reader_that_lags_gets_every_answer(server_factory):
    """With nothing else to serve, a finished batch goes out at once instead of being held; once the
    client's buffers are full, that write waits for it like any other. Past max_pipeline the connection
    is set aside in the backlog while its thread still waits for the reader; the leader that takes it
    out finds it locked, so the owner must serve it on (it used to return, leaving the rest of the
    requests buffered and unanswered for good). Every answer arrives whole and in order."""
    server = server_factory("--app", "apps:big", "--threads", "2", "--no-access-log")
    lagging = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lagging.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lagging.connect(server.address)
    sizes = [4000 + index % 97 for index in range(1500)]  # a few MiB: more than the kernel buffers
    try:
        for start in range(0, len(sizes), 3):  # three answers to a batch, under HOLD_LIMIT together
            lagging.sendall(b"".join(get(f"/?bytes={size}") for size in sizes[start:start + 3]))
            time.sleep(0.002)  # a batch to a read: the server answers each before the next arrives
        other = server.connect(timeout=10)
        try:
            status, _, body = other.request(get("/?bytes=5"), timeout=10)
            assert (status, body) == (200, b"xxxxx")
        finally:
            other.close()
        reader = RawClient(lagging)
        for index, size in enumerate(sizes):
            status, _, body = reader.read_response(timeout=10)
            assert (status, len(body)) == (200, size), f"answer {index}"
    finally:
        lagging.close()
    assert "Traceback" not in server.output()
