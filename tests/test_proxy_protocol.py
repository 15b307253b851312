"""--proxy-protocol over real sockets: v1 and v2 headers, TLS behind a header, untrusted and broken peers.

The headers sent here are written out by hand from HAProxy's specification (the same bytes
tests/test_proxy_header.py checks), and the last test puts a real haproxy in front as an outside oracle.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import pytest
from harness import RawClient, get, read_to_eof, require_tool, wait_until

V1 = b"PROXY TCP4 192.0.2.10 198.51.100.7 56324 443\r\n"
V2 = (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c"
      b"\xc0\x00\x02\x0a\xc6\x33\x64\x07\xdc\x04\x01\xbb")  # 192.0.2.10:56324 -> 198.51.100.7:443
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n"
PROXY_ON = {"CALC_PROXY_PROTOCOL": "true"}


def _raw(address: tuple[str, int], preamble: bytes, tls: ssl.SSLContext | None = None) -> RawClient:
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(preamble)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    return RawClient(sock)


@pytest.fixture
def proxied(server_factory):
    return server_factory("--app", "apps:echo", env=PROXY_ON)


@pytest.mark.parametrize("header, address", [(V1, "192.0.2.10"), (V2, "192.0.2.10"), (V1_TCP6, "2001:db8::7")])
def test_the_header_address_is_remote_addr_and_in_the_access_log(proxied, header, address):
    client = _raw(proxied.address, header)
    try:
        for path in ("/first", "/second"):  # the header is read once; keep-alive carries on
            status, _, body = client.request(get(path))
            assert status == 200 and json.loads(body)["remote_addr"] == address
    finally:
        client.close()
    proxied.wait_for_line(rf'^{address} - - \[.*"GET /second HTTP/1.1" 200 ')


def test_header_and_request_in_one_segment_and_header_in_pieces(proxied):
    client = _raw(proxied.address, V2 + get("/together"))
    try:
        status, _, body = client.read_response()
        assert status == 200 and json.loads(body)["path"] == "/together"
    finally:
        client.close()
    sock = socket.create_connection(proxied.address, timeout=5)
    client = RawClient(sock)
    try:
        for piece in (V1[:3], V1[3:20], V1[20:]):
            sock.sendall(piece)
            time.sleep(0.05)  # separate arrivals at the server, each one an event
        info = json.loads(client.request(get("/pieces"))[2])
        assert info["remote_addr"] == "192.0.2.10"
    finally:
        client.close()


def test_tls_behind_a_proxy_header(server_factory, tls_certs):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--certfile", str(tls_certs.server_cert),
                            "--keyfile", str(tls_certs.server_key), env=PROXY_ON)
    client = _raw(server.address, V2, tls=tls_certs.client_context())
    try:
        info = json.loads(client.request(get("/secure"))[2])
    finally:
        client.close()
    assert (info["remote_addr"], info["scheme"]) == ("192.0.2.10", "https")
    # a trusted peer that starts the handshake without a header is cut off, with nothing written in clear
    with socket.create_connection(server.address, timeout=5) as sock, pytest.raises((ssl.SSLError, OSError)):
        tls_certs.client_context().wrap_socket(sock, server_hostname="localhost")
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("preamble", [
    get("/no-header"),  # a trusted peer must send a header
    b"PROXY TCP4 192.0.2.10 198.51.100.7 56324\r\n" + get("/"),  # a port missing
    b"PROXY TCP4 300.0.2.10 198.51.100.7 1 2\r\n" + get("/"),  # not an address
    V2[:12] + b"\x31" + V2[13:] + get("/"),  # version 3
])
def test_a_trusted_peer_without_a_valid_header_gets_400_and_is_closed(proxied, preamble):
    with socket.create_connection(proxied.address, timeout=5) as sock:
        sock.sendall(preamble)
        data = read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in data, data[:200]
    assert b"Connection: close" in data
    proxied.wait_for_line("refused")
    assert "Traceback" not in proxied.output()


def test_an_untrusted_peer_is_served_as_itself_and_refused_if_it_sends_a_header(server_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log", "--forwarded-allow-ips", "10.9.9.9",
                            env=PROXY_ON)
    client = RawClient.connect(server.address)
    try:
        assert json.loads(client.request(get("/direct"))[2])["remote_addr"] == "127.0.0.1"
    finally:
        client.close()
    for header in (V1, V2):
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(header + get("/spoof"))
            data = read_to_eof(sock)
        assert data.startswith(b"HTTP/1.1 400 ") and b"not in --forwarded-allow-ips" in data
    # "P" could still become "POST": the server waits for more instead of guessing
    client = RawClient.connect(server.address)
    try:
        client.send(b"P")
        time.sleep(0.1)
        status, _, body = client.request(b"OST /late HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        assert status == 200 and json.loads(body)["body"] == "hi"
    finally:
        client.close()


def test_without_the_setting_a_header_is_just_a_bad_request(server_factory):
    server = server_factory("--app", "apps:echo", "--no-access-log")
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(V1 + get("/"))
        assert read_to_eof(sock).startswith(b"HTTP/1.1 400 ")


# -- an outside oracle: haproxy in mode tcp with send-proxy / send-proxy-v2 ---------------------------------------

HAPROXY_CONFIG = """\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen front
    bind 127.0.0.1:{port}
    server app 127.0.0.1:{upstream} {send}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_real_haproxy_in_front(server_factory, tmp_path, send):
    binary = require_tool("haproxy", "the PROXY protocol oracle test runs haproxy in front of the server")
    server = server_factory("--app", "apps:echo", env=PROXY_ON)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, upstream=server.port, send=send))
    proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def answer():
            try:
                client = RawClient.connect(("127.0.0.1", port), timeout=2)
            except OSError:
                return None
            try:
                return client.request(get("/via-haproxy"))
            except OSError:
                return None
            finally:
                client.close()

        status, _, body = wait_until(answer, timeout=10, what="haproxy to forward a request")
        info = json.loads(body)
        # haproxy saw our client at 127.0.0.1 with some port; the server must report that port, not haproxy's
        assert status == 200 and info["remote_addr"] == "127.0.0.1"
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            client.sendall(get("/port"))
            reply = RawClient(client).read_response()
            assert int(json.loads(reply[2])["remote_port"]) == client.getsockname()[1]
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
