"""What is measured: the workloads (one wrk request pattern each) and the checks that the answers are right.

A workload names the wrk Lua mode (loadtest/wrk/bench.lua), the application the servers host for
it and, when it differs from ``--connections``, its own connection count. Workloads that share an
application are measured against the same server processes; a server is started once per application.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .procs import Proc

CALC_APP = "server.calculator:app"
BENCH_APP = "loadtest.bench.apps:app"  # Flask "hello" and the 1 MiB answer (loadtest/bench/apps.py)
BIG_SIZE = 1 << 20


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    mode: str  # the wrk Lua mode
    app: str  # CALC_APP or BENCH_APP (--app replaces CALC_APP)
    connections: int | None = None  # None: --connections
    note: str = ""


WORKLOADS: dict[str, Workload] = {w.key: w for w in (
    Workload("get", "GET /add/2/3", "get", CALC_APP, note="the same request, identical headers, every time"),
    Workload("post", "POST /calc", "post", CALC_APP, note="JSON body, identical headers"),
    Workload("ids", "GET /add/2/3, unique X-Request-ID + X-Forwarded-For", "ids", CALC_APP,
             note="a new request id and client address on every request, as a proxy sends them"),
    Workload("c1", "GET /add/2/3, one connection", "get", CALC_APP, connections=1,
             note="one request at a time: latency, not throughput"),
    Workload("close", "GET /add/2/3, a new connection per request", "close", CALC_APP,
             note="Connection: close on every request, as clients without keep-alive connect"),
    Workload("hello", "Flask hello", "hello", BENCH_APP, note="GET /hello/bench through an ordinary Flask app"),
    Workload("big", "1 MiB response, 10 connections", "big", BENCH_APP, connections=10,
             note="GET /big: one 1 MiB body per answer"),
)}
DEFAULT_WORKLOADS = tuple(WORKLOADS)
# Through a proxy (simple nginx, the project's nginx template) and over TLS: the two calculator requests.
PROXIED_WORKLOADS = ("get", "post")


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 5.0,
                 tls: bool = False) -> tuple[int, str, bytes]:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the benchmark's own throw-away certificate
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, proc: Proc, timeout: float, tls: bool = False) -> None:
    """Wait until ``GET path`` answers 200, or fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {proc.log_tail()}")
        try:
            status, _ctype, _body = http_request(port, "GET", path, timeout=1.0, tls=tls)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout}s ({last}): {proc.log_tail()}")


def check_answers(port: int, app: str, fixed: bool = False, tls: bool = False) -> str:
    """'ok', or what is wrong with the benchmarked requests (a fast wrong server must not win)."""
    if app == BENCH_APP:
        return _check_bench_app(port, tls)
    problems = []
    status, ctype, body = http_request(port, "GET", "/add/2/3", tls=tls)
    if status != 200 or (not fixed and body.strip() != b"5"):
        problems.append(f"GET /add/2/3 -> {status} {body[:40]!r}")
    status, ctype, body = http_request(port, "POST", "/calc", b'{"op": "mult", "arg1": 2, "arg2": 4}',
                                       {"Content-Type": "application/json"}, tls=tls)
    if status != 200:
        problems.append(f"POST /calc -> {status} {body[:40]!r}")
    elif not fixed:
        try:
            result = json.loads(body).get("result")
        except (ValueError, AttributeError):
            result = None
        if result != 8 or not ctype.startswith("application/json"):
            problems.append(f"POST /calc -> {ctype} {body[:60]!r}")
    return "; ".join(problems) or "ok"


def _check_bench_app(port: int, tls: bool) -> str:
    from .apps import BIG_BODY

    problems = []
    status, _ctype, body = http_request(port, "GET", "/hello/bench", tls=tls)
    if status != 200 or body != b"Hello, bench!":
        problems.append(f"GET /hello/bench -> {status} {body[:40]!r}")
    status, _ctype, body = http_request(port, "GET", "/big", tls=tls, timeout=10.0)
    if status != 200 or body != BIG_BODY:
        problems.append(f"GET /big -> {status}, {len(body)} bytes")
    return "; ".join(problems) or "ok"
