"""Prometheus metrics (--metrics-bind): real servers, real traffic, read with prometheus_client's own parser.

The expectations come from the client's side of the wire: the statuses it got,
the bytes it sent and received, the connections it opened. The exposition is
parsed by prometheus_client (a test dependency only), not by anything of ours.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter

import pytest
from harness import RawClient, fetch, proc_children, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_cli import run_cli

METRICS_LINE = r"metrics on (http://\S+)/metrics"
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start(server_factory, *args: str):
    """A server with a metrics listener on a free port; (server, metrics base URL)."""
    server = server_factory("--metrics-bind", "127.0.0.1:0", "--no-access-log", *args)
    return server, server.wait_for_line(METRICS_LINE).group(1)


def scrape(url: str, timeout: float = 10.0) -> tuple[Series, dict[str, str]]:
    """Every sample as {(name, labels): value}, and each family's type, as prometheus_client reads them."""
    status, headers, body = fetch(url, "/metrics", timeout=timeout)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    series: Series = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series, types


def scrape_until(url: str, name: str, expected: float, **labels: str) -> Series:
    """Scrape until a sample reaches a value: workers publish their counts 4 times a second."""
    def reached() -> Series | None:
        series, _ = scrape(url)
        return series if value(series, name, **labels) == expected else None

    return wait_until(reached, 5, f"{name}{labels} == {expected}")


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def labelled(series: Series, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in series.items() if n == name}


def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it: every byte it answered."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def calc_body(op: str, a: int, b: int) -> bytes:
    return json.dumps({"op": op, "arg1": a, "arg2": b}).encode()


def known_mix() -> list[tuple[bool, str, bytes]]:
    """(reaches the application, method label, raw request); every request closes its connection."""
    close = "Connection: close\r\n"
    mix: list[tuple[bool, str, bytes]] = []
    for i in range(7):
        mix.append((True, "GET", f"GET /add/{i}/3 HTTP/1.1\r\nHost: t\r\n{close}\r\n".encode()))
    for i in range(3):
        mix.append((True, "GET", f"GET /no/such/{i} HTTP/1.1\r\nHost: t\r\n{close}\r\n".encode()))
    for op in ("add", "mult"):
        body = calc_body(op, 6, 7)
        mix.append((True, "POST", b"POST /calc HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n{close}\r\n".encode() + body))
    mix.append((True, "HEAD", f"HEAD /add/1/1 HTTP/1.1\r\nHost: t\r\n{close}\r\n".encode()))
    mix.append((True, "OTHER", f"BREW /add/1/1 HTTP/1.1\r\nHost: t\r\n{close}\r\n".encode()))
    # Rejected by the parser: a framing error (400) and a body over --max-body-size 1000 (413).
    mix.append((False, "", b"POST /calc HTTP/1.1\r\nHost: t\r\nContent-Length: 12abc\r\n\r\n"))
    mix.append((False, "", b"POST /calc HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"))
    return mix


def test_counters_equal_a_known_mix_over_two_workers(server_factory):
    server, url = start(server_factory, "--workers", "2", "--max-body-size", "1000")
    before, types = scrape(url)
    assert value(before, "calc_server_workers") == 2
    assert types["calc_server_requests"] == "counter"
    assert types["calc_server_request_duration_seconds"] == "histogram"
    assert types["calc_server_connections"] == "gauge"

    requests: Counter[tuple[str, str]] = Counter()
    errors: Counter[str] = Counter()
    sent = received = 0
    mix = known_mix()
    for to_app, method, data in mix:
        answer = exchange(server.address, data)
        sent += len(data)
        received += len(answer)
        if to_app:
            requests[(method, str(status_of(answer)))] += 1
        else:
            errors[str(status_of(answer))] += 1
    assert errors == {"400": 1, "413": 1}  # the client saw what the mix was built to cause
    assert {s for (_, s) in requests} >= {"200", "404"}

    def settled() -> Series | None:
        series, _ = scrape(url)
        return series if value(series, "calc_server_bytes_sent_total") == received else None

    after = wait_until(settled, 10, "every answer counted")
    counted = {(dict(labels)["method"], dict(labels)["status"]): v
               for (name, labels), v in after.items() if name == "calc_server_requests_total"}
    assert counted == requests
    assert labelled(after, "calc_server_protocol_errors_total", "status") == errors
    assert value(after, "calc_server_connections_accepted_total") == len(mix)
    assert value(after, "calc_server_connections_refused_total") == 0
    assert value(after, "calc_server_bytes_received_total") == sent
    assert value(after, "calc_server_bytes_sent_total") == received

    buckets = labelled(after, "calc_server_request_duration_seconds_bucket", "le")
    bounds = sorted(buckets, key=float)
    assert bounds[0] == "0.0001" and bounds[-1] == "+Inf" and float(bounds[-2]) == 10.0
    counts = [buckets[b] for b in bounds]
    assert counts == sorted(counts), "buckets must be cumulative"
    total = sum(requests.values())
    assert counts[-1] == value(after, "calc_server_request_duration_seconds_count") == total
    assert 0 < value(after, "calc_server_request_duration_seconds_sum") < total * 10


