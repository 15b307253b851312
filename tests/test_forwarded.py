"""Where the scheme and the client address come from (issue 25, findings 5 and 6).

The scheme is the listener's (TLS: https) or a trusted proxy's X-Forwarded-Proto,
never an absolute-form request target's. A trusted proxy's X-Forwarded-For is
read as nginx's realip module reads it; nginx itself is the oracle here.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness import both_listeners, require_tool

from server.protocol import Limits, RequestParser
from server.wsgi.environ import EnvironBuilder
from server.wsgi.peer import PeerInfo, TLSFacts
from server.wsgi.proxy import TrustedProxies, is_plain_ipv4

UNTRUSTED_PEER = PeerInfo("192.0.2.9", "5000")


def _environ(raw: bytes, peer: PeerInfo = UNTRUSTED_PEER, trusted: tuple[str, ...] = ()) -> dict:
    parser = RequestParser(Limits())
    parser.feed(raw)
    request = parser.next_request()
    assert request is not None
    builder = EnvironBuilder(server_name="localhost", server_port=80, proxies=TrustedProxies(trusted),
                             multiprocess=False)
    return builder.build(request, peer)


@pytest.mark.parametrize("target", [b"https://bank.example/x", b"HTTPS://bank.example/x", b"http://bank.example/x"])
def test_an_absolute_form_target_never_sets_the_scheme(target):
    """Failed on 575c707: ``GET https://bank.example/x`` on a plain listener gave wsgi.url_scheme https."""
    env = _environ(b"GET " + target + b" HTTP/1.1\r\nHost: bank.example\r\n\r\n")
    assert env["wsgi.url_scheme"] == "http"
    assert env["PATH_INFO"] == "/x"
    # from a trusted proxy too: only its header may say https
    env = _environ(b"GET " + target + b" HTTP/1.1\r\nHost: bank.example\r\n\r\n", peer=PeerInfo("127.0.0.1", "5000"),
                   trusted=("127.0.0.1",))
    assert env["wsgi.url_scheme"] == "http"
    env = _environ(b"GET " + target + b" HTTP/1.1\r\nHost: bank.example\r\nX-Forwarded-Proto: https\r\n\r\n",
                   peer=PeerInfo("127.0.0.1", "5000"), trusted=("127.0.0.1",))
    assert env["wsgi.url_scheme"] == "https"


def test_a_tls_connection_stays_https_whatever_the_target_says():
    env = _environ(b"GET http://bank.example/x HTTP/1.1\r\nHost: bank.example\r\n\r\n",
                   peer=PeerInfo("192.0.2.9", "5000", tls=TLSFacts({"HTTPS": "on"})))
    assert env["wsgi.url_scheme"] == "https"


@both_listeners
def test_django_is_secure_follows_the_listener_not_the_target(server_factory, listener_kind):
    """Django's request.is_secure() (and so SECURE_SSL_REDIRECT) over a real connection. Failed on 575c707."""
    pytest.importorskip("django")
    server = server_factory("--app", "django_app:application", "--no-access-log")
    tls = listener_kind == "tls"
    other = "http" if tls else "https"
    with contextlib.closing(server.connect()) as client:
        status, _, body = client.request(f"GET {other}://bank.example/echo HTTP/1.1\r\nHost: bank.example\r\n"
                                         "Connection: close\r\n\r\n".encode())
    assert status == 200
    assert json.loads(body)["secure"] is tls


def test_trusted_proxy_header_still_sets_https_for_django(server_factory):
    pytest.importorskip("django")
    server = server_factory("--app", "django_app:application", "--no-access-log", "--forwarded-allow-ips", "127.0.0.1")
    with contextlib.closing(server.connect()) as client:
        status, _, body = client.request(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n"
                                         b"Connection: close\r\n\r\n")
    assert status == 200 and json.loads(body)["secure"] is True
    other = server_factory("--app", "django_app:application", "--no-access-log", "--forwarded-allow-ips", "192.0.2.1")
    with contextlib.closing(other.connect()) as client:
        status, _, body = client.request(b"GET https://a/echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n"
                                         b"Connection: close\r\n\r\n")
    assert status == 200 and json.loads(body)["secure"] is False


