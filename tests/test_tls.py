"""TLS listeners over real sockets: the environ, client certificates, bad clients, stalled handshakes, rotation.

Certificates are made by the ``tls_certs`` fixture (cryptography); the client side is the standard
library's ``ssl`` module, and certificate facts are checked against what cryptography reads from the
files, not against the server's own formatting code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import ssl
import statistics
import time
import warnings

import pytest
from harness import RawClient, StallingClients, get, proc_fds, proc_threads, wait_until


@pytest.fixture
def tls_echo(server_factory, tls_certs):
    return server_factory("--app", "apps:echo", "--no-access-log", "--certfile", str(tls_certs.server_cert),
                          "--keyfile", str(tls_certs.server_key), "--ca-certs", str(tls_certs.ca_cert),
                          "--cert-reqs", "optional")


def _info(client: RawClient, path: str = "/") -> dict:
    status, _, body = client.request(get(path))
    assert status == 200
    return json.loads(body)


def test_environ_says_https_and_carries_the_client_certificate(tls_echo, tls_certs):
    x509 = pytest.importorskip("cryptography.x509", reason="no cryptography here (no free-threaded wheel)")

    anonymous = RawClient.connect(tls_echo.address, tls=tls_certs.client_context())
    try:
        info = _info(anonymous)
    finally:
        anonymous.close()
    assert info["scheme"] == "https"
    assert info["tls"]["HTTPS"] == "on" and info["tls"]["SSL_CLIENT_VERIFY"] == "NONE"
    assert info["tls"]["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    assert "SSL_CLIENT_S_DN" not in info["tls"]

    known = RawClient.connect(tls_echo.address, tls=tls_certs.client_context(with_cert=True))
    try:
        info = _info(known)
        cipher = known.sock.cipher()[0]
    finally:
        known.close()
    tls = info["tls"]
    cert = x509.load_pem_x509_certificate(tls_certs.client_cert.read_bytes())
    assert tls["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert tls["SSL_CLIENT_S_DN"] == cert.subject.rfc4514_string() == "CN=alice,O=calc tests"
    assert tls["SSL_CLIENT_I_DN"] == cert.issuer.rfc4514_string()
    assert tls["SSL_CLIENT_S_DN_CN"] == "alice"
    assert int(tls["SSL_CLIENT_SERIAL"], 16) == cert.serial_number
    sent = x509.load_pem_x509_certificate(tls["SSL_CLIENT_CERT"].encode())
    assert sent.fingerprint(sent.signature_hash_algorithm) == cert.fingerprint(cert.signature_hash_algorithm)
    assert tls["SSL_CIPHER"] == cipher


def test_required_client_certificate_refuses_anonymous_clients(server_factory, tls_certs):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--certfile", str(tls_certs.server_cert),
                            "--keyfile", str(tls_certs.server_key), "--ca-certs", str(tls_certs.ca_cert),
                            "--cert-reqs", "required")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = RawClient.connect(server.address, tls=tls_certs.client_context())
        try:
            client.request(get("/"))  # under TLS 1.3 the refusal arrives after the client's side finished
        finally:
            client.close()
    known = RawClient.connect(server.address, tls=tls_certs.client_context(with_cert=True))
    try:
        assert _info(known)["tls"]["SSL_CLIENT_S_DN_CN"] == "alice"
    finally:
        known.close()
    assert "Traceback" not in server.output()


def test_alpn_is_http11_and_tls_below_12_is_refused(tls_echo, tls_certs):
    context = tls_certs.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    client = RawClient.connect(tls_echo.address, tls=context)
    try:
        assert client.sock.selected_alpn_protocol() == "http/1.1"
        assert client.request(get("/"))[0] == 200
    finally:
        client.close()
    old = tls_certs.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point is to offer what is deprecated
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient.connect(tls_echo.address, tls=old).close()
    twelve = tls_certs.client_context()
    twelve.maximum_version = ssl.TLSVersion.TLSv1_2
    client = RawClient.connect(tls_echo.address, tls=twelve)
    try:
        assert _info(client)["tls"]["SSL_PROTOCOL"] == "TLSv1.2"
    finally:
        client.close()


def test_plain_http_to_a_tls_port_gets_a_short_400_and_is_closed(tls_echo):
    with socket.create_connection(tls_echo.address, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(get("/plain"))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 400 ") and b"plain HTTP request" in data
    assert elapsed < 2
    with socket.create_connection(tls_echo.address, timeout=5) as sock:  # not HTTP, not TLS: just closed
        sock.sendall(b"\x00\x01garbage" * 10)
        assert sock.recv(4096) == b""
    assert "Traceback" not in tls_echo.output()


def test_big_and_streamed_answers_arrive_whole_over_tls(server_factory, tls_certs):
    server = server_factory("--app", "apps:big", "--no-access-log", "--certfile", str(tls_certs.server_cert),
                            "--keyfile", str(tls_certs.server_key))
    server.tls = tls_certs.client_context()
    client = server.connect(timeout=20)
    try:
        for size in (1, 16383, 16385, 65537, 5 << 20):
            status, headers, body = client.request(get(f"/?bytes={size}"), timeout=20)
            assert status == 200 and len(body) == size == int(headers["content-length"]) and body == b"x" * size
    finally:
        client.close()


def test_tls_slow_reader_costs_no_thread_and_is_dropped_after_the_send_timeout(server_factory, tls_certs):
    server = server_factory("--app", "apps:big", "--threads", "1", "--send-timeout", "1", "--no-access-log",
                            "--certfile", str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key))
    server.tls = tls_certs.client_context()
    pid = server.proc.pid
    threads_before = proc_threads(pid)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(server.address)
    reader = tls_certs.client_context().wrap_socket(raw, server_hostname="localhost")
    size = 64 << 20
    try:
        reader.sendall(get(f"/?bytes={size}"))
        reader.settimeout(5)
        assert reader.recv(1024).startswith(b"HTTP/1.1 200 ")  # and now we stop reading
        fds_with_reader = proc_fds(pid)
        started = time.monotonic()
        other = server.connect(timeout=15)
        try:
            assert other.request(get("/?bytes=5"), timeout=15)[::2] == (200, b"xxxxx")
            waited = time.monotonic() - started
        finally:
            other.close()
        wait_until(lambda: proc_fds(pid) < fds_with_reader, timeout=10, what="the slow TLS reader dropped")
        received = 0
        reader.settimeout(10)
        while True:
            try:
                chunk = reader.recv(1 << 20)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += len(chunk)
    finally:
        reader.close()
    assert received < size // 2
    assert waited < 0.5, "the other client waited for the slow reader: it held the only worker"
    assert proc_threads(pid) == threads_before
    assert "Traceback" not in server.output()


def test_encrypted_key_with_a_password_file_and_bad_tls_settings(server_factory, tls_certs, tmp_path):
    cert, key = tls_certs.issue("locked", "localhost", password=b"s3cret")
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    server = server_factory("--app", "apps:echo", "--no-access-log", "--certfile", str(cert), "--keyfile", str(key),
                            "--keyfile-password-file", str(password))
    assert server.output().count("https://") == 1
    client = RawClient.connect(server.address, tls=tls_certs.client_context())
    try:
        assert _info(client)["scheme"] == "https"
    finally:
        client.close()

    import subprocess
    import sys

    from harness import ROOT

    password.write_text("wrong\n")
    cases = [
        ([str(cert), "--keyfile", str(key), "--keyfile-password-file", str(password)], "cannot set up TLS"),
        ([str(cert), "--keyfile", str(tls_certs.server_key)], "key values mismatch"),
        ([str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key), "--cert-reqs", "required"],
         "needs --ca-certs"),
        ([str(cert), "--keyfile", str(tmp_path / "missing.key")], "No such file"),
    ]
    for extra, message in cases:
        proc = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--certfile", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_tls_with_pre_forked_workers(server_factory, tls_certs):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--workers", "2",
                            "--certfile", str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key))
    pids = set()
    for _ in range(20):
        client = RawClient.connect(server.address, tls=tls_certs.client_context())
        try:
            info = _info(client)
        finally:
            client.close()
        assert info["scheme"] == "https"
        pids.add(info["pid"])
    assert server.proc.pid not in pids


# -- certificate rotation ------------------------------------------------------------------------------------

def _fingerprint(client: RawClient) -> str:
    return hashlib.sha256(client.sock.getpeercert(binary_form=True)).hexdigest()


def _file_fingerprint(path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def test_sighup_reloads_the_certificate_for_new_connections_only(server_factory, tls_certs, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(tls_certs.server_cert, cert)
    shutil.copy(tls_certs.server_key, key)
    server = server_factory("--app", "apps:echo", "--no-access-log", "--certfile", str(cert), "--keyfile", str(key))
    context = tls_certs.client_context()
    kept = RawClient.connect(server.address, tls=context)
    assert _fingerprint(kept) == _file_fingerprint(tls_certs.server_cert)
    assert _info(kept, "/before")["path"] == "/before"

    new_cert, new_key = tls_certs.issue("rotated", "localhost")
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    server.signal(signal.SIGHUP)
    server.wait_for_line(r"TLS certificate reloaded")
    sighup = [line for line in server.lines if "SIGHUP" in line]
    assert len(sighup) == 1 and " INFO " in sighup[0], sighup  # one line: on 575c707 a second read as an error
    fresh = RawClient.connect(server.address, tls=context)
    try:
        assert _fingerprint(fresh) == _file_fingerprint(new_cert) != _file_fingerprint(tls_certs.server_cert)
        assert _info(fresh)["scheme"] == "https"
        # the connection opened before the rotation is still served, with the certificate it started with
        assert _info(kept, "/after")["path"] == "/after"
        assert _fingerprint(kept) == _file_fingerprint(tls_certs.server_cert)
    finally:
        fresh.close()
        kept.close()

    key.write_text("not a key\n")  # a broken rotation keeps the last good certificate
    server.signal(signal.SIGHUP)
    server.wait_for_line(r"TLS reload failed, keeping the current certificate")
    client = RawClient.connect(server.address, tls=context)
    try:
        assert _fingerprint(client) == _file_fingerprint(new_cert)
    finally:
        client.close()
    assert server.proc.poll() is None and "Traceback" not in server.output()


# -- stalled handshakes ------------------------------------------------------------------------------------------

def _client_hello(context: ssl.SSLContext) -> bytes:
    """The bytes of a real ClientHello, made without a network by a client SSLObject."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class StalledHandshakes(StallingClients):
    """Connections that stop inside the TLS handshake, a third in each way: silent (no ClientHello), half a
    ClientHello, or a whole ClientHello and then nothing (the server has answered and waits for us)."""

    def __init__(self, address: tuple[str, int], count: int, hello: bytes, deadline: float) -> None:
        super().__init__(address, count, deadline, name="stalled-handshakes")
        self.hello = hello

    def opening(self, i: int) -> bytes:
        return (b"", self.hello[:len(self.hello) // 2], self.hello)[i % 3]


def test_stalled_handshakes_do_not_slow_tls_clients_and_are_dropped_at_the_header_timeout(server_factory, tls_certs):
    header_timeout = 3.0
    server = server_factory("--no-access-log", "--header-timeout", str(header_timeout),
                            "--certfile", str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key))
    context = server.tls = tls_certs.client_context()
    stalled = StalledHandshakes(server.address, 1000, _client_hello(context), deadline=time.monotonic() + 30)
    stalled.thread.start()
    assert stalled.started.wait(20) and len(stalled.opened) == 1000

    client = RawClient.connect(server.address, tls=context)
    try:
        latencies = []
        pace = time.perf_counter()
        for i in range(200):
            pace += 0.005
            time.sleep(max(0.0, pace - time.perf_counter()))
            started = time.perf_counter()
            status, _, body = client.request(get(f"/add/{i}/3"), timeout=5)
            latencies.append(time.perf_counter() - started)
            assert (status, body) == (200, b"%d" % (i + 3))
        handshakes = []
        for _ in range(20):  # new TLS clients complete their handshakes meanwhile
            started = time.perf_counter()
            fresh = RawClient.connect(server.address, tls=context)
            try:
                assert fresh.request(get("/add/1/1"))[::2] == (200, b"2")
            finally:
                fresh.close()
            handshakes.append(time.perf_counter() - started)
        still_stalled = 1000 - len(stalled.closed_at)
    finally:
        client.close()
    stalled.thread.join(timeout=40)
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    lifetimes = [stalled.closed_at[i] - stalled.opened[i] for i in stalled.closed_at]
    print(f"stalled TLS handshakes: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
          f"{max(latencies) * 1000:.1f} ms over 200 keep-alive requests with {still_stalled} handshakes stalled; "
          f"new connection + request: median {statistics.median(handshakes) * 1000:.1f} ms, max "
          f"{max(handshakes) * 1000:.1f} ms; {len(stalled.closed_at)} dropped after "
          f"{min(lifetimes, default=0):.2f}-{max(lifetimes, default=0):.2f} s")

    assert still_stalled == 1000, "stalled handshakes were dropped before the header timeout"
    assert p99 < 0.100, f"p99 {p99 * 1000:.1f} ms with 1000 stalled handshakes"
    assert len(stalled.closed_at) == 1000, "some stalled handshakes were never dropped"
    assert min(lifetimes) > header_timeout - 0.5
    assert max(lifetimes) < header_timeout + 5
    answered = [stalled.received[i] for i in range(2, 1000, 3)]
    assert all(answered), "a whole ClientHello was not answered with the server's flight"
    assert not any(stalled.received[i] for i in range(0, 1000, 3)), "a silent client was sent something"
    wait_until(lambda: server.connect().request(get("/healthz"))[0] == 200, timeout=5, what="health")
    assert "Traceback" not in server.output()


def test_idle_tls_connection_is_closed_with_close_notify(server_factory, tls_certs):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--keepalive-timeout", "1",
                            "--certfile", str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key))
    sock = socket.create_connection(server.address, timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_certs.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")

    def pump_until(step):
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if data:
                    incoming.write(data)
                else:
                    incoming.write_eof()  # a bare TCP close: the next read raises SSLEOFError
            finally:
                if outgoing.pending:
                    sock.sendall(outgoing.read())

    try:
        pump_until(tls.do_handshake)
        tls.write(get("/"))
        sock.sendall(outgoing.read())
        assert pump_until(lambda: tls.read(65536)).startswith(b"HTTP/1.1 200 ")
        sock.settimeout(5)
        # the keep-alive timeout closes the idle connection: a TLS close_notify (read gives b""), not a
        # bare TCP close (read would raise SSLEOFError)
        assert pump_until(lambda: tls.read(65536)) == b""
    finally:
        sock.close()


class _RecordClient:
    """A TLS client that decides where its records and TCP segments begin and end (ssl.SSLObject over BIOs)."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.plain = b""
        self._pump(self.tls.do_handshake)

    def _pump(self, step):
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection") from None
                self.incoming.write(data)
            finally:
                if self.outgoing.pending:
                    self.sock.sendall(self.outgoing.read())

    def records(self, *plaintexts: bytes) -> bytes:
        """The ciphertext of one record per plaintext (each write is a record of its own), not yet sent."""
        for plain in plaintexts:
            self.tls.write(plain)
        return self.outgoing.read()

    def read_bodies(self, count: int) -> list[bytes]:
        """The bodies of ``count`` answers with Content-Length, in order."""
        bodies = []
        while len(bodies) < count:
            head, sep, rest = self.plain.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(rest) >= length:
                assert head.startswith(b"HTTP/1.1 200 "), head
                bodies.append(rest[:length])
                self.plain = rest[length:]
                continue
            self.plain += self._pump(lambda: self.tls.read(65536))
        return bodies

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)


def test_records_joined_or_split_on_the_wire_are_all_read(server_factory, tls_certs):
    """The server reads a connection once per arrival: all records of one arrival, or a record's halves."""
    server = server_factory("--app", "apps:echo", "--no-access-log",
                            "--certfile", str(tls_certs.server_cert), "--keyfile", str(tls_certs.server_key))
    client = _RecordClient(server.address, tls_certs.client_context())
    try:
        # One answer first, so the handshake is over and its reads cannot take in what follows.
        client.sock.sendall(client.records(get("/first")))
        assert json.loads(client.read_bodies(1)[0])["path"] == "/first"
        # Three records in one segment: a GET, then a POST whose head and body are records of their own.
        post = b"POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n"
        client.sock.sendall(client.records(get("/one"), post, b"hello"))
        answers = [json.loads(body) for body in client.read_bodies(2)]
        assert [(a["path"], a["body"]) for a in answers] == [("/one", ""), ("/p", "hello")]
        # One record in two segments: nothing can be answered from the first half alone.
        cipher = client.records(get("/split"))
        client.sock.sendall(cipher[:len(cipher) // 2])
        assert client.nothing_within(0.3)
        client.sock.sendall(cipher[len(cipher) // 2:])
        assert json.loads(client.read_bodies(1)[0])["path"] == "/split"
        # A record and a half, then the rest: the first request is answered at once.
        first, second = client.records(get("/a")), client.records(get("/b"))
        client.sock.sendall(first + second[:10])
        assert json.loads(client.read_bodies(1)[0])["path"] == "/a"
        client.sock.sendall(second[10:])
        assert json.loads(client.read_bodies(1)[0])["path"] == "/b"
    finally:
        client.sock.close()
