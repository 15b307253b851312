"""Shared fixtures: real server processes on loopback, raw sockets, tool checks.

Every test that needs a server starts the real ``python3 -m server`` as a child
process on a free port and waits for its ready line, never for a fixed sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening on https?://(?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
LISTENING = re.compile(r"listening on (?P<addresses>.+?) \(pid (?P<pid>\d+)")  # every listener, any kind
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, why: str) -> str:
    """Path of a program; skip on a laptop without it, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({why})"
        if IN_CI:
            pytest.fail(message + "; .ci/run must install it")
        pytest.skip(message)
    return path


@dataclass
class ServerProcess:
    """A running ``python3 -m server`` child and the lines it printed."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    lines: list[str] = field(default_factory=list)
    listening: list[str] = field(default_factory=list)  # the ready line's addresses: http://..., unix:/...
    _reader: threading.Thread | None = None
    tls: ssl.SSLContext | None = None  # the client context, when the server speaks TLS

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the server prints a line matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            current = list(self.lines)
            for line in current[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(current)
            if self.proc.poll() is not None and (self._reader is None or not self._reader.is_alive()):
                break
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output:\n{self.output()}")

    def connect(self, timeout: float = 5.0) -> RawClient:
        return RawClient.connect(self.address, timeout=timeout, tls=self.tls)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode


def start_server(*args: str, env: dict[str, str] | None = None, timeout: float = 15.0,
                 cwd: Path | None = None, command: list[str] | None = None,
                 pass_fds: tuple[int, ...] = ()) -> ServerProcess:
    """Start ``python3 -m server --port 0 ARGS`` and wait for its ready line.

    ``command`` replaces ``python3 -m server`` (an installed ``calc-server``, a wrapper that sets up
    socket activation); ``pass_fds`` are inherited by the server. With only non-TCP listeners (--bind
    unix:...) host and port stay empty; ``listening`` has every address either way.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"),
                                                           full_env.get("PYTHONPATH", "")]))
    if env:
        full_env.update(env)
    cmd = [*(command or [sys.executable, "-m", "server"]), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, pass_fds=pass_fds)
    server = ServerProcess(proc=proc, host="", port=0)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)

    server._reader = threading.Thread(target=pump, daemon=True)
    server._reader.start()
    try:
        ready = server.wait_for_line(LISTENING.pattern, timeout=timeout)
    except AssertionError:
        server.stop(timeout=5)
        raise
    server.listening = [address.split(" (")[0] for address in ready.group("addresses").split(", ")]
    match = READY.search(ready.string)
    if match:
        server.host = match.group("host").strip("[]")
        server.port = int(match.group("port"))
    return server


@pytest.fixture
def listener_kind() -> str:
    """"plain" for every test; a test parametrized with ``both_listeners`` runs once more with "tls"."""
    return "plain"


both_listeners = pytest.mark.parametrize("listener_kind", ["plain", "tls"])