# --- X-Forwarded-For --------------------------------------------------------------------------------------

FORGED = '6.6.6.6 - - [01/Jan/2020:00:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "-" 0.1 rid=-'
# Header values a trusted proxy may pass on; what REMOTE_ADDR becomes is checked against nginx below.
XFF_CASES = [
    "203.0.113.7",
    " 203.0.113.7 ",
    "198.51.100.1, 203.0.113.7",
    "198.51.100.1, 127.0.0.1",
    "127.0.0.1, 127.0.0.1",
    FORGED,
    "unknown",
    "203.0.113.7, unknown",
    "unknown, 203.0.113.7",
    "unknown, 127.0.0.1",
    "203.0.113.7\x85",
    "203.0.113.7\r",
    "2001:db8::7",
    "198.51.100.1, 2001:db8::7",
    "999.1.1.1",
    "1.2.3",
    "_hidden",
    "203.0.113.7, , 127.0.0.1",
    "\"203.0.113.7\"",
    "203.0.113.7 198.51.100.1",
]


@pytest.mark.parametrize("value", XFF_CASES)
def test_forwarded_for_gives_an_address_or_nothing(value):
    """Whatever a trusted proxy passes on, REMOTE_ADDR is an IP address. Failed on 575c707 (FORGED went in raw)."""
    import ipaddress

    client = TrustedProxies(("127.0.0.1",)).client("127.0.0.1", value)
    ipaddress.ip_address(client)


@pytest.mark.parametrize(("value", "client"), [
    (FORGED, "127.0.0.1"),
    ("unknown", "127.0.0.1"),
    ("203.0.113.7, unknown", "127.0.0.1"),  # the nearest hop is not an address: nothing beyond it is believed
    ("unknown, 203.0.113.7", "203.0.113.7"),
    ("unknown, 127.0.0.1", "127.0.0.1"),
    ("203.0.113.7:4711", "203.0.113.7"),
    ("[2001:db8::7]:4711", "2001:db8::7"),
    ("[2001:db8::7]", "2001:db8::7"),
    ("2001:DB8:0::7", "2001:db8::7"),  # canonical form, not the header's text
    ("fe80::1%eth0", "127.0.0.1"),  # a zone names the proxy's interface and could hold any text
    ("::ffff:203.0.113.7", "203.0.113.7"),
])
def test_forwarded_for_edge_cases(value, client):
    assert TrustedProxies(("127.0.0.1",)).client("127.0.0.1", value) == client


def _client_the_long_way(networks: tuple[str, ...], peer: str, value: str) -> str:
    """The X-Forwarded-For walk with every hop through parse_hop and ipaddress: what the fast path must match."""
    import ipaddress

    from server.wsgi.proxy import parse_hop

    nets = [ipaddress.ip_network(n) for n in networks]
    found = peer
    for hop in reversed(value.replace(",", " ").split(" ")):
        if hop:
            ip = parse_hop(hop)
            if ip is None:
                return found
            found = str(ip)
            if not any(ip in net for net in nets):
                return found
    return found


@pytest.mark.parametrize("networks", [("127.0.0.1",), ("127.0.0.1", "10.0.0.0/8", "::1"),
                                      ("10.1.2.3/32", "10.0.0.0/16")])
