"""Slow clients and overload: slowloris, slow readers, the connection limit and the open-file limit.

The design claim under test: the event loop does every read, so a client that is
slow to send costs a descriptor, never a thread, and the header timeout bounds it;
a client that is slow to read holds a worker only until the send timeout; beyond
``--max-connections`` new connections get a fast 503 instead of exhausting the
process's memory or descriptors.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import time
from pathlib import Path

from harness import StallingClients, proc_fds, proc_threads, read_to_eof, wait_until

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: slow.example\r\n\r\n"


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: slow.example\r\n\r\n"


class Slowloris(StallingClients):
    """Connections that trickle a request head one byte per connection per round, never finishing it."""

    HEAD = b"GET /add/2/3 HTTP/1.1\r\nHost: slow.example\r\nUser-Agent: " + b"s" * 4000

    def opening(self, i: int) -> bytes:
        return self.HEAD[:1]

    def more(self, i: int, round_number: int) -> bytes:
        return self.HEAD[round_number:round_number + 1]


def test_slowloris_does_not_stop_normal_clients_and_is_cut_by_the_header_timeout(server_factory):
    header_timeout = 3.0
    server = server_factory("--no-access-log", "--header-timeout", str(header_timeout))
    loris = Slowloris(server.address, 1000, deadline=time.monotonic() + 30, interval=0.1, name="slowloris")
    loris.thread.start()
    assert loris.started.wait(20) and len(loris.opened) == 1000

    client = server.connect()
    try:
        latencies = []
        pace = time.perf_counter()
        for i in range(200):
            pace += 0.005  # spread the requests over about a second of trickling (10 rounds of 1000 bytes)
            time.sleep(max(0.0, pace - time.perf_counter()))
            started = time.perf_counter()
            status, _, body = client.request(_get(b"/add/%d/3" % i), timeout=5)
            latencies.append(time.perf_counter() - started)
            assert (status, body) == (200, b"%d" % (i + 3))
        still_trickling = 1000 - len(loris.closed_at)
    finally:
        client.close()
    loris.thread.join(timeout=40)
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    lifetimes = [loris.closed_at[i] - loris.opened[i] for i in loris.closed_at]
    print(f"slowloris: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
          f"over 200 requests with {still_trickling} connections trickling; {len(loris.closed_at)} closed after "
          f"{min(lifetimes, default=0):.2f}-{max(lifetimes, default=0):.2f} s")

    assert still_trickling == 1000, "trickling connections were closed before the header timeout"
    assert p99 < 0.100, f"p99 {p99 * 1000:.1f} ms under slowloris"
    assert len(loris.closed_at) == 1000, "some trickling connections were never closed"
    assert min(lifetimes) > header_timeout - 0.5
    answered = [data for data in loris.received.values() if data]
    assert len(answered) == 1000
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered)
    health = server.connect()
    try:
        assert health.request(HEALTH, timeout=2)[0] == 200
    finally:
        health.close()


def test_slow_reader_costs_no_thread_and_is_dropped_after_the_send_timeout(server_factory):
    """A whole answer the client does not read is kept and parked in the poller: the only worker is free at
    once for someone else, and the sweep drops the reader once it has not read for --send-timeout."""
    server = server_factory("--app", "apps:big", "--threads", "1", "--send-timeout", "1", "--no-access-log")
    pid = server.proc.pid
    threads_before = proc_threads(pid)
    size = 64 << 20
    reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(server.address)
    try:
        reader.sendall(_get(b"/?bytes=%d" % size))
        reader.settimeout(5)
        assert reader.recv(1024).startswith(b"HTTP/1.1 200 ")  # the answer is under way, and we stop reading
        fds_with_reader = proc_fds(pid)

        other = server.connect(timeout=15)
        try:
            started = time.monotonic()
            status, _, body = other.request(_get(b"/?bytes=5"), timeout=15)
            waited = time.monotonic() - started
            assert (status, body) == (200, b"xxxxx")
        finally:
            other.close()

        # The sweep closes the reader's connection once it has made no progress for the send timeout.
        wait_until(lambda: proc_fds(pid) < fds_with_reader, timeout=10, what="the slow reader dropped")
        received = 0
        reader.settimeout(10)
        while True:  # what it can still read ends well short of the body
            try:
                chunk = reader.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
    finally:
        reader.close()
    print(f"slow reader: the other client waited {waited * 1000:.1f} ms; the slow reader got {received >> 10} KiB "
          f"of {size >> 20} MiB before being dropped")
    assert received < size // 2
    assert waited < 0.5, "the other client waited for the slow reader: it held the only worker"
    assert proc_threads(pid) == threads_before
    assert "Traceback" not in server.output()


def test_connection_limit_answers_503_fast_and_bounds_descriptors(server_factory, raw_factory):
    limit = 20
    server = server_factory("--app", "apps:echo", "--max-connections", str(limit), "--no-access-log")
    pid = server.proc.pid
    fds_idle = proc_fds(pid)
    held = [raw_factory(server.address) for _ in range(limit)]
    for client in held:
        assert client.request(_get(b"/held"))[0] == 200  # each one is now known to the server and kept alive

    refused = 0
    peak_fds = 0
    extra: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(server.address, timeout=5)
            extra.append(sock)
            sock.sendall(_get(b"/over"))
        for sock in extra:
            data = read_to_eof(sock)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), data[:200]
            assert b"\r\nRetry-After: " in head and b"\r\nConnection: close" in head
            assert json.loads(body)["status"] == 503
            refused += 1
            peak_fds = max(peak_fds, proc_fds(pid))
    finally:
        for sock in extra:
            sock.close()
    print(f"connection limit: {refused} over-limit connections refused with 503; server descriptors "
          f"{fds_idle} idle, at most {peak_fds} with {limit} held")
    assert refused == 300
    assert peak_fds <= fds_idle + limit + 5
    for client in held:  # the held connections were not disturbed
        assert client.request(_get(b"/still"))[0] == 200
    held[0].close()
    wait_until(lambda: proc_fds(pid) < fds_idle + limit, timeout=10, what="the closed connection to be released")
    assert raw_factory(server.address).request(_get(b"/after"))[0] == 200


def test_open_file_soft_limit_is_raised_to_the_hard_limit(server_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(512, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        server = server_factory("--no-access-log")  # inherits the lowered soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    server_soft, server_hard = line.split()[3:5]
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert (server_soft, server_hard) == (expected, expected), line
    if hard != resource.RLIM_INFINITY:
        assert f"open files {hard}" in server.output()
