"""The lame duck (--drain-delay): after SIGTERM the server serves on, saying goodbye, then shuts down.

A real server process and raw sockets. During the delay a keep-alive connection's next answer
carries ``Connection: close``, new connections are still accepted and answered, and ``/healthz``
answers 503 ``draining``; afterwards the listener is gone and the process exits 0. A second
signal cuts the delay short. Without the setting nothing changes: the listener closes at once.
"""

from __future__ import annotations

import json
import signal
import socket

import pytest
from harness import get

DRAINING_LINE = r"server: draining for [\d.]+ s"


def test_draining_server_keeps_serving_with_connection_close_and_unhealthy(server_factory, raw_factory):
    server = server_factory("--drain-delay", "2", "--no-access-log")
    kept = raw_factory(server.address)
    status, headers, _ = kept.request(get("/add/1/1"))
    assert status == 200 and headers.get("connection") != "close"
    status, _, body = raw_factory(server.address).request(get("/healthz"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    server.signal(signal.SIGTERM)
    server.wait_for_line(DRAINING_LINE)
    assert server.proc.poll() is None
    # The keep-alive connection opened before the signal: answered, and told to go.
    status, headers, body = kept.request(get("/add/2/3"))
    assert (status, body, headers["connection"]) == (200, b"5", "close")
    assert kept.is_closed()
    # New connections are still accepted and answered; the health check says the server is leaving.
    status, headers, body = raw_factory(server.address).request(get("/healthz"))
    assert (status, json.loads(body)) == (503, {"status": "draining"})
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    assert headers["connection"] == "close"
    status, headers, body = raw_factory(server.address).request(
        b"POST /calc HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n"
        b'{"op":"mult","arg1":6,"arg2":7}\n')
    assert (status, json.loads(body)["result"], headers["connection"]) == (200, 42, "close")

    # Then the ordinary graceful shutdown: exit 0, nothing listening.
    assert server.proc.wait(timeout=15) == 0
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()


def test_a_second_signal_cuts_the_delay_short(server_factory):
    server = server_factory("--drain-delay", "120", "--no-access-log")
    server.signal(signal.SIGTERM)
    server.wait_for_line(DRAINING_LINE)
    server.signal(signal.SIGINT)
    assert server.proc.wait(timeout=15) == 0  # not the two minutes


def test_without_a_delay_the_listener_closes_at_once(server_factory, raw_factory):
    server = server_factory("--no-access-log", "--app", "apps:slow", "--threads", "2")
    busy = raw_factory(server.address)
    busy.send(get("/?seconds=1.5"))  # keeps the process running past the signal
    server.signal(signal.SIGTERM)
    status, _, _ = busy.read_response(timeout=10)
    assert status == 200
    assert server.proc.wait(timeout=10) == 0
    assert "draining" not in server.output()


def test_the_calculator_health_check_reads_the_draining_key():
    from server.calculator import app

    def call(environ):
        seen = {}
        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "QUERY_STRING": "", **environ},
                            lambda status, headers, exc_info=None: seen.update(status=status, headers=headers)))
        return seen["status"], json.loads(body)

    assert call({}) == ("200 OK", {"status": "ok"})
    assert call({"calc_server.draining": False}) == ("200 OK", {"status": "ok"})
    assert call({"calc_server.draining": True}) == ("503 Service Unavailable", {"status": "draining"})


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_drain_delay_must_be_a_finite_number_of_seconds(value):
    from server.config import load

    with pytest.raises(SystemExit):
        load(["--drain-delay", value], environ={})
    assert load([], environ={"CALC_DRAIN_DELAY": "2.5"}).drain_delay == 2.5


def test_under_a_master_the_workers_drain_together_and_recycling_does_not(server_factory, raw_factory):
    """With pre-forked workers the master keeps the time: every worker drains (503 /healthz, Connection:
    close, still accepting on the shared socket), then all stop. A worker the master only replaces (a
    reload) stops as before: no drain, so a healthy server never says it is draining."""
    server = server_factory("--workers", "2", "--drain-delay", "2", "--no-access-log")
    server.signal(signal.SIGHUP)  # a reload: new workers, the old ones stopped with SIGTERM
    server.wait_for_line(r"stopping worker \d+ gracefully")
    status, _, body = raw_factory(server.address).request(get("/healthz"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert "draining" not in server.output()

    server.signal(signal.SIGTERM)
    server.wait_for_line(r"draining for 2 s before stopping the workers")
    server.wait_for_line(DRAINING_LINE)
    for _ in range(4):  # new connections, spread over the workers by the kernel: all drain
        status, headers, body = raw_factory(server.address).request(get("/healthz"))
        assert (status, json.loads(body), headers["connection"]) == (503, {"status": "draining"}, "close")
    assert server.proc.wait(timeout=20) == 0
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()