@pytest.mark.parametrize("value", [
    "10.1.2.3", "10.0.9.9, 10.1.2.3", "203.0.113.7, 10.1.2.3, 127.0.0.1", "0.0.0.0", "255.255.255.255",
    "256.1.1.1", "010.1.2.3", "10.01.2.3", "10.1.2", "10.1.2.3.4", "10.1.2.3:80", "10.1.2.3:", "10.1.2.3\n",
    "\u0661.1.2.3", "10.1.2.\u0663", "10.1.2.3:\u0663", "10.1.2.3:" + "1" * 60, "::ffff:10.1.2.3",
    "1.2.3.4, 10.1.2.3 127.0.0.1",
])
def test_forwarded_for_fast_path_agrees_with_ipaddress(networks, value):
    """Plain dotted IPv4 hops skip ipaddress (proxy.is_plain_ipv4); the answer is the same as without the shortcut."""
    for peer in ("127.0.0.1", "10.1.2.3"):
        assert TrustedProxies(networks).client_of_trusted(peer, value) == _client_the_long_way(networks, peer, value)


def _start_nginx_realip(prefix: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    binary = require_tool("nginx", "nginx's realip module is the oracle for X-Forwarded-For")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (prefix / "nginx.conf").write_text(
        f"worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log stderr notice;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p;\n"
        f"  fastcgi_temp_path {prefix}/f; uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s;\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        "    set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For; real_ip_recursive on;\n"
        "    location / { return 200 \"$remote_addr\"; } } }\n")
    proc = subprocess.Popen([binary, "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("nginx did not start")


def test_forwarded_for_matches_nginx_realip():
    """The same header values through nginx (set_real_ip_from 127.0.0.1, real_ip_recursive on) and through
    TrustedProxies(127.0.0.1): the same client address, except that we write an IPv4-mapped address as IPv4."""
    import socket

    with tempfile.TemporaryDirectory(prefix="calc-realip-") as directory:
        prefix = Path(directory)
        proc, port = _start_nginx_realip(prefix)
        try:
            differ = []
            for value in [*XFF_CASES, "203.0.113.7:4711", "[2001:db8::7]:4711", "fe80::1%eth0"]:
                if "\r" in value or "\n" in value:
                    continue  # not a value nginx lets through as a header
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.0\r\nX-Forwarded-For: " + value.encode("latin-1") + b"\r\n\r\n")
                    answer = b""
                    while chunk := sock.recv(4096):
                        answer += chunk
                nginx = answer.split(b"\r\n\r\n", 1)[1].decode()
                ours = TrustedProxies(("127.0.0.1",)).client("127.0.0.1", value)
                if nginx != ours:
                    differ.append((value, nginx, ours))
            assert not differ, differ
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_forged_line_from_a_trusted_peer_is_not_the_client(server_factory):
    """Over a real connection from a trusted peer (127.0.0.1, the default): the forged value is ignored,
    and the access log line shows the peer. Failed on 575c707."""
    server = server_factory("--app", "apps:echo")
    with contextlib.closing(server.connect()) as client:
        status, _, body = client.request(f"GET /who HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {FORGED}\r\n"
                                         "Connection: close\r\n\r\n".encode())
    assert status == 200 and json.loads(body)["remote_addr"] == "127.0.0.1"
    line = server.wait_for_line(r'"GET /who HTTP/1.1"').string
    assert line.startswith("127.0.0.1 - - [") and "/admin" not in line


def test_plain_ipv4_accepts_exactly_what_ipaddress_calls_canonical():
    """The C library's inet_pton, as proxy.is_plain_ipv4 uses it, against ipaddress on tricky and random texts."""
    import ipaddress
    import random

    texts = ["0.0.0.0", "255.255.255.255", "256.0.0.0", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.",
             "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\n", "1.2.3.4\x00", "+1.2.3.4", "0x1.2.3.4", "1e1.2.3.4",
             "\u0661.2.3.4", "\uff11.2.3.4", "1.2.3.4:80", "1.2.3.4/8", "", "."]
    texts += [f"{octet}.9.9.9" for n in range(300) for octet in (str(n), f"0{n}", f"00{n}")]
    rng = random.Random(24)
    texts += ["".join(rng.choice("0123456789.") for _ in range(rng.randint(1, 16))) for _ in range(20000)]
    for text in texts:
        try:
            canonical = str(ipaddress.IPv4Address(text)) == text
        except ValueError:
            canonical = False
        assert is_plain_ipv4(text) is canonical, text
