"""The reverse-proxy config in nginx/, run by the real nginx binary in front of the real server.

nginx runs natively (not in Docker) with nginx/templates/default.conf.template rendered by the
``nginx_proxy`` fixture exactly as the container images render it; the upstream is a real
``python3 -m server``, serving the calculator or, for the header tests, ``echo_app`` below.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import NGINX_DEFAULTS, NGINX_TEMPLATE, ROOT, RawClient, fetch, wait_until

pytestmark = pytest.mark.nginx

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
PROBLEM = "application/problem+json"


def echo_app(environ, start_response):
    """What reached the application, as JSON (the server runs it with --app test_nginx:echo_app)."""
    keys = ("REMOTE_ADDR", "SERVER_PROTOCOL", "REQUEST_METHOD", "HTTP_HOST", "HTTP_CONNECTION",
            "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REQUEST_ID", "wsgi.url_scheme")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    """nginx's own error: the status, a problem+json document that says it, and the request id."""
    assert status == expected, body
    assert headers["content-type"] == PROBLEM
    problem = json.loads(body)
    assert problem["status"] == expected
    assert problem["title"] and problem["detail"]
    assert problem["request_id"] == headers["x-request-id"]
    assert b"<html" not in body
    return problem


def raw_exchange(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    client = RawClient.connect(("127.0.0.1", urlsplit(url).port))
    try:
        return client.request(data)
    finally:
        client.close()


def upstream_connection_ports(port: int) -> set[int]:
    """Client-side ports of every TCP connection to ``port`` on this machine, in any state (TIME_WAIT too)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, remote, state = line.split()[:4]
        local_port, remote_port = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
        if state == "0A":  # listening socket
            continue
        if remote_port == port:
            ports.add(local_port)
        elif local_port == port:
            ports.add(remote_port)
    return ports


# -- the config itself --------------------------------------------------------------------------------------

def test_template_placeholders_are_exactly_what_compose_and_the_fixture_provide():
    template = NGINX_TEMPLATE.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", template))
    assert placeholders == {"CALC_UPSTREAM", "NGINX_LISTEN", *NGINX_DEFAULTS}
    # Bare $NAME would be replaced by envsubst too: none of the placeholders may appear that way.
    assert not {name for name in re.findall(r"\$(\w+)", template) if name in placeholders}
    compose = (ROOT / "docker-compose.yml").read_text()
    for name, default in NGINX_DEFAULTS.items():
        assert f"{name}: ${{{name}:-{default}}}" in compose, f"compose default of {name} differs from {default}"
    assert "CALC_UPSTREAM: server:8000" in compose


# -- proxying -----------------------------------------------------------------------------------------------

def test_calculator_answers_through_nginx(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    status, headers, body = fetch(url, "/add/2/3")
    assert (status, body) == (200, b"5")
    assert headers["content-type"].startswith("text/plain")
    assert headers["server"] == "nginx"  # server_tokens off: no version
    assert REQUEST_ID.match(headers["x-request-id"])
    status, headers, body = fetch(url, "/calc", "POST", json.dumps({"op": "mult", "arg1": 2, "arg2": 4}).encode(),
                                  {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(body)["result"] == 8


def test_server_errors_pass_through_unchanged(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    for method, path, body in (("GET", "/no/such/thing", None), ("POST", "/calc", b"{not json"),
                               ("GET", "/div/1/0", None)):
        headers = {"Content-Type": "application/json"} if body else {}
        direct = fetch(server.url, path, method, body, headers)
        proxied = fetch(url, path, method, body, headers)
        assert 400 <= direct[0] < 500
        assert proxied[0] == direct[0]
        assert proxied[1]["content-type"] == direct[1]["content-type"] == PROBLEM
        assert proxied[2] == direct[2]  # the server's own problem document, not nginx's


def test_headers_the_server_receives(server_factory, nginx_proxy):
    server = server_factory("--app", "test_nginx:echo_app")
    url = nginx_proxy(server.address)
    # A client on 127.0.0.2 that claims to be someone else.
    status, headers, body = fetch(url, "/", headers={"X-Forwarded-For": "203.0.113.9", "Connection": "keep-alive"},
                                  source="127.0.0.2")
    assert status == 200
    seen = json.loads(body)
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"  # proxy_http_version 1.1
    assert seen["HTTP_CONNECTION"] is None  # cleared, so the upstream connection stays open
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.2"  # replaced by the address nginx saw
    assert seen["REMOTE_ADDR"] == "127.0.0.2"  # and the server, trusting nginx on 127.0.0.1, uses it
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
    assert seen["HTTP_HOST"] == "127.0.0.1"
    assert REQUEST_ID.match(seen["HTTP_X_REQUEST_ID"])
    assert seen["HTTP_X_REQUEST_ID"] == headers["x-request-id"]


@pytest.mark.parametrize(("sent", "kept"), [
    ("trace-7f3a.b:c_d", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("has space", False),
    ('quote"s', False),
])
def test_client_request_id_is_kept_only_when_well_formed(server_factory, nginx_proxy, sent, kept):
    server = server_factory("--app", "test_nginx:echo_app")
    url = nginx_proxy(server.address)
    status, headers, body = fetch(url, "/", headers={"X-Request-ID": sent})
    assert status == 200
    forwarded = json.loads(body)["HTTP_X_REQUEST_ID"]
    assert forwarded == headers["x-request-id"]
    if kept:
        assert forwarded == sent
    else:
        assert REQUEST_ID.match(forwarded)


def test_request_id_reaches_the_server_log_and_nginx_log(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    status, headers, _ = fetch(url, "/add/20/22")
    assert status == 200
    rid = headers["x-request-id"]
    line = server.wait_for_line(rf"GET /add/20/22 .* rid={rid}\b").string
    assert line.startswith("127.0.0.1 ")
    entry = wait_until(lambda: [e for e in url.access_log() if e["request_id"] == rid], what="nginx access log")[0]
    assert entry["uri"] == "/add/20/22"
    assert entry["status"] == 200
    assert entry["upstream_addr"] == f"127.0.0.1:{server.port}"
    assert entry["upstream_status"] == "200"


def test_access_log_is_one_json_object_per_request(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    hostile = 'evil"agent\\ {"status": 1}'
    for path in ("/add/1/1", "/nope"):
        fetch(url, path, headers={"User-Agent": hostile})
    entries = wait_until(lambda: len(url.access_log()) >= 2 and url.access_log(), what="two log lines")
    assert [e["uri"] for e in entries] == ["/add/1/1", "/nope"]
    assert [e["status"] for e in entries] == [200, 404]
    assert all(e["user_agent"] == hostile for e in entries)  # escaped in the log, intact when parsed
    assert all(isinstance(e["request_time"], float | int) for e in entries)


def test_upstream_connections_are_reused(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    assert not upstream_connection_ports(server.port)
    for i in range(30):
        # A new client connection each time: only nginx's upstream keep-alive can reuse anything.
        status, _, body = fetch(url, f"/add/{i}/1")
        assert (status, body) == (200, str(i + 1).encode())
    ports = upstream_connection_ports(server.port)
    # One worker, sequential requests: one connection carried them all (a second at most, had one been
    # closed by a race). Without upstream keep-alive there would be 30 here, most in TIME_WAIT.
    assert 1 <= len(ports) <= 2, ports


# -- nginx's own answers: problem+json, never HTML ----------------------------------------------------------

def test_upstream_down_is_a_quick_502_problem_and_recovers(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address)
    assert fetch(url, "/add/2/3")[0] == 200
    port = server.port
    assert server.stop() == 0
    for method, path, body in (("GET", "/add/2/3", None), ("POST", "/calc", b'{"op":"add","arg1":1,"arg2":2}')):
        started = time.monotonic()
        status, headers, data = fetch(url, path, method, body, timeout=10)
        assert time.monotonic() - started < 3
        assert_problem(status, headers, data, 502)
    # nginx itself still says it is fine, and it picks the server up again without a reload.
    assert fetch(url, "/nginx-health")[:1] == (200,)
    server_factory("--port", str(port))
    assert fetch(url, "/add/2/3")[::2] == (200, b"5")


def test_body_over_the_limit_is_a_413_problem(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address, NGINX_MAX_BODY_SIZE="1k")
    small = json.dumps({"op": "add", "arg1": 1, "arg2": 2, "pad": "x" * 500}).encode()
    big = json.dumps({"op": "add", "arg1": 1, "arg2": 2, "pad": "x" * 2000}).encode()
    headers = {"Content-Type": "application/json"}
    status, _, _ = fetch(url, "/calc", "POST", small, headers)
    assert status != 413  # reached the server, which judges the content
    assert_problem(*fetch(url, "/calc", "POST", big, headers), 413)
    # Refused on the announced length alone, before any of the body is sent.
    default = nginx_proxy(server.address)
    status, headers, body = raw_exchange(default, b"POST /calc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                                  b"\r\nContent-Length: 2000000\r\n\r\n")
    assert_problem(status, headers, body, 413)


def test_rate_limit_is_a_429_problem(server_factory, nginx_proxy):
    server = server_factory()
    url = nginx_proxy(server.address, NGINX_RATE_LIMIT="1r/m", NGINX_RATE_BURST="1")
    answers = [fetch(url, "/add/1/2") for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 429, 429]  # one at the rate, one of burst, then refused
    problem = assert_problem(*answers[2], 429)
    assert problem["title"] == "Too many requests"
    assert answers[2][1]["retry-after"] == "1"
    assert fetch(url, "/nginx-health")[0] == 200  # nginx's own health is never limited
    # The default limit is generous: a quick burst of 200 requests passes untouched.
    generous = nginx_proxy(server.address)
    client = RawClient.connect(("127.0.0.1", generous.port))
    try:
        statuses = {client.request(b"GET /add/1/2 HTTP/1.1\r\nHost: x\r\n\r\n")[0] for _ in range(200)}
    finally:
        client.close()
    assert statuses == {200}


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", 431),
    (b"GET /_nginx/problem/502 HTTP/1.1\r\nHost: x\r\n\r\n", 404),  # the error pages are internal only
    # A transfer coding nginx does not implement (issue 25 #9): a problem document, not nginx's HTML page.
    (b"POST /calc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /calc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
])
def test_malformed_requests_get_problem_documents(server_factory, nginx_proxy, request_bytes, status):
    server = server_factory()
    url = nginx_proxy(server.address)
    assert_problem(*raw_exchange(url, request_bytes), status)


def test_nginx_health_is_answered_by_nginx(nginx_proxy):
    with socket.socket() as unused:  # an upstream nobody listens on
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()
    url = nginx_proxy(address)
    status, headers, body = fetch(url, "/nginx-health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}
    assert fetch(url, "/healthz")[0] == 502  # the server's health, by contrast, is proxied
    assert not [e for e in url.access_log() if e["uri"] == "/nginx-health"]  # health checks do not flood the log


# -- nginx's own problem documents have the server's shape ----------------------------------------------------

CORE = {"type", "title", "status", "detail", "instance"}  # what the server's problem documents carry
TYPE_URI = re.compile(r"^/problems/[a-z0-9-]+$")


def nginx_problem_bodies() -> dict[int, str]:
    """The body each error_page target returns, from the template: status -> JSON text with nginx variables."""
    template = NGINX_TEMPLATE.read_text()
    targets = dict(re.findall(r"error_page (?:\d+ =)?(\d+) /_nginx/problem/(\d+);", template))
    bodies = dict(re.findall(r"location = /_nginx/problem/\d+ \{[^}]*?return (\d+) '([^']*)';", template))
    assert set(targets) == set(targets.values()) == set(bodies), (targets, sorted(bodies))
    return {int(status): body for status, body in bodies.items()}


def test_every_nginx_problem_document_is_json_of_the_servers_shape():
    """All of them, 500/503/504 included (hard to provoke in a test): rendered as nginx would, then parsed."""
    from server.calculator.problems import CATALOGUE

    pages = set(re.findall(r"location = (/problems/[a-z0-9-]+) \{", NGINX_TEMPLATE.read_text()))
    for status, body in nginx_problem_bodies().items():
        for instance in ("", ',"instance":"/add/1/2"'):
            text = body.replace("$calc_problem_instance", instance).replace("$calc_request_id", "f00d")
            problem = json.loads(text.encode().decode("unicode_escape"))
            expected = CORE | {"request_id"} if instance else CORE - {"instance"} | {"request_id"}
            assert set(problem) == expected, (status, problem)
            assert problem["status"] == status and problem["request_id"] == "f00d"
            assert TYPE_URI.match(problem["type"]), problem["type"]
        # The type's page: served by nginx, or the server's own (then the titles agree).
        slug = problem["type"].removeprefix("/problems/")
        if slug in CATALOGUE:
            assert problem["title"] == CATALOGUE[slug].title and problem["type"] not in pages
        else:
            assert problem["type"] in pages, f"nothing answers GET {problem['type']}"


def test_nginx_and_server_problem_documents_compare(server_factory, nginx_proxy):
    """Real errors from both: same members, same type scheme, dereferenceable types; nginx adds the request id."""
    server = server_factory()
    url = nginx_proxy(server.address, NGINX_MAX_BODY_SIZE="1k")
    documents = {}
    status, headers, body = fetch(url, "/no/such/thing?x=1")  # the server's, passed through
    documents["server 404"] = (status, headers, json.loads(body), "/no/such/thing")
    status, headers, body = fetch(url, "/calc?x=1", "POST", b"{" + b" " * 2000 + b"}",
                                  {"Content-Type": "application/json"})
    documents["nginx 413"] = (status, headers, json.loads(body), "/calc")
    status, headers, body = raw_exchange(url, b"GET /add/1/2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10000
                                         + b"\r\n\r\n")
    documents["nginx 431"] = (status, headers, json.loads(body), "/add/1/2")
    status, headers, body = raw_exchange(url, b"GET /_nginx/problem/502 HTTP/1.1\r\nHost: x\r\n\r\n")
    documents["nginx 404"] = (status, headers, json.loads(body), "/_nginx/problem/502")
    status, headers, body = raw_exchange(url, b"GARBAGE\r\n\r\n")
    documents["nginx 400"] = (status, headers, json.loads(body), None)
    status, headers, body = raw_exchange(url, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    documents["nginx 414"] = (status, headers, json.loads(body), None)
    limited = nginx_proxy(server.address, NGINX_RATE_LIMIT="1r/m", NGINX_RATE_BURST="1")
    status, headers, body = [fetch(limited, "/add/1/1?again") for _ in range(3)][-1]  # one at the rate, one burst
    documents["nginx 429"] = (status, headers, json.loads(body), "/add/1/1")
    with socket.socket() as unused:  # nothing listens there
        unused.bind(("127.0.0.1", 0))
        down = nginx_proxy(unused.getsockname())
    status, headers, body = fetch(down, "/mult/2/3?z")
    documents["nginx 502"] = (status, headers, json.loads(body), "/mult/2/3")

    server_document = documents["server 404"][2]
    assert set(server_document) == CORE
    for name, (status, headers, problem, instance) in documents.items():
        assert headers["content-type"] == PROBLEM, name
        assert problem["status"] == status == int(name.split()[1]), name
        assert TYPE_URI.match(problem["type"]), (name, problem["type"])
        if name.startswith("nginx"):
            assert problem["request_id"] == headers["x-request-id"], name
            assert set(problem) - {"request_id"} == (CORE if instance else CORE - {"instance"}), (name, problem)
        assert problem.get("instance") == instance, (name, problem)
        # The type URI is a page saying what the problem is, through the same nginx.
        page_status, page_headers, page = fetch(url, problem["type"])
        assert page_status == 200 and page_headers["content-type"].startswith("text/plain"), (name, page)
        assert page.decode().splitlines()[0] == problem["title"]
        assert f"type: {problem['type']}\nstatus: {status} " in page.decode()
    print({name: doc[2]["type"] for name, doc in documents.items()})
