"""WSGI (PEP 3333) conformance: the standard validator, and real Flask and Django apps, unchanged."""

from __future__ import annotations

import json

import pytest
import requests
from harness import RawClient

pytest.importorskip("flask")
pytest.importorskip("django")


def test_validator_accepts_environ_and_responses(server_factory):
    server = server_factory("--app", "apps:validated_echo")
    r = requests.get(f"{server.url}/v/a%20b?x=1", timeout=5)
    assert r.status_code == 200 and r.json()["path"] == "/v/a b"
    r = requests.post(f"{server.url}/v", data=b"payload", timeout=5)
    assert r.json()["body"] == "payload"
    r = requests.post(f"{server.url}/v", data=iter([b"chun", b"ked"]), timeout=5)  # chunked upload
    assert r.json()["body"] == "chunked"
    assert "AssertionError" not in server.output() and "WSGIWarning" not in server.output()


def test_validator_accepts_streaming_and_closing_bodies(server_factory, tmp_path):
    log = tmp_path / "closed.log"
    streaming = server_factory("--app", "apps:validated_streaming")
    assert requests.get(f"{streaming.url}/", timeout=5).text == "part0;part1;part2;part3;part4;"
    closing = server_factory("--app", "apps:validated_closing", env={"CLOSE_LOG": str(log)})
    assert requests.get(f"{closing.url}/", timeout=5).text == "abcde"
    requests.head(f"{closing.url}/", timeout=5)
    closing.stop()
    assert log.read_text().count("closed") == 2  # close() called for GET and for HEAD
    assert "AssertionError" not in streaming.output() + closing.output()


def test_legacy_write_callable(server_factory):
    server = server_factory("--app", "apps:legacy_write", "--no-access-log")
    assert requests.get(f"{server.url}/", timeout=5).text == "written;returned"


def test_flask_app_runs_unchanged(server_factory):
    server = server_factory("--app", "flask_app:app", "--no-access-log")
    session = requests.Session()
    assert session.get(f"{server.url}/hello/world", timeout=5).text == "Hello, world!"
    r = session.post(f"{server.url}/json", json={"a": [1, 2]}, timeout=5)
    assert r.json() == {"received": {"a": [1, 2]}, "length": len(r.request.body), "remote": "127.0.0.1"}
    r = session.get(f"{server.url}/stream", timeout=5)
    assert r.text == "line 0\nline 1\nline 2\n" and r.headers.get("Transfer-Encoding") == "chunked"
    session.get(f"{server.url}/cookie", timeout=5)
    assert session.get(f"{server.url}/cookie", timeout=5).json() == {"seen": "oat"}
    assert session.get(f"{server.url}/missing", timeout=5).status_code == 404


def test_django_app_runs_unchanged(server_factory):
    server = server_factory("--app", "django_app:application", "--no-access-log")
    assert requests.get(f"{server.url}/hello/pony", timeout=5).text == "Hello from Django, pony!"
    r = requests.post(f"{server.url}/echo?x=1", data=json.dumps({"k": "v"}), timeout=5,
                      headers={"Content-Type": "application/json", "X-Forwarded-Proto": "https"})
    # loopback is a trusted proxy by default, so its X-Forwarded-Proto makes the request secure
    assert r.json() == {"method": "POST", "body": {"k": "v"}, "query": {"x": "1"}, "secure": True,
                        "host": f"127.0.0.1:{server.port}"}
    assert requests.get(f"{server.url}/stream", timeout=5).text == "chunk 0\nchunk 1\nchunk 2\n"
    assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404


def test_date_cache_follows_the_clock_both_ways(monkeypatch):
    """The Date value changes at each second's boundary, and at once when the clock is set back."""
    from server.protocol.writer import http_date
    from server.wsgi import runner as runner_module
    clock = [1_000_000.2]
    monkeypatch.setattr(runner_module, "_clock", lambda: clock[0])
    dates = runner_module.DateCache()
    seen = []
    for now in (1_000_000.2, 1_000_000.999, 1_000_001.0, 1_000_001.5, 999_999.5, 1_000_000.0):
        clock[0] = now
        seen.append(dates.now())
    assert seen == [http_date(s) for s in (1_000_000, 1_000_000, 1_000_001, 1_000_001, 999_999, 1_000_000)]


def test_a_request_without_a_body_reads_empty_every_way_and_knows_its_port(server_factory):
    """Bodiless requests share one empty ``wsgi.input``: each way of reading it gives nothing, whatever
    an earlier request did with it; REMOTE_PORT is the client's port as text (PEP 3333: a string)."""
    server = server_factory("--app", "apps:input_probe", "--no-access-log")
    empty = {"read": "", "read_n": "", "readline": "", "readlines": [], "iter": [], "tell": 0}
    client = RawClient.connect(server.address)
    port = str(client.sock.getsockname()[1])
    for method in (b"GET", b"DELETE", b"POST", b"GET"):
        status, _, body = client.request(method + b" / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert status == 200
        assert json.loads(body) == {**empty, "remote_port": port}
    client.sock.close()