@pytest.fixture
def server_factory(listener_kind: str, request: pytest.FixtureRequest) -> Iterator:
    """Start servers with custom flags; all are stopped after the test.

    Under ``listener_kind == "tls"`` each server gets the test certificate and key, and its
    ``connect()`` (and ``raw_factory``) speak TLS to it.
    """
    started: list[ServerProcess] = []
    certs = request.getfixturevalue("tls_certs") if listener_kind == "tls" else None

    def factory(*args: str, **kwargs) -> ServerProcess:
        if certs is not None:
            args = (*args, "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key))
        server = start_server(*args, **kwargs)
        if certs is not None:
            server.tls = certs.client_context()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(timeout=10)


@pytest.fixture(scope="session")
def calc_server() -> Iterator[ServerProcess]:
    """One calculator server shared by the API tests (access log off to keep output small)."""
    server = start_server("--no-access-log", "--threads", "8")
    yield server
    server.stop()


class RawClient:
    """A raw TCP client that reads HTTP responses with its own minimal parser.

    Deliberately independent of the server's protocol code, so the tests do
    not check the server with the server's own parser.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, address: tuple[str, int], timeout: float = 5.0, tls: ssl.SSLContext | None = None
                ) -> RawClient:
        """A TCP connection, or a TLS one (handshake done) when given a client context."""
        sock = socket.create_connection(address, timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname="localhost")
            except BaseException:
                sock.close()
                raise
        return cls(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        """Close our sending side (the server reads EOF) and keep reading its answers."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def _need(self, what: str) -> None:
        if not self._fill():
            raise ConnectionError(f"connection closed {what}; got {self.buffer[:200]!r}")

    def read_response(self, timeout: float = 5.0, head_request: bool = False
                      ) -> tuple[int, dict[str, str], bytes]:
        """One response: (status, headers with lower-case names, body)."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            self._need("before a full response head")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buffer) < length:
                self._need("mid-body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return status, headers, body
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self._read_chunked()
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return status, headers, body

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._need("mid-chunk")
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while not (self.buffer.startswith(b"\r\n") or b"\r\n\r\n" in self.buffer):
                    self._need("in trailers")
                if self.buffer.startswith(b"\r\n"):
                    self.buffer = self.buffer[2:]
                else:
                    self.buffer = self.buffer.partition(b"\r\n\r\n")[2]
                return body
            while len(self.buffer) < size + 2:
                self._need("mid-chunk")
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]

    def read_until(self, marker: bytes, timeout: float = 5.0) -> None:
        """Receive until ``marker`` has arrived (it stays buffered for read_response)."""
        self.sock.settimeout(timeout)
        while marker not in self.buffer:
            self._need(f"before {marker!r}")

    def request(self, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        self.send(data)
        return self.read_response(timeout=timeout, head_request=data.startswith(b"HEAD "))

    def is_closed(self, timeout: float = 3.0) -> bool:
        """True when the server closed the connection (EOF or reset) within ``timeout``."""
        if self.buffer:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def get(path: str, extra: str = "") -> bytes:
    """A raw HTTP/1.1 GET request, with extra header lines (each ending in CRLF) if given."""
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def fetch(url: str, path: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None, source: str | None = None,
          timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection with the standard library's client: (status, lower-case headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def raw(calc_server: ServerProcess) -> Iterator[RawClient]:
    """A raw TCP connection to the shared calculator server."""
    client = RawClient.connect(calc_server.address)
    yield client
    client.close()


@pytest.fixture
def raw_factory(listener_kind: str, request: pytest.FixtureRequest) -> Iterator:
    """Open raw connections to any address (over TLS when the test runs on TLS listeners); closed after the test."""
    opened: list[RawClient] = []
    tls = request.getfixturevalue("tls_certs").client_context() if listener_kind == "tls" else None

    def factory(address: tuple[str, int], timeout: float = 5.0) -> RawClient:
        client = RawClient.connect(address, timeout=timeout, tls=tls)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


# -- process inspection (Linux /proc): worker pids, and leak checks of threads and descriptors ----------------

def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def proc_threads(pid: int) -> int:
    """Threads of a process, from the Threads: line of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_children(pid: int) -> set[int]:
    """Direct children of a process (all its threads' children)."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            children.update(int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return children


# -- native nginx with the repo's reverse-proxy config (nginx/templates/default.conf.template) ----------------

NGINX_TEMPLATE = ROOT / "nginx" / "templates" / "default.conf.template"
# The template's tunables, as docker-compose.yml defaults them (tests/test_nginx.py checks they agree).
NGINX_DEFAULTS = {"NGINX_RATE_LIMIT": "10000r/s", "NGINX_RATE_BURST": "10000", "NGINX_MAX_BODY_SIZE": "1m"}


def render_nginx_template(values: dict[str, str]) -> str:
    """The template with ``${NAME}``/``$NAME`` replaced for the given names only, as envsubst does in the images."""
    text = NGINX_TEMPLATE.read_text()
    rendered = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)
    missing = sorted(set(re.findall(r"\$\{(\w+)\}", rendered)))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)} in {NGINX_TEMPLATE.name}")
    return rendered


class NginxProxy(str):
    """The base URL of a native nginx started by ``nginx_proxy`` (it is that ``str``), with the process attached.

    ``lines`` is its stdout: one JSON access-log object per request. ``errors`` is its error log (stderr).
    """

    proc: subprocess.Popen[str]
    port: int
    prefix: Path
    lines: list[str]
    errors: list[str]

    def access_log(self) -> list[dict]:
        import json

        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGQUIT), then SIGTERM and SIGKILL if it takes longer than ``timeout``."""
        for signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        shutil.rmtree(self.prefix, ignore_errors=True)
        return self.proc.returncode


def _collect_lines(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def _nginx_main_conf(prefix: Path, workers: int) -> str:
    """A main file for an unprivileged nginx: pid, temp files and logs under ``prefix`` or on stdio."""
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))
    return (f"worker_processes {workers};\npid {prefix / 'nginx.pid'};\nerror_log stderr notice;\n"
            f"events {{\n    worker_connections 1024;\n}}\n"
            f"http {{\n{temp}\n    include {prefix / 'default.conf'};\n}}\n")


