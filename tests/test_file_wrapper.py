"""wsgi.file_wrapper: files go out with sendfile(2), exactly as many bytes as declared, the file closed after.

How we know sendfile was used, without tracing the server: Linux counts the
bytes a process moves in ``/proc/<pid>/io``. ``wchar`` grows with write(2) and
with sendfile(2) (fs/read_write.c accounts both), but not with send(2) on a
socket, which is how every other response leaves this server. So serving an
N-byte file must grow the server's ``wchar`` by at least N; the same bytes from
a ``BytesIO`` (no descriptor, so they are iterated and sent with send) must not
- that second half shows the measure can tell the two apart. On a TLS listener
the bytes must be encrypted in the process, so there the file must not go
through sendfile either, and the same counter shows that too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from harness import RawClient, both_listeners, get, wait_until

SIZE = 6 * 1024 * 1024 + 12345  # several MiB, not a multiple of any block size


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path_factory.mktemp("files") / "payload.bin"
    path.write_bytes(data)
    return path, data


def written(pid: int) -> int:
    """Bytes the process wrote with write(2) or sendfile(2) so far (not with send(2))."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


def files_server(server_factory, payload, *args: str):
    return server_factory("--app", "apps:files", "--no-access-log", *args, env={"SERVED_FILE": str(payload[0])})


def closed_count(client: RawClient) -> int:
    status, _, body = client.request(get("/closed"))
    assert status == 200
    return int(body)


def check_sendfile(grew: int, listener_kind: str) -> None:
    if listener_kind == "tls":
        assert grew < SIZE // 100, f"no sendfile under TLS (the bytes must be encrypted): wchar grew by {grew}"
    else:
        assert grew >= SIZE, f"sendfile moved the file: wchar grew by {grew}"


@both_listeners
def test_file_is_sent_byte_exact_with_sendfile_and_closed(server_factory, payload, listener_kind):
    server = files_server(server_factory, payload)
    client = server.connect(timeout=10)
    before = written(server.proc.pid)
    status, headers, body = client.request(get("/file"), timeout=20)
    after = written(server.proc.pid)
    assert status == 200 and headers["content-length"] == str(SIZE) and "transfer-encoding" not in headers
    assert body == payload[1]
    check_sendfile(after - before, listener_kind)
    # The same bytes without a descriptor: iterated, chunked, sent with send(2); wchar hardly moves.
    before = written(server.proc.pid)
    status, headers, body = client.request(get("/memory"), timeout=20)
    after = written(server.proc.pid)
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == payload[1]
    assert after - before < SIZE // 100, f"no sendfile for a BytesIO: wchar grew by {after - before}"
    assert closed_count(client) == 2, "close() was called on both files"
    client.close()


