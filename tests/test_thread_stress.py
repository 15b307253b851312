"""Many threads at once on the pieces a server's threads share.

The shared pieces: the parsers' HeaderCache (one per server: the blocks that began connections,
the compiled block shapes), the metrics recorders, the connection table, the request count that drives
``--max-requests``, and the slot of shared memory a worker and its master both map. Each test
drives one of them from many threads at once and checks a result that a lost update or a torn
read would change: exact counts, answers that match their own requests, parses that match a
parse done alone.

With the GIL these nearly always pass even on racy code; they are written for the free-threaded
lane of the test matrix (scripts/test runs them under a CPython built with --disable-gil, with
PYTHON_GIL=0), where an unlocked read-modify-write shared by threads loses updates at once.
The in-process tests hammer a piece directly; the server tests go through real sockets, so they
check the pieces as the server wires them together, under the contention a busy server sees.
"""

from __future__ import annotations

import random
import re
import socket
import threading
from collections.abc import Callable

from harness import wait_until
from prometheus_client.parser import text_string_to_metric_families

from server.protocol import HeaderCache, Limits, RequestParser
from server.transport.worker import BOOTING, READY, RECYCLE, WorkerSlot

THREADS = 8


def run_together(count: int, work: Callable[[int], None]) -> None:
    """``work(i)`` in ``count`` threads released at the same moment; re-raises the first failure."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # a failure in any thread fails the test
            failures.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a stress thread did not finish within 120 s"
    if failures:
        raise failures[0]


# -- the parser's shared memo ----------------------------------------------------------------------


def _request(i: int) -> bytes:
    """One of many distinct requests: different header blocks, some with bodies, some HTTP/1.0."""
    rnd = random.Random(i)
    lines = [f"Host: h{i % 7}.example", f"X-Request-Id: {i:08x}"]
    if rnd.random() < 0.5:
        lines.append("Accept: application/json")
    if rnd.random() < 0.3:
        lines.append(f"User-Agent: client/{i % 13}")
    if rnd.random() < 0.3:
        lines.append("Connection: close")
    body = b""
    if rnd.random() < 0.4:
        body = f'{{"op":"add","arg1":{i},"arg2":{i % 5}}}'.encode()
        lines.append(f"Content-Length: {len(body)}")
        if rnd.random() < 0.5:
            lines.append("Content-Type: application/json")
    rnd.shuffle(lines)
    version = "HTTP/1.0" if rnd.random() < 0.1 else "HTTP/1.1"
    method = "POST" if body else "GET"
    head = "\r\n".join([f"{method} /add/{i}/{i % 9}?n={i} {version}", *lines])
    return f"{head}\r\n\r\n".encode() + body


def _parse(data: bytes, limits: Limits, cache: HeaderCache | None) -> tuple[object, ...]:
    parser = RequestParser(limits, cache)
    parser.feed(data)
    request = parser.next_request()
    assert request is not None
    return (request.method, request.target, request.path, request.query, request.version, tuple(request.headers),
            request.host, request.keep_alive, request.chunked, request.expect_continue, bytes(request.body))


def test_parsers_sharing_one_memo_parse_as_one_alone():
    """Eight threads parse the same 1000 requests in different orders, with fresh parsers sharing one
    HeaderCache (as one server's connections do), over more distinct blocks than it keeps, so threads
    insert, look up and start its tables over all at once. Every parse must equal a parse done alone
    with no cache: an entry seen half-made, or facts kept under another block's key, changes one."""
    limits = Limits()
    requests = [_request(i) for i in range(1000)]
    alone = [_parse(data, limits, None) for data in requests]
    shared = HeaderCache(limits)

    def work(t: int) -> None:
        order = list(range(len(requests)))
        random.Random(t).shuffle(order)
        for _ in range(3):
            for i in order:
                got = _parse(requests[i], limits, shared)
                assert got == alone[i], f"thread {t}: request {i} parsed differently with the shared memo"

    run_together(THREADS, work)


def test_one_connection_parser_per_thread_with_repeats():
    """A connection's parser keeps its own memo of the last block and takes block shapes from the shared
    cache; eight connections (one per thread), each sending blocks that change one line (a request id, as
    a proxy's do), must each read exactly their own requests."""
    limits = Limits()
    shared = HeaderCache(limits)

    def work(t: int) -> None:
        parser = RequestParser(limits, shared)
        for n in range(3000):
            parser.feed(f"GET /add/{t}/{n} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {t}-{n}\r\n"
                        f"Accept: */*\r\n\r\n".encode())
            request = parser.next_request()
            assert request is not None
            assert request.target == f"/add/{t}/{n}"
            assert ("X-Request-Id", f"{t}-{n}") in [(k.title(), v) for k, v in request.headers]

    run_together(THREADS, work)


# -- the worker's slot of shared memory -------------------------------------------------------------


def test_worker_slot_readings_are_whole():
    """The worker's main thread beats and sets its state while the master's side reads (here: threads of one
    process, the same memory). Every reading is a beat that was written, never a mix of two, and a state
    that exists; and readings never go back in time."""
    slot = WorkerSlot(0.0)
    beats = 200_000
    done = threading.Event()
    # Beats whose 8 bytes differ in every byte from their neighbours', so a torn read is not a beat.
    values = [float(n) * 1.000000123456789 for n in range(beats)]
    written = set(values)
    written.add(0.0)

    def writer() -> None:
        states = (BOOTING, READY, RECYCLE)
        for n, value in enumerate(values):
            slot.beat(value)
            if n % 1000 == 0:
                slot.set_state(states[n // 1000 % 3], wake_master=False)
        done.set()

    def reader(_: int) -> None:
        last = 0.0
        while not done.is_set():
            beat, state = slot.read()
            assert beat in written, f"a torn beat: {beat!r}"
            assert beat >= last, "a beat went back in time"
            assert state in (BOOTING, READY, RECYCLE)
            last = beat

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run_together(4, reader)
    finally:
        thread.join()
        slot.close()


# -- a real server: the connection table, the metrics recorders, the request count --------------------


def _metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def _total(series, name: str) -> float:
    return sum(v for (n, _), v in series.items() if n == name)


def _hammer(address: tuple[str, int], clients: int, connections: int, per_connection: int) -> int:
    """``clients`` threads, each opening ``connections`` connections one after another and sending
    ``per_connection`` requests on each, pipelined a few at a time; every answer is checked against its
    own request (GET /add/a/b -> a+b). Returns the number of requests answered."""
    answer = re.compile(rb"HTTP/1\.1 200 OK\r\n(?:[^\r\n]+\r\n)*?Content-Length: (\d+)\r\n(?:[^\r\n]+\r\n)*\r\n")

    def work(t: int) -> None:
        for c in range(connections):
            with socket.create_connection(address, timeout=30) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffered = b""
                n = 0
                while n < per_connection:
                    batch = range(n, min(n + 4, per_connection))
                    sock.sendall(b"".join(f"GET /add/{t * 100000 + c * 1000}/{k} HTTP/1.1\r\nHost: t\r\n\r\n"
                                          .encode() for k in batch))
                    for k in batch:
                        while True:
                            match = answer.match(buffered)
                            if match and len(buffered) >= match.end() + int(match.group(1)):
                                break
                            chunk = sock.recv(65536)
                            assert chunk, f"client {t}: connection closed before answer {k}"
                            buffered += chunk
                        end = match.end() + int(match.group(1))
                        body = buffered[match.end():end]
                        assert body.strip() == str(t * 100000 + c * 1000 + k).encode(), (t, c, k, body)
                        buffered = buffered[end:]
                    n += len(batch)

    run_together(clients, work)
    return clients * connections * per_connection


def test_every_request_and_connection_counted(server_factory):
    """16 clients at once against 8 serving threads: the metrics count every answered request and every
    accepted connection exactly, and the connection table empties (open connections back to 0)."""
    server = server_factory("--threads", str(THREADS), "--metrics-bind", "127.0.0.1:0", "--no-access-log")
    url = server.wait_for_line(r"metrics on (http://\S+)/metrics").group(1)
    clients, connections, per_connection = 16, 5, 60
    sent = _hammer(server.address, clients, connections, per_connection)

    def settled():
        series = _metrics(url)
        open_now = _total({k: v for k, v in series.items() if k[0] == "calc_server_connections"},
                          "calc_server_connections")
        done = (_total(series, "calc_server_requests_total") >= sent
                and _total(series, "calc_server_connections_accepted_total") >= clients * connections
                and open_now == 0)
        return series if done else None

    series = wait_until(settled, 10, f"{sent} requests and {clients * connections} connections counted")
    assert _total(series, "calc_server_requests_total") == sent
    assert _total(series, "calc_server_connections_accepted_total") == clients * connections
    assert _total(series, "calc_server_connections_refused_total") == 0


def test_max_requests_counts_every_request(server_factory):
    """--max-requests N: the worker asks to be replaced once it has served N requests. Exactly N requests
    from 16 clients at once must get it replaced: a count that loses increments between threads stays
    below N and the worker is never replaced."""
    limit = 16 * 3 * 64
    server = server_factory("--master", "--threads", str(THREADS), "--max-requests", str(limit),
                            "--no-access-log")
    sent = _hammer(server.address, 16, 3, limit // 48)
    assert sent == limit
    server.wait_for_line(rf"served its {limit} requests; replacing it", timeout=15)