def test_metrics_are_only_on_their_own_port(server_factory):
    server, url = start(server_factory)
    status, _, body = fetch(server.url, "/metrics")
    assert status == 404 and b"calc_server_" not in body  # the application's own 404
    status, _, body = fetch(url, "/add/2/3")
    assert status == 404 and b"/metrics" in body
    status, headers, _ = fetch(url, "/metrics", "POST", b"")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    series = scrape_until(url, "calc_server_requests_total", 1, method="GET", status="404")
    assert value(series, "calc_server_connections_accepted_total") == 1  # the metrics port's clients: not counted


def test_counters_survive_killed_workers(server_factory):
    server, url = start(server_factory, "--workers", "2")
    for i in range(20):
        assert fetch(server.url, f"/add/{i}/1")[0] == 200
    before = scrape_until(url, "calc_server_requests_total", 20, method="GET", status="200")
    originals = proc_children(server.proc.pid)
    assert len(originals) == 2
    for number, pid in enumerate(sorted(originals), start=1):
        os.kill(pid, signal.SIGKILL)

        def replaced(n: int = number) -> Series | None:
            series, _ = scrape(url)
            ok = (value(series, "calc_server_worker_restarts_total", reason="crash") == n
                  and value(series, "calc_server_workers") == 2 and len(proc_children(server.proc.pid)) == 2)
            return series if ok else None

        during = wait_until(replaced, 15, f"worker {pid} replaced")
        for key, old in before.items():
            if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                assert during.get(key, 0) >= old, f"{key} went backwards: {old} -> {during.get(key)}"
    assert not originals & proc_children(server.proc.pid)  # both serving processes are new ones
    after, _ = scrape(url)
    assert value(after, "calc_server_requests_total", method="GET", status="200") == 20
    assert value(after, "calc_server_connections_accepted_total") == 20
    assert value(after, "process_cpu_seconds_total") >= value(before, "process_cpu_seconds_total")
    for i in range(5):
        assert fetch(server.url, f"/add/{i}/2")[0] == 200
    final = scrape_until(url, "calc_server_requests_total", 25, method="GET", status="200")
    assert value(final, "calc_server_request_duration_seconds_count") == 25


