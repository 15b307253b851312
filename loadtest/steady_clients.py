"""Steady keep-alive clients that count every failure and every slow answer: the load of issue 23's table.

``CLIENTS`` threads (6 by default), each with one keep-alive connection of its own, alternate
``GET /add/a/b`` and ``POST /calc``, together at about ``RATE`` requests a second (250), and check
every answer (status and result). They behave like urllib3, which they use: no retries, and a
pooled connection that the other side closed while it sat idle is replaced by a new one before
the next request (urllib3 checks it with a zero-timeout poll). So a failure here is what an
application using requests/urllib3 without retries would see.

Every request is recorded with when it started, how long it took (connecting included), whether
it failed and why, and the X-Request-ID it sent (nginx logs it, so its own view of the request,
which replicas it tried and how long each took, can be joined to the client's).
``summary(since, until)`` counts a window: requests, failed, over the
latency bound (250 ms), the slowest. Used by tests/test_compose_changes.py, and on its own::

    python3 loadtest/steady_clients.py --port 8080 --seconds 30

prints one summary line per second and the totals at the end (exit 1 if any request failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field

import urllib3

CLIENTS = 6
RATE = 250.0  # requests a second, all clients together
BOUND = 0.250  # seconds: an answer slower than this counts as slow
TIMEOUT = 10.0  # seconds a request may take before it counts as failed


@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic() when the request began
    took: float  # seconds, connecting included
    error: str  # empty when the answer was right
    request_id: str  # sent as X-Request-ID, so the proxy's log line of this request can be found


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    slow: int  # answered, but after more than the bound
    slowest: float  # seconds
    errors: tuple[str, ...]  # the first few failures' reasons

    def row(self) -> str:
        return (f"{self.requests} requests, {self.failed} failed, {self.slow} over {BOUND * 1000:.0f} ms, "
                f"slowest {self.slowest * 1000:.0f} ms")


@dataclass
class _Client:
    """One client thread's connection and samples. Owner: that thread; ``samples`` is appended to by it and
    read by others only through ``SteadyLoad.samples()``, which copies the list (list.append and copy are
    each one operation on the list, safe without further locking in CPython with or without the GIL)."""

    index: int
    samples: list[Sample] = field(default_factory=list)


class SteadyLoad:
    """The clients, started by ``start`` and stopped by ``stop``; a context manager does both."""

    def __init__(self, host: str, port: int, clients: int = CLIENTS, rate: float = RATE) -> None:
        self.host, self.port = host, port
        self.tag = f"steady{time.time_ns() % 10**9}"  # request ids: TAG-CLIENT-N
        self.interval = clients / rate  # seconds between one client's requests
        self.clients = [_Client(i) for i in range(clients)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SteadyLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for client in self.clients:
            thread = threading.Thread(target=self._run, args=(client,), name=f"steady-{client.index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT + 5)

    def samples(self) -> list[Sample]:
        every = [sample for client in self.clients for sample in list(client.samples)]
        every.sort(key=lambda sample: sample.started)
        return every

    def count(self) -> int:
        return sum(len(client.samples) for client in self.clients)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> Summary:
        """Requests that began in [since, until)."""
        window = [s for s in self.samples() if since <= s.started < until]
        failed = [s for s in window if s.error]
        answered = [s for s in window if not s.error]
        return Summary(requests=len(window), failed=len(failed), slow=sum(s.took > BOUND for s in answered),
                       slowest=max((s.took for s in window), default=0.0),
                       errors=tuple(f"{s.error} after {s.took * 1000:.0f} ms" for s in failed[:5]))

    def _run(self, client: _Client) -> None:
        # maxsize 1, block: exactly one connection per client, reused while the server keeps it open.
        pool = urllib3.HTTPConnectionPool(self.host, self.port, maxsize=1, block=True, retries=False,
                                          timeout=urllib3.Timeout(connect=TIMEOUT, read=TIMEOUT))
        n = client.index * 1000
        next_at = time.monotonic() + self.interval * client.index / len(self.clients)  # spread the clients
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                n += 1
                client.samples.append(self._one(pool, n, f"{self.tag}-{client.index}-{n}"))
                # Keep the pace without bursting to catch up after a slow answer.
                next_at = max(next_at + self.interval, time.monotonic())
        finally:
            pool.close()

    @staticmethod
    def _one(pool: urllib3.HTTPConnectionPool, n: int, request_id: str) -> Sample:
        a, b = n % 997, n % 13
        started = time.monotonic()
        error = ""
        try:
            if n % 2:
                response = pool.request("GET", f"/add/{a}/{b}", headers={"X-Request-ID": request_id})
                expected = str(a + b).encode()
                if response.status != 200 or response.data != expected:
                    error = f"GET /add: {response.status} {response.data[:120]!r}"
            else:
                body = json.dumps({"op": "mult", "arg1": a, "arg2": b}).encode()
                response = pool.request("POST", "/calc", body=body,
                                        headers={"Content-Type": "application/json", "X-Request-ID": request_id})
                if response.status != 200 or json.loads(response.data).get("result") != a * b:
                    error = f"POST /calc: {response.status} {response.data[:120]!r}"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            error = f"{'GET /add' if n % 2 else 'POST /calc'}: {type(exc).__name__}: {exc}"[:300]
        return Sample(started, time.monotonic() - started, error, request_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rate", type=float, default=RATE, help="requests a second, all clients together")
    args = parser.parse_args()
    load = SteadyLoad(args.host, args.port, args.clients, args.rate)
    began = time.monotonic()
    with load:
        second = began
        while time.monotonic() < began + args.seconds:
            time.sleep(max(0.0, second + 1 - time.monotonic()))
            print(f"{second + 1 - began:4.0f} s: {load.summary(second, second + 1).row()}", flush=True)
            second += 1
    total = load.summary()
    print(f"total: {total.row()}")
    for error in total.errors:
        print(f"  {error}")
    return 1 if total.failed else 0


if __name__ == "__main__":
    sys.exit(main())
