"""The locust scenarios in loadtest/locustfile.py, run for real against real servers.

Each test starts locust as a child process (never imported here: locust monkey-patches the whole
interpreter with gevent), bounded by locust's own ``-t`` and a hard subprocess timeout. Speed is
not asserted anywhere; what is asserted is that the scenarios ran, that every answer of the real
server passed the locustfile's checks, and that those checks do fail on wrong answers.
"""

from __future__ import annotations

import contextlib
import csv
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import ROOT, ServerProcess

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
PATH_NAMES = ("/add/[a]/[b]", "/sub/[a]/[b]", "/mult/[a]/[b]", "/div/[a]/[b]")
BAD_PREFIX = "[bad] "
HARD_TIMEOUT = 90  # seconds; locust's own -t ends every run long before this

pytestmark = pytest.mark.slow


def locust_env() -> dict[str, str]:
    """The environment without LOCUST_* settings a developer may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--think-time", "0.05", *args]


def run_headless(workdir: Path, host: str, *args: str, seconds: int = 4, users: int = 14
                 ) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]]]:
    """A headless run with CSV and HTML output; returns the process and the stats rows by name."""
    prefix = workdir / "run"
    cmd = locust_cmd("--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "-H", host,
                     "--csv", str(prefix), "--html", str(workdir / "report.html"), "--only-summary",
                     "--stop-timeout", "5", *args)
    proc = subprocess.run(cmd, cwd=workdir, env=locust_env(), capture_output=True, text=True,
                          timeout=HARD_TIMEOUT)
    stats_file = Path(f"{prefix}_stats.csv")
    assert stats_file.exists(), f"locust wrote no CSV (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc, read_stats(stats_file)


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def count(row: dict[str, str], column: str = "Request Count") -> int:
    return int(row[column])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_clean_run(proc: subprocess.CompletedProcess[str], stats: dict[str, dict[str, str]]) -> None:
    """Zero failures overall, and /add, /calc and the bad-input requests all exercised."""
    failing = {name: row["Failure Count"] for name, row in stats.items() if count(row, "Failure Count")}
    assert not failing, f"failures: {failing}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert count(stats["Aggregated"]) > 0
    assert count(stats["/add/[a]/[b]"]) > 0, sorted(stats)
    assert count(stats["/calc"]) > 0, sorted(stats)
    bad = {name: count(row) for name, row in stats.items() if name.startswith(BAD_PREFIX)}
    assert sum(bad.values()) > 0, f"the bad-input user sent nothing: {sorted(stats)}"


# --- a deliberately wrong server, to show the checks can fail ---------------------------------------


WRONG = b"1" + b"0" * 30


class WrongHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request 200 with 10**30, a number none of the scenarios' operations can produce.

    (Operands stay below 1e9 with at most four decimals, so no sum, product or quotient reaches it;
    a small fixed answer such as 9 is now and then right, 4 + 5, and the check rightly passes.)
    """

    protocol_version = "HTTP/1.1"

    def _reply(self, ctype: str, body: bytes) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply("text/plain", WRONG)

    def do_POST(self) -> None:
        self._reply("application/json", b'{"result": ' + WRONG + b"}")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def wrong_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WrongHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- tests ------------------------------------------------------------------------------------------


@pytest.mark.nginx
def test_headless_through_nginx(tmp_path: Path, calc_server: ServerProcess, nginx_proxy) -> None:
    """All three users, headless, through native nginx (the repo's config) to the real server: no failures."""
    proxy = nginx_proxy(calc_server.address)
    proc, stats = run_headless(tmp_path, proxy, seconds=4, users=14)
    assert_clean_run(proc, stats)
    assert all(count(stats[name]) > 0 for name in PATH_NAMES), sorted(stats)
    bad = {name: row for name, row in stats.items() if name.startswith(BAD_PREFIX)}
    assert len(bad) >= 3, sorted(bad)  # several kinds of bad input, each answered 4xx and counted a success
    assert all(count(row, "Failure Count") == 0 for row in bad.values())
    failure_rows = (tmp_path / "run_failures.csv").read_text().splitlines()[1:]  # below the header
    assert failure_rows == []
    report = (tmp_path / "report.html").read_text()
    assert "/calc" in report and "/add/[a]/[b]" in report
    # The requests really went through nginx to the server: its access log shows them proxied.
    proxied = [entry for entry in proxy.access_log() if entry.get("upstream_status")]
    uris = {entry["uri"].split("/")[1] for entry in proxied}
    assert {"add", "calc"} <= uris, sorted(uris)[:20]
    assert any(entry["status"] >= 400 for entry in proxied)  # the bad input, answered by the server