def start_nginx(upstream: str | tuple[str, int], workers: int = 1, timeout: float = 15.0,
                **values: str) -> NginxProxy:
    """Native nginx on a free loopback port in front of ``upstream``; waits until it answers /nginx-health.

    ``values`` override template variables, e.g. ``NGINX_RATE_LIMIT="1r/m"``.
    """
    binary = require_tool("nginx", "the reverse-proxy tests run nginx natively")
    if isinstance(upstream, tuple):
        host, port = upstream
        upstream = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for _attempt in range(3):  # the free port may be taken before nginx binds it
        prefix = Path(tempfile.mkdtemp(prefix="calc-nginx-"))
        prefix.chmod(0o755)  # run as root, nginx's workers are nobody and need the temp directories
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = {**NGINX_DEFAULTS, "CALC_UPSTREAM": upstream, "NGINX_LISTEN": f"127.0.0.1:{port}", **values}
        (prefix / "default.conf").write_text(render_nginx_template(settings))
        (prefix / "nginx.conf").write_text(_nginx_main_conf(prefix, workers))
        proc = subprocess.Popen([binary, "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
        proxy = NginxProxy(f"http://127.0.0.1:{port}")
        proxy.proc, proxy.port, proxy.prefix, proxy.lines, proxy.errors = proc, port, prefix, [], []
        for stream, sink in ((proc.stdout, proxy.lines), (proc.stderr, proxy.errors)):
            threading.Thread(target=_collect_lines, args=(stream, sink), daemon=True).start()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/nginx-health")
                if conn.getresponse().status == 200:
                    return proxy
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        proxy.stop(timeout=5)
        if "Address already in use" not in "".join(proxy.errors):
            raise AssertionError(f"nginx did not start within {timeout}s:\n{''.join(proxy.errors)}")
    raise AssertionError("nginx found no free port in 3 attempts")


@pytest.fixture
def nginx_proxy() -> Iterator:
    """Start native nginx with the repo's proxy config in front of an upstream; each is stopped after the test.

    ``url = nginx_proxy(server.address)`` (or ``"host:port"``); ``workers=2`` and template values such as
    ``NGINX_RATE_LIMIT="1r/m"`` are keyword arguments. The result is the base URL (a ``str``) with
    ``.port``, ``.lines`` (JSON access log), ``.errors``, ``.access_log()`` and ``.stop()`` attached.
    """
    started: list[NginxProxy] = []

    def factory(upstream: str | tuple[str, int], **kwargs) -> NginxProxy:
        proxy = start_nginx(upstream, **kwargs)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


# -- TLS: a test CA, server and client certificates made with the cryptography package ------------------------

@dataclass
class TLSFiles:
    """PEM files of a throw-away CA, a server certificate for localhost/127.0.0.1/::1 and a client certificate."""

    directory: Path
    ca_cert: Path
    ca_key: object
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        """A client context that trusts the test CA (and presents the client certificate if asked)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def issue(self, name: str, common_name: str, *, server: bool = True, password: bytes | None = None
              ) -> tuple[Path, Path]:
        """A new certificate signed by the test CA (fresh key, fresh serial): (cert path, key path)."""
        return _issue(self.directory, name, common_name, self.ca_cert, self.ca_key, server=server,
                      password=password)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # ECDSA: fast handshakes on a busy test machine


def _write_key(path: Path, key, password: bytes | None = None) -> None:
    from cryptography.hazmat.primitives import serialization

    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def _issue(directory: Path, name: str, common_name: str, ca_cert_path: Path | None, ca_key, *,
           server: bool = True, password: bytes | None = None) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "calc tests"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    if ca_cert_path is None:  # the CA itself
        issuer, signing_key = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        issuer, signing_key = ca_cert.subject, ca_key
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2)))
    if ca_cert_path is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    certificate = builder.sign(signing_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key, password)
    return cert_path, key_path


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """One CA, server and client certificate for the whole session (generated, never checked in)."""
    pytest.importorskip("cryptography", reason="the TLS tests make their certificates with cryptography")
    from cryptography.hazmat.primitives import serialization

    directory = tmp_path_factory.mktemp("tls")
    ca_cert, ca_key_path = _issue(directory, "ca", "calc test CA", None, None)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    server_cert, server_key = _issue(directory, "server", "localhost", ca_cert, ca_key)
    client_cert, client_key = _issue(directory, "client", "alice", ca_cert, ca_key, server=False)
    return TLSFiles(directory, ca_cert, ca_key, server_cert, server_key, client_cert, client_key)