@both_listeners
def test_head_sends_the_length_and_no_body(server_factory, payload):
    server = files_server(server_factory, payload)
    client = server.connect()
    status, headers, body = client.request(b"HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (status, headers["content-length"], body) == (200, str(SIZE), b"")
    # No body bytes came after the head: the next answer on the connection parses cleanly.
    assert client.request(get("/next"))[2] == b"/next"
    assert closed_count(client) == 1
    client.close()


@pytest.mark.parametrize(("query", "start", "length"), [
    ("length=1000", 0, 1000),
    ("offset=100&length=50", 100, 50),
    ("offset=4096", 4096, SIZE - 4096),
    ("length=0", 0, 0),
])
@both_listeners
def test_content_length_and_position_decide_what_is_sent(server_factory, payload, query, start, length):
    server = files_server(server_factory, payload)
    client = server.connect()
    status, headers, body = client.request(get(f"/file?{query}"), timeout=20)
    assert (status, headers["content-length"]) == (200, str(length))
    assert body == payload[1][start:start + length]
    assert client.request(get("/after"))[2] == b"/after", "not one byte more than Content-Length"
    client.close()


@both_listeners
def test_file_shorter_than_its_content_length_closes_the_connection(server_factory, payload):
    server = files_server(server_factory, payload)
    client = server.connect()
    client.send(get(f"/file?offset={SIZE - 10}&length=20"))
    client.read_until(b"\r\n\r\n")
    head, _, rest = client.buffer.partition(b"\r\n\r\n")
    assert b"Content-Length: 20" in head
    client.buffer = b""
    client.sock.settimeout(5)
    while (piece := client.sock.recv(65536)):
        rest += piece
    assert rest == payload[1][-10:], "what the file had, then the close: the client sees a short body"
    server.wait_for_line(r"(the file ended after|application sent) 10 of its (declared )?20 bytes")
    assert "Traceback" not in server.output()


@both_listeners
def test_pipelined_answers_keep_their_order_around_a_file(server_factory, payload):
    server = files_server(server_factory, payload)
    client = server.connect()
    client.send(get("/first") + get("/file?length=70000") + get("/second") + get("/file?offset=7&length=3"))
    assert client.read_response()[2] == b"/first"
    assert client.read_response(timeout=10)[2] == payload[1][:70000]
    assert client.read_response()[2] == b"/second"
    assert client.read_response()[2] == payload[1][7:10]
    client.close()


def test_client_leaving_mid_file_is_no_error(server_factory, payload):
    server = files_server(server_factory, payload, "--send-timeout", "5")
    leaver = socket.socket()
    leaver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    leaver.settimeout(5)
    leaver.connect(server.address)
    leaver.sendall(get("/file"))
    received = 0
    while received < 200_000:
        piece = leaver.recv(65536)
        assert piece, f"the server closed after {received} bytes, before the file was under way"
        received += len(piece)
    leaver.close()  # with unread data: a reset, in the middle of the sendfile loop
    client = server.connect()
    wait_until(lambda: closed_count(client) == 1, timeout=10, what="the abandoned file to be closed")
    status, _, body = client.request(get("/file?length=5"))
    assert (status, body) == (200, payload[1][:5]), "the server keeps serving"
    client.close()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(("app", "path"), [("flask_app:app", "/download"), ("django_app:application", "/download")])
@both_listeners
def test_framework_file_responses_use_the_file_wrapper(server_factory, payload, app, path, listener_kind):
    """Flask's send_file and Django's FileResponse hand their open file to wsgi.file_wrapper: sent by sendfile."""
    server = server_factory("--app", app, "--no-access-log", env={"SERVED_FILE": str(payload[0])})
    client = server.connect(timeout=10)
    before = written(server.proc.pid)
    status, headers, body = client.request(get(path), timeout=20)
    after = written(server.proc.pid)
    assert status == 200 and headers["content-length"] == str(SIZE) and body == payload[1]
    check_sendfile(after - before, listener_kind)
    status, headers, body = client.request(b"HEAD " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (status, headers["content-length"], body) == (200, str(SIZE), b"")
    assert client.request(get("/hello/x"))[0] == 200, "the connection is still in step"
    client.close()


def test_flask_byte_range_of_a_file(server_factory, payload):
    """Werkzeug answers a Range request by wrapping our wrapper: still the right bytes, 206, and in step."""
    server = server_factory("--app", "flask_app:app", "--no-access-log", env={"SERVED_FILE": str(payload[0])})
    client = server.connect(timeout=10)
    status, headers, body = client.request(get("/download", "Range: bytes=1000-1999\r\n"))
    assert (status, headers["content-range"], body) == (206, f"bytes 1000-1999/{SIZE}", payload[1][1000:2000])
    assert client.request(get("/hello/x"))[0] == 200
    client.close()


def test_file_over_a_unix_socket_listener(server_factory, payload):
    """sendfile(2) writes to a Unix stream socket as well: byte exact, and still no copy through Python."""
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="calc-")  # short: a socket path has at most 107 bytes
    try:
        path = os.path.join(directory, "files.sock")
        server = files_server(server_factory, payload, "-b", f"unix:{path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        client = RawClient(sock)
        before = written(server.proc.pid)
        status, headers, body = client.request(get("/file"), timeout=20)
        after = written(server.proc.pid)
        assert (status, headers["content-length"], body == payload[1]) == (200, str(SIZE), True)
        check_sendfile(after - before, "plain")
        assert client.request(get("/after"))[2] == b"/after"
        client.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
