"""Issue 25 #2 and #8 against a real server: clients that read nothing, and the connection limit under TLS."""

from __future__ import annotations

import email.utils
import select
import socket
import ssl
import time

from harness import get, proc_fds, wait_until

GREEDY = 8
PIPELINED = 200


def test_clients_that_never_read_their_answers_hold_no_thread(server_factory):
    """Eight connections, eight threads, each pipelining 200 GET /openapi.json with a 4 KB receive buffer and
    reading nothing: /healthz from anyone else is still answered within 100 ms, every time."""
    server = server_factory("--threads", str(GREEDY), "--no-access-log")
    greedy = []
    try:
        for _ in range(GREEDY):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.address)
            sock.sendall(get("/openapi.json") * PIPELINED)
            greedy.append(sock)
        # Ready when every greedy client has answers waiting that it does not read.
        wait_until(lambda: all(select.select([sock], [], [], 0)[0] for sock in greedy), timeout=10,
                   what="answers waiting at every greedy client")
        waits = []
        for _ in range(20):
            health = server.connect(timeout=5)
            try:
                started = time.monotonic()
                status, _, body = health.request(get("/healthz"), timeout=5)
                waits.append(time.monotonic() - started)
            finally:
                health.close()
            assert status == 200, body
        print(f"/healthz while {GREEDY} clients read nothing: median {sorted(waits)[10] * 1000:.1f} ms, "
              f"max {max(waits) * 1000:.1f} ms")
        assert max(waits) < 0.100
    finally:
        for sock in greedy:
            sock.close()
    assert "Traceback" not in server.output()


def _tls_get(context: ssl.SSLContext, address: tuple[str, int], path: str = "/healthz") -> bytes:
    with (socket.create_connection(address, timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        tls.sendall(get(path))
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:  # one whole answer (all of ours carry Content-Length)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                if len(body) >= length:
                    break
        return data


def test_over_the_limit_a_tls_client_gets_its_503_inside_tls_with_a_live_date(server_factory, tls_certs):
    server = server_factory("--max-connections", "1", "--no-access-log", "--certfile", str(tls_certs.server_cert),
                            "--keyfile", str(tls_certs.server_key))
    context = tls_certs.client_context()
    pid = server.proc.pid
    holder = context.wrap_socket(socket.create_connection(server.address, timeout=5), server_hostname="localhost")
    try:
        holder.sendall(get("/healthz"))
        assert holder.recv(4096).startswith(b"HTTP/1.1 200 ")  # the one slot is taken
        with_holder = proc_fds(pid)
        for _ in range(2):  # and a refused connection, once gone, gives no slot back that it never had
            answer = _tls_get(context, server.address)  # a TLS error here is the old clear-text 503
            head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
            assert head.startswith("HTTP/1.1 503 "), head
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
            assert fields["Retry-After"] == "1"
            date = email.utils.parsedate_to_datetime(fields["Date"]).timestamp()
            assert abs(date - time.time()) < 2.0
            wait_until(lambda: proc_fds(pid) == with_holder, timeout=5, what="the refused connection closed")
    finally:
        holder.close()


def test_a_connection_that_never_starts_its_handshake_holds_a_slot_only_for_the_handshake_timeout(
        server_factory, tls_certs):
    server = server_factory("--max-connections", "1", "--handshake-timeout", "0.5", "--header-timeout", "30",
                            "--no-access-log", "--certfile", str(tls_certs.server_cert),
                            "--keyfile", str(tls_certs.server_key))
    pid = server.proc.pid
    before = proc_fds(pid)
    silent = socket.create_connection(server.address, timeout=5)  # connects, never sends a ClientHello
    try:
        wait_until(lambda: proc_fds(pid) > before, timeout=5, what="the silent connection accepted")
        wait_until(lambda: proc_fds(pid) == before, timeout=5, what="the silent connection dropped")
        assert _tls_get(tls_certs.client_context(), server.address).startswith(b"HTTP/1.1 200 ")
    finally:
        silent.close()


def test_the_limit_holds_from_the_first_connection(server_factory):
    """Right after start-up, two idle connections opened at once take both slots: a third is refused."""
    server = server_factory("--max-connections", "2", "--no-access-log")
    first = socket.create_connection(server.address, timeout=5)
    second = socket.create_connection(server.address, timeout=5)
    third = socket.create_connection(server.address, timeout=5)
    try:
        third.sendall(get("/healthz"))
        assert third.recv(4096).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in (first, second, third):
            sock.close()