def test_gauges_show_idle_and_busy(server_factory, raw_factory):
    server, url = start(server_factory, "--app", "apps:slow", "--threads", "4")
    idle_clients: list[RawClient] = []
    for _ in range(3):
        client = raw_factory(server.address)
        assert client.request(b"GET /?seconds=0 HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
        idle_clients.append(client)

    def gauges() -> tuple[float, ...]:
        series, _ = scrape(url)
        return (value(series, "calc_server_connections", state="idle"),
                value(series, "calc_server_connections", state="active"),
                value(series, "calc_server_requests_in_flight"),
                value(series, "calc_server_threads", state="busy"),
                value(series, "calc_server_threads", state="idle"))

    wait_until(lambda: gauges() == (3, 0, 0, 0, 4), 5, "three idle connections, nothing busy")
    slow = raw_factory(server.address)
    slow.send(b"GET /?seconds=3 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: gauges() == (3, 1, 1, 1, 3), 5, "one request in flight")
    assert slow.read_response(timeout=10)[0] == 200
    for client in idle_clients:
        client.close()
    wait_until(lambda: gauges() == (1, 0, 0, 0, 4), 5, "only the slow client's connection left, idle")
    series, _ = scrape(url)
    assert value(series, "process_open_fds") > 0
    assert value(series, "process_resident_memory_bytes") > 1 << 20
    assert abs(value(series, "process_start_time_seconds") - time.time()) < 120


def test_refused_connections_are_counted(server_factory, raw_factory):
    server, url = start(server_factory, "--max-connections", "1")
    first = raw_factory(server.address)
    assert first.request(b"GET /add/1/1 HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
    answer = exchange(server.address, b"GET /add/1/1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(answer) == 503
    series = scrape_until(url, "calc_server_connections_refused_total", 1)
    assert value(series, "calc_server_connections_accepted_total") == 1


@pytest.mark.parametrize(("bind", "why"), [("9100", "expected HOST:PORT"), ("localhost", "expected HOST:PORT"),
                                           ("::1:9100", "needs brackets"), ("127.0.0.1:http", "must be a number"),
                                           ("127.0.0.1:70000", "port must be 0..65535")])
def test_bad_metrics_bind_is_refused_clearly(bind, why):
    proc = run_cli("--metrics-bind", bind)
    assert proc.returncode == 2
    assert "--metrics-bind" in proc.stderr and why in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(env={"CALC_METRICS_BIND": bind})
    assert proc.returncode == 2 and f"CALC_METRICS_BIND={bind!r}" in proc.stderr and why in proc.stderr


def test_metrics_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("--port", "0", "--metrics-bind", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_recycled_workers_hand_over_every_count(server_factory):
    """--max-requests: workers exit gracefully and publish first, so every request is counted exactly."""
    server, url = start(server_factory, "--workers", "2", "--max-requests", "5")
    sent = 40
    for i in range(sent):
        assert fetch(server.url, f"/add/{i}/1")[0] == 200
    def recycled() -> Series | None:
        # Counts lag by up to 0.25 s (each worker publishes 4 times a second): wait for both.
        series, _ = scrape(url)
        done = (value(series, "calc_server_worker_restarts_total", reason="max-requests") >= 1
                and value(series, "calc_server_requests_total", method="GET", status="200") >= sent)
        return series if done else None

    series = wait_until(recycled, 15, "a worker recycled and every request counted")
    assert value(series, "calc_server_requests_total", method="GET", status="200") == sent
    assert value(series, "calc_server_request_duration_seconds_count") == sent
    assert value(series, "calc_server_connections_accepted_total") == sent
    assert value(series, "calc_server_worker_restarts_total", reason="crash") == 0


def test_metrics_listener_survives_bad_and_stalled_clients(server_factory, raw_factory):
    server, url = start(server_factory)
    port = int(url.rsplit(":", 1)[1])
    bad = raw_factory(("127.0.0.1", port))
    status, headers, body = bad.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n")
    assert b"Content-Length" in body
    assert status == 400 and headers["content-type"] == "application/problem+json"
    stalled = raw_factory(("127.0.0.1", port))
    stalled.send(b"GET /metr")  # and nothing more: the endpoint gives up on it after 2 s
    started = time.monotonic()
    series, _ = scrape(url)
    assert time.monotonic() - started < 4
    assert stalled.is_closed(timeout=3)
    assert value(series, "calc_server_workers") == 1
    assert fetch(server.url, "/add/2/3")[2] == b"5"  # the application never noticed


def test_a_dripping_client_never_delays_another_scrape(server_factory):
    """Issue 25 #7: a client sending one byte every 1.5 s. Each of its recv()s came within 575c707's 2 s
    per-recv timeout, so it held the endpoint's one thread and every other scrape timed out. Now its whole
    request has 2 s, and scrapes made meanwhile are answered at once."""
    import threading

    _server, url = start(server_factory)
    port = int(url.rsplit(":", 1)[1])
    dripper = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
    cut: list[float] = []
    began = time.monotonic()

    def drip() -> None:
        for byte in request:
            try:
                dripper.send(bytes([byte]))
            except OSError:
                cut.append(time.monotonic() - began)
                return
            time.sleep(1.5)  # the attack is the pace itself

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        took = []
        for _ in range(3):
            started = time.monotonic()
            series, _ = scrape(url, timeout=1.0)
            took.append(time.monotonic() - started)
            assert value(series, "calc_server_workers") == 1
        assert max(took) < 1.0, took
        # the dripper itself is cut when its 2 s are up (the endpoint closes; its next sends fail or read EOF)
        dripper.settimeout(5)
        assert dripper.recv(1024) == b""  # no answer: it never finished a request in time
        assert time.monotonic() - began < 4.5
    finally:
        dripper.close()
        thread.join(timeout=10)


def test_a_flood_of_idle_connections_does_not_lock_scrapes_out(server_factory):
    """More idle connections than the endpoint keeps (64): the oldest make room, a real scrape is answered."""
    _server, url = start(server_factory)
    port = int(url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
    try:
        started = time.monotonic()
        series, _ = scrape(url, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert value(series, "calc_server_workers") == 1
    finally:
        for sock in idle:
            sock.close()