def test_checks_fail_on_wrong_answers(tmp_path: Path, wrong_server: str) -> None:
    """Every request to a server that answers 200 with wrong numbers is counted as a failure."""
    proc, stats = run_headless(tmp_path, wrong_server, seconds=3)
    assert proc.returncode != 0  # locust's exit code on failures
    ran = {name: row for name, row in stats.items() if name != "Aggregated" and count(row)}
    assert "/add/[a]/[b]" in ran and "/calc" in ran and any(n.startswith(BAD_PREFIX) for n in ran), sorted(ran)
    for name, row in ran.items():
        assert count(row, "Failure Count") == count(row), f"{name}: {row}"
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "expected" in failures  # the Decimal check names the right answer
    assert "status 200, expected one of" in failures  # a 200 to bad input is not a success


def test_tags_pick_the_path_scenario(tmp_path: Path, calc_server: ServerProcess) -> None:
    proc, stats = run_headless(tmp_path, calc_server.url, "--tags", "add", seconds=2, users=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {name for name, row in stats.items() if name != "Aggregated" and count(row)}
    assert names and names <= set(PATH_NAMES), names
    assert "/add/[a]/[b]" in names


def test_step_shape_is_opt_in_and_ends_by_itself(tmp_path: Path, calc_server: ServerProcess) -> None:
    """--step-shape ramps 2 -> 4 users and stops on its own (no -t given); without it, -u is obeyed."""
    cmd = locust_cmd("--headless", "-H", calc_server.url, "--step-shape", "--step-users", "2",
                     "--step-seconds", "1", "--steps", "2", "--csv", str(tmp_path / "shape"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=locust_env(), capture_output=True, text=True,
                          timeout=HARD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "Shape test updating to 2 users" in log and "Shape test updating to 4 users" in log, log[-3000:]
    assert "6 users" not in log
    stats = read_stats(tmp_path / "shape_stats.csv")
    assert count(stats["Aggregated"]) > 0 and count(stats["Aggregated"], "Failure Count") == 0

    proc, _stats = run_headless(tmp_path, calc_server.url, seconds=2, users=3)
    assert "Shape test" not in proc.stderr
    assert '(3 total users)' in proc.stderr, proc.stderr[-3000:]


@pytest.fixture
def locust_web(tmp_path: Path) -> Iterator[str]:
    """locust with its web UI on a free loopback port (no host preset); yields the UI's base URL."""
    port = free_port()
    log = open(tmp_path / "locust-web.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(locust_cmd("--web-host", "127.0.0.1", "--web-port", str(port)), cwd=tmp_path,
                            env=locust_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "locust-web.log").read_text()[-3000:]
            try:
                if requests.get(base + "/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "locust web UI did not come up in 30 s"
            time.sleep(0.1)
        yield base
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "locust-web.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def poll_stats(base: str, until, timeout: float = 30.0) -> dict:
    """GET /stats/requests until ``until(report)`` holds; the last report otherwise (for the message)."""
    deadline = time.monotonic() + timeout
    report: dict = {}
    while time.monotonic() < deadline:
        report = requests.get(base + "/stats/requests", timeout=5).json()
        if until(report):
            return report
        time.sleep(0.2)
    raise AssertionError(f"condition not reached within {timeout}s; last report: {json.dumps(report)[:3000]}")


def by_name(report: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in report["stats"]}


def test_web_ui_swarm_and_stop(locust_web: str, calc_server: ServerProcess) -> None:
    """Drive a run through the web UI's HTTP API: swarm, watch the stats, stop."""
    started = requests.post(locust_web + "/swarm", data={"user_count": 7, "spawn_rate": 7,
                                                         "host": calc_server.url}, timeout=10)
    assert started.status_code == 200 and started.json()["success"], started.text

    def exercised(report: dict) -> bool:
        entries = by_name(report)
        bad = sum(e["num_requests"] for n, e in entries.items() if n.startswith(BAD_PREFIX))
        return (entries.get("/add/[a]/[b]", {}).get("num_requests", 0) >= 5
                and entries.get("/calc", {}).get("num_requests", 0) >= 5 and bad >= 3)

    report = poll_stats(locust_web, exercised)
    assert report["state"] in ("spawning", "running")
    assert report["errors"] == [], report["errors"]
    assert all(e["num_failures"] == 0 for e in report["stats"]), report["stats"]
    assert report["fail_ratio"] == 0

    stopped = requests.post(locust_web + "/stop", timeout=10)
    assert stopped.status_code == 200 and stopped.json()["success"], stopped.text
    report = poll_stats(locust_web, lambda r: r["state"] == "stopped")
    with contextlib.suppress(KeyError):
        assert report["user_count"] == 0
    assert all(e["num_failures"] == 0 for e in report["stats"]), report["stats"]
