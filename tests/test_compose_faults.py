"""Faults in the compose stack (three server replicas behind nginx) while locust drives it.

* Restarting the replicas one after another (``docker restart``: SIGTERM, graceful
  shutdown, start, healthy) during a locust run loses nothing: every request of
  every scenario, bad-input checks included, passes.
* Killing one replica outright (SIGKILL, as a crash) fails nothing either: nginx retries
  the requests that were in flight on it (POST /calc too, a pure function) and the new
  ones on the other replicas, and Locust exits 0 (issue 23; before, up to one request
  per user could fail).
* The proxy's limits, set through the compose variables: limit_req answering 429
  problem+json, the body size limit, and the client header timeout.

The stack is test_compose.py's module-scoped ``stack`` fixture, so this module gets a
stack of its own, taken down at its end. Locust runs natively against nginx's
published port, started the way tests/test_locust.py starts it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import test_compose
from test_compose import PROBLEM, REPLICAS, fetch, poll
from test_locust import locust_cmd, locust_env, read_stats

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# test_compose's module-scoped stack fixture, registered in this module under this name: this
# module gets a stack of its own, built from the same code and taken down at the module's end.
compose_stack = test_compose.stack

USERS = 10


class LocustRun:
    """Headless locust against the stack, stopped with SIGTERM (it then writes its CSV files)."""

    def __init__(self, workdir: Path, port: int, users: int = USERS, limit: int = 120) -> None:
        self.prefix = workdir / "faults"
        self.log = workdir / "locust.log"
        cmd = locust_cmd("--headless", "-u", str(users), "-r", str(users), "-t", f"{limit}s",
                         "-H", f"http://127.0.0.1:{port}", "--csv", str(self.prefix), "--only-summary",
                         "--stop-timeout", "10")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=locust_env(), stdout=log, stderr=subprocess.STDOUT)

    def requests_so_far(self) -> int:
        """Requests in locust's latest stats-history row (written about once a second)."""
        path = Path(f"{self.prefix}_stats_history.csv")
        if not path.exists():
            return 0
        with open(path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
        return int(rows[-1]["Total Request Count"]) if rows else 0

    def wait_for(self, requests: int, timeout: float = 60) -> int:
        return poll(lambda: self.proc.poll() is None and self.requests_so_far() >= requests and self.requests_so_far(),
                    timeout, f"locust to have sent {requests} requests ({self.tail()})", interval=0.5)

    def stop(self) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        stats = read_stats(Path(f"{self.prefix}_stats.csv"))
        with open(f"{self.prefix}_failures.csv", newline="") as handle:
            failures = list(csv.DictReader(handle))
        return stats, failures

    def tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""


def _healthy(stack, container: str) -> bool:
    return stack.inspect(container, "{{.State.Status}}/{{.State.Health.Status}}") == "running/healthy"


def _aggregated(stats: dict[str, dict[str, str]]) -> tuple[int, int]:
    row = stats["Aggregated"]
    return int(row["Request Count"]), int(row["Failure Count"])


def test_rolling_restart_during_a_locust_run_fails_no_request(compose_stack, tmp_path):
    stack = compose_stack
    servers = stack.containers("server")
    assert len(servers) == REPLICAS
    started_at = {c: stack.inspect(c, "{{.State.StartedAt}}") for c in servers}
    run = LocustRun(tmp_path, stack.port)
    try:
        run.wait_for(200)
        timings = []
        for container in servers:
            began = time.monotonic()
            stack.run_docker("restart", "-t", "40", container, timeout=120)
            poll(lambda c=container: _healthy(stack, c), 60, f"replica {container[:12]} healthy again")
            timings.append(time.monotonic() - began)
        sent_during = run.requests_so_far()
        run.wait_for(sent_during + 200)  # traffic keeps flowing to the restarted replicas
    finally:
        stats, failures = run.stop()
    total, failed = _aggregated(stats)
    print(f"rolling restart: {total} requests by {USERS} users, {failed} failed; restarts took "
          f"{', '.join(f'{t:.1f}' for t in timings)} s; failures {failures[:5]}")
    restarted = [c for c in servers if stack.inspect(c, "{{.State.StartedAt}}") != started_at[c]]
    assert restarted == servers, "not every replica restarted"
    assert failed == 0, failures
    assert total >= 400
    assert run.proc.returncode == 0, run.tail()


def test_killed_replica_fails_no_request(compose_stack, tmp_path):
    stack = compose_stack
    servers = stack.containers("server")
    victim = servers[0]
    run = LocustRun(tmp_path, stack.port)
    try:
        run.wait_for(200)
        stack.run_docker("kill", "-s", "KILL", victim)
        killed_at = run.requests_so_far()
        run.wait_for(killed_at + 400)  # nginx keeps serving from the other replicas
    finally:
        stats, failures = run.stop()
    total, failed = _aggregated(stats)
    (nginx,) = stack.containers("nginx")
    retried = [line for line in stack.logs(nginx).splitlines() if '"upstream_addr":"' in line and ", " in
               line.split('"upstream_addr":"', 1)[1].split('"', 1)[0]]
    print(f"killed replica: {total} requests by {USERS} users, {failed} failed; {len(retried)} requests nginx "
          f"retried on another replica; failures {failures[:5]}")
    assert failed == 0, failures
    assert total >= killed_at + 400
    assert run.proc.returncode == 0, run.tail()
    # The replica comes back (restart policy, or here by hand) and takes traffic again.
    if stack.inspect(victim, "{{.State.Running}}") != "true":
        stack.run_docker("start", victim)
    poll(lambda: _healthy(stack, victim), 60, "the killed replica healthy again")
    poll(lambda: all(stack.replica_traffic().values()), 30, "traffic on every replica again")


def test_proxy_limits_set_through_compose_variables(compose_stack):
    """Recreate nginx with tight limits from the environment compose passes to its template."""
    tight = dataclasses.replace(compose_stack, env={**compose_stack.env, "NGINX_RATE_LIMIT": "1r/s",
                                                    "NGINX_RATE_BURST": "2", "NGINX_MAX_BODY_SIZE": "1k"})
    tight.compose("up", "-d", "--no-deps", "nginx", timeout=120)
    (nginx,) = tight.containers("nginx")
    poll(lambda: _healthy(tight, nginx), 60, "the recreated nginx healthy")

    answers = []
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        for i in range(8):
            sock.sendall(f"GET /add/{i}/1 HTTP/1.1\r\nHost: calc\r\n\r\n".encode())
            answers.append(_read(sock))
    statuses = [status for status, _, _ in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses  # one at the rate, two of burst
    status, headers, body = next(a for a in answers if a[0] == 429)
    assert headers["content-type"] == PROBLEM and headers["retry-after"] == "1"
    problem = json.loads(body)
    assert problem["status"] == 429 and problem["request_id"] == headers["x-request-id"]
    assert fetch(tight.port, "/nginx-health")[0] == 200  # never rate limited

    # The body limit is checked before the rate limit (nginx's find-config phase precedes preaccess),
    # so this is a 413 even while the client is over its rate.
    status, headers, body = fetch(tight.port, "/calc", "POST", b'{"op":"add","arg1":1,"arg2":2,"pad":"' +
                                  b"x" * 2000 + b'"}', {"Content-Type": "application/json"})
    assert status == 413 and headers["content-type"] == PROBLEM and json.loads(body)["status"] == 413

    # client_header_timeout (10 s): a head that never ends is cut off by nginx, not passed on.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tight.port), timeout=30) as slow:
        slow.sendall(b"GET /add/1/1 HTTP/1.1\r\nHost: calc\r\nX-Slow: ")
        data = b""
        while chunk := _recv(slow):
            data += chunk
    waited = time.monotonic() - started
    print(f"proxy limits: statuses {statuses}; a never-ending head was closed after {waited:.1f} s "
          f"with {data[:40]!r}")
    assert 8 < waited < 25
    assert b"200 OK" not in data


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _read(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "unexpected bytes after the response"
    return int(lines[0].split()[1]), headers, body
