"""Process management under load: reload, resize, recycle, worker timeout, shutdown, log reopening.

Every event happens while a pool of keep-alive clients hammers the server:

* urllib3 clients (``retries=False``: nothing is retried behind the test's back), GET and POST. urllib3
  follows the rules of a real client: it reuses a pooled connection only if the server has not closed
  it meanwhile (it polls the socket first) and drops a connection whose answer said ``Connection: close``.
* raw pipelining clients: four GETs in one write, then the four answers. They follow RFC 9112 section 9.3.2:
  after an answer with ``Connection: close`` the requests it left unanswered are sent again on a new
  connection (the server said it would not process them); the test counts those as ``resent``.

A failure is anything else: an exception, a missing or truncated answer, a wrong answer. The tests
assert zero failures and print, per event, the requests sent, the failures and how long the event took.

The client threads share ``counts`` and ``answers`` with the test's thread. Each count changes only
under the pool's lock (a ``+=`` on a shared Counter loses updates on a free-threaded build), and an
answer is appended together with its count, so the two agree. While the pool runs, ``answers`` grows
under the reader: read it once (``versions_since``), never twice for one assertion.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import urllib3
from harness import ROOT, RawClient, proc_children, start_server, wait_until

pytestmark = pytest.mark.slow

APP = '''\
import contextlib
import os
import time

VERSION = {version!r}


def app(environ, start_response):
    """Answers "VERSION PID PATH"; ?sleep=SECONDS first, so some requests are in flight during an event."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    pause = environ.get("QUERY_STRING", "").partition("sleep=")[2]
    if pause:
        time.sleep(float(pause))
    data = f"{{VERSION}} {{os.getpid()}} {{environ['PATH_INFO']}} {{len(body)}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
'''


def write_app(directory: Path, version: str, broken: bool = False) -> None:
    source = APP.format(version=version)
    if broken:
        source += "\ndef oops(:\n"  # a syntax error
    (directory / "versioned.py").write_text(source)


class LoadPool:
    """Keep-alive clients in threads until ``stop``; every answer checked against the request it answers."""

    def __init__(self, address: tuple[str, int], urllib3_clients: int = 6, pipeliners: int = 2, depth: int = 4):
        self.address = address
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.answers: list[tuple[float, str, int]] = []  # (time, version, pid), in arrival order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # When the test told the server to stop (``stopping``): see _pipeliner for what that changes.
        self.stopping_since: float | None = None
        self._threads = [threading.Thread(target=self._urllib3_client, args=(i,), daemon=True)
                         for i in range(urllib3_clients)]
        self._threads += [threading.Thread(target=self._pipeliner, args=(i, depth), daemon=True)
                          for i in range(pipeliners)]

    def __enter__(self) -> LoadPool:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread hung"

    def wait_for(self, answers: int, timeout: float = 30.0) -> None:
        target = len(self.answers) + answers
        wait_until(lambda: len(self.answers) >= target, timeout=timeout,
                   what=f"{answers} more answers (so far {dict(self.counts)}, failures {self.failures[:3]})")

    def stopping(self) -> None:
        """The test is about to stop the server: connections opened from now on may meet a closing listener."""
        self.stopping_since = time.monotonic()

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def _fail(self, what: str) -> None:
        with self._lock:
            self.counts["failed"] += 1
            if len(self.failures) < 10:
                self.failures.append(what)

    def _check(self, path: str, status: int, body: bytes, sent: int) -> None:
        try:
            version, pid, echoed, length = body.decode().split()
            assert status == 200 and echoed == path and int(length) == sent, (status, body)
        except (ValueError, AssertionError) as exc:
            self._fail(f"{path}: wrong answer {status} {body[:80]!r} ({exc})")
            return
        with self._lock:
            self.answers.append((time.monotonic(), version, int(pid)))
            self.counts["ok"] += 1

    def _urllib3_client(self, index: int) -> None:
        pool = urllib3.HTTPConnectionPool(*self.address, maxsize=1, block=True, retries=False,
                                          timeout=urllib3.Timeout(connect=5, read=20))
        n = 0
        while not self._stop.is_set():
            n += 1
            # Every 7th request holds its thread for 50 ms, so some are in flight whenever a worker is told to stop.
            path = f"/u{index}/{n}"
            query = "?sleep=0.05" if n % 7 == 0 else ""
            body = b"p" * (n % 50) if n % 3 == 0 else b""
            self._count("sent")
            try:
                if body:
                    response = pool.request("POST", path + query, body=body,
                                            headers={"Content-Type": "application/octet-stream"})
                else:
                    response = pool.request("GET", path + query)
            except urllib3.exceptions.NewConnectionError as exc:
                self._count("sent", -1)
                self._count("refused")  # never reached a server (after a shutdown): not sent
                if "refused" not in str(exc).lower():
                    self._fail(f"{path}: {exc!r}")
                time.sleep(0.05)
                continue
            except Exception as exc:  # any exception is a failed request
                self._fail(f"{path} (urllib3): {exc!r}")
                continue
            self._check(path, response.status, response.data, len(body))
        pool.close()

    def _pipeliner(self, index: int, depth: int) -> None:
        client: RawClient | None = None
        pending: list[str] = []
        n = 0
        while not self._stop.is_set():
            if client is not None and select.select([client.sock], [], [], 0)[0]:
                client.close()  # closed by the server while idle: a real client checks before reuse
                client = None
                self._count("reconnect-idle")
            if client is None:
                opened = time.monotonic()
                try:
                    client = RawClient(socket.create_connection(self.address, timeout=20))
                except (ConnectionRefusedError, ConnectionResetError):  # reset: in the window described below
                    self._count("refused")
                    time.sleep(0.05)
                    continue
            batch = pending
            while len(batch) < depth:
                n += 1
                batch.append(f"/p{index}/{n}")
                self._count("sent")
            pending = []
            try:
                client.send(b"".join(f"GET {path} HTTP/1.1\r\nHost: pool\r\n\r\n".encode() for path in batch))
            except OSError as exc:  # a failed request, not a client thread that dies unseen
                for lost in batch:
                    self._fail(f"{lost} (pipelined, sending): {exc!r}")
                client.close()
                client = None
                continue
            for answered, path in enumerate(batch):
                try:
                    status, headers, body = client.read_response(timeout=20)
                except OSError as exc:
                    late = self.stopping_since is not None and opened >= self.stopping_since
                    if late and answered == 0 and isinstance(exc, ConnectionResetError):
                        # A connection the kernel completed into the shared listen queue after the
                        # last worker's final accept and before that worker closed the socket: the
                        # kernel resets it, and no server process ever saw it (gunicorn and nginx
                        # have the same window). To the client it is a refusal that came late.
                        self._count("reset-late", len(batch))
                    else:
                        for lost in batch[answered:]:
                            self._fail(f"{lost} (pipelined, {answered} of {len(batch)} answered): {exc!r}")
                    client.close()
                    client = None
                    break
                self._check(path, status, body, 0)
                if headers.get("connection", "").lower() == "close":
                    pending = batch[answered + 1:]  # the server announced it will not process these
                    self._count("resent", len(pending))
                    client.close()
                    client = None
                    break
        if client is not None:
            client.close()
        self._count("unresent", len(pending))  # declined with Connection: close just before the stop

    def versions_since(self, start: int) -> Counter[str]:
        return Counter(version for _, version, _ in self.answers[start:])

    def unaccounted(self) -> int:
        """Requests sent that got neither an answer nor a failure (after ``stop``): 0 unless the pool lost one."""
        counts = self.counts
        return counts["sent"] - counts["ok"] - counts["failed"] - counts["unresent"] - counts["reset-late"]

    def pids_since(self, start: int) -> set[int]:
        return {pid for _, _, pid in self.answers[start:]}

    def report(self, event: str, seconds: float) -> str:
        counts = self.counts
        line = (f"{event}: {counts['sent']} requests sent, {counts['ok']} answered, {counts['failed']} failed, "
                f"{counts['resent']} resent after Connection: close, {counts['reconnect-idle']} idle reconnects, "
                f"{counts['reset-late']} reset by a closing listener; "
                f"event took {seconds:.2f} s")
        print(line)
        return line


def _env(app_dir: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(app_dir), str(ROOT), str(ROOT / "tests")]),
            "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write_app(tmp_path, "v1")
    return tmp_path


@pytest.fixture
def versioned(app_dir, server_factory):
    """Start the versioned app with extra flags; returns (server, workers set once they are all up)."""

    def start(*flags: str, workers: int = 2):
        server = server_factory("--app", "versioned:app", "--no-access-log", "--threads", "4", *flags,
                                env=_env(app_dir))
        pids = wait_until(lambda: _children(server.proc.pid, workers), timeout=15, what=f"{workers} workers")
        return server, pids

    return start


def _children(master: int, count: int) -> set[int]:
    children = proc_children(master)
    return children if len(children) == count else set()


def test_sighup_reloads_new_code_under_load_without_a_failed_request(app_dir, versioned):
    server, old = versioned("--workers", "2")
    with LoadPool(server.address) as pool:
        pool.wait_for(500)
        assert set(pool.versions_since(0)) == {"v1"}  # one read: the clients append meanwhile
        write_app(app_dir, "v2")
        mark = len(pool.answers)
        signalled = time.monotonic()
        server.signal(signal.SIGHUP)
        new = wait_until(lambda: (c := _children(server.proc.pid, 2)) and not c & old and c, timeout=30,
                         what="two new workers and the old ones gone")
        took = time.monotonic() - signalled
        switched = len(pool.answers)
        pool.wait_for(500)
    pool.report("SIGHUP reload", took)
    assert pool.counts["failed"] == 0, pool.failures
    assert pool.unaccounted() == 0, pool.counts
    assert pool.versions_since(mark)["v2"] > 0
    assert pool.versions_since(switched) == Counter({"v2": len(pool.answers) - switched}), "old code after reload"
    assert pool.pids_since(switched) <= new
    server.wait_for_line(r"reloading \(SIGHUP\)")


def test_single_process_ignores_sighup_and_says_how_to_reload(app_dir, server_factory):
    server = server_factory("--app", "versioned:app", "--no-access-log", env=_env(app_dir))
    with LoadPool(server.address, urllib3_clients=2, pipeliners=1) as pool:
        pool.wait_for(200)
        server.signal(signal.SIGHUP)
        server.wait_for_line(r"INFO \[\d+\] calc-server: SIGHUP: no TLS certificate to re-read; the application's "
                             r"code is reloaded only with a master process \(--master\)")
        pool.wait_for(200)
    # one line, and nothing that reads like an error (575c707 added a second line that did)
    assert [line for line in server.lines if "SIGHUP" in line] and not [
        line for line in server.lines if "SIGHUP" in line and "INFO" not in line]
    assert pool.counts["failed"] == 0, pool.failures
    assert server.proc.poll() is None and proc_children(server.proc.pid) == set()


def test_master_with_one_worker_reloads_on_sighup(app_dir, versioned):
    server, old = versioned("--master", workers=1)
    with LoadPool(server.address, urllib3_clients=4, pipeliners=1) as pool:
        pool.wait_for(300)
        write_app(app_dir, "v2")
        signalled = time.monotonic()
        server.signal(signal.SIGHUP)
        new = wait_until(lambda: (c := _children(server.proc.pid, 1)) and c != old and c, timeout=30,
                         what="the worker replaced")
        took = time.monotonic() - signalled
        switched = len(pool.answers)
        pool.wait_for(300)
    pool.report("SIGHUP reload, one worker", took)
    assert pool.counts["failed"] == 0, pool.failures
    assert pool.versions_since(switched) == Counter({"v2": len(pool.answers) - switched})
    assert pool.pids_since(switched) == new


def test_ttin_and_ttou_resize_under_load(versioned):
    server, first = versioned("--workers", "2")
    master = server.proc.pid
    with LoadPool(server.address) as pool:
        pool.wait_for(300)
        started = time.monotonic()
        server.signal(signal.SIGTTIN)
        three = wait_until(lambda: _children(master, 3), timeout=15, what="a third worker")
        grown = time.monotonic() - started
        assert first < three
        pool.wait_for(300)
        started = time.monotonic()
        server.signal(signal.SIGTTOU)
        server.wait_for_line(r"SIGTTOU: 2 workers")  # two signals at once would merge into one (POSIX)
        server.signal(signal.SIGTTOU)
        one = wait_until(lambda: _children(master, 1), timeout=30, what="one worker left")
        shrunk = time.monotonic() - started
        mark = len(pool.answers)
        pool.wait_for(300)
        server.signal(signal.SIGTTOU)  # never below one
        wait_until(lambda: server.output().count("SIGTTOU: 1 worker\n") == 2, timeout=10,
                   what="the third SIGTTOU handled")
        pool.wait_for(100)
    pool.report("SIGTTIN + 2x SIGTTOU", grown + shrunk)
    print(f"TTIN took {grown:.2f} s, two TTOU {shrunk:.2f} s")
    assert pool.counts["failed"] == 0, pool.failures
    assert one < three and pool.pids_since(mark) == one
    assert proc_children(master) == one


def test_max_requests_recycles_workers_under_keepalive_load(versioned):
    server, first = versioned("--workers", "2", "--max-requests", "400", "--max-requests-jitter", "100")
    master = server.proc.pid
    seen: set[int] = set(first)
    started = time.monotonic()
    with LoadPool(server.address) as pool:

        def recycled() -> bool:
            seen.update(proc_children(master))
            return len(seen) >= 6  # four replacements at least

        wait_until(recycled, timeout=90, what=f"four recycled workers ({len(pool.answers)} answers)")
        took = time.monotonic() - started
    pool.report(f"--max-requests 400 (+0..100), {len(seen) - 2} workers recycled", took)
    assert pool.counts["failed"] == 0, pool.failures
    assert len(wait_until(lambda: _children(master, 2), timeout=15, what="two workers")) == 2
    assert len(server.output().split("requests; replacing it")) - 1 >= 4
    assert "died" not in server.output()
    # Each recycled worker answered at least its --max-requests; more, as it serves until its replacement is up.
    per_pid = Counter(pid for _, _, pid in pool.answers)
    retired = {pid: per_pid[pid] for pid in seen - proc_children(master) if pid in per_pid}
    print(f"answers per recycled worker: {sorted(retired.values())}")
    assert retired and all(n >= 400 for n in retired.values()), per_pid


def test_sigterm_to_the_master_under_load_answers_everything_it_accepted(versioned):
    server, workers = versioned("--workers", "2", "--graceful-timeout", "10")
    with LoadPool(server.address) as pool:
        pool.wait_for(500)
        pool.stopping()
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.proc.wait(timeout=20)
        took = time.monotonic() - signalled
        wait_until(lambda: pool.counts["refused"] >= 8, timeout=10, what="every client refused")
    pool.report("SIGTERM graceful shutdown", took)
    assert code == 0 and took < 10
    assert pool.counts["failed"] == 0, pool.failures
    # A new connection reset before its first answer, after the stop: at most one batch per pipelining
    # client (its next connect is refused). Anything the server accepted is counted above, strictly.
    assert pool.counts["reset-late"] <= 8, dict(pool.counts)
    assert pool.unaccounted() == 0, dict(pool.counts)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_sigquit_is_a_fast_shutdown(versioned, raw_factory):
    server, workers = versioned("--workers", "2", "--graceful-timeout", "30")
    client = raw_factory(server.address, timeout=10)
    client.send(b"GET /slow?sleep=20 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)  # let the request reach the application; nothing to wait for from outside
    signalled = time.monotonic()
    server.signal(signal.SIGQUIT)
    code = server.proc.wait(timeout=10)
    took = time.monotonic() - signalled
    print(f"SIGQUIT: exit {code} after {took:.2f} s with a 20 s request in flight")
    assert code == 0 and took < 3
    assert client.is_closed(timeout=2)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=5, what="workers gone")


def test_stuck_worker_is_killed_after_worker_timeout_and_replaced(versioned):
    """SIGSTOP freezes a worker's event loop as a deadlock or C code holding the GIL would: no heartbeat."""
    server, workers = versioned("--workers", "2", "--worker-timeout", "2")
    master = server.proc.pid
    victim = min(workers)
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    replaced = wait_until(lambda: (c := _children(master, 2)) and victim not in c and c, timeout=15,
                          what="the stuck worker replaced")
    took = time.monotonic() - stopped
    print(f"worker timeout 2 s: stuck worker replaced after {took:.2f} s")
    assert 1.5 <= took < 6  # the last heartbeat may have come up to 0.25 s before the SIGSTOP
    server.wait_for_line(rf"worker {victim} has not sent a heartbeat for [\d.]+ s \(--worker-timeout 2\)")
    assert len(replaced - workers) == 1
    with LoadPool(server.address, urllib3_clients=3, pipeliners=1) as pool:
        pool.wait_for(200)
    assert pool.counts["failed"] == 0, pool.failures


def test_slow_request_does_not_trip_the_worker_timeout(versioned, raw_factory):
    server, workers = versioned("--workers", "1", "--master", "--worker-timeout", "1", workers=1)
    client = raw_factory(server.address, timeout=10)
    started = time.monotonic()
    status, _, body = client.request(b"GET /slow?sleep=3 HTTP/1.1\r\nHost: t\r\n\r\n", timeout=10)
    took = time.monotonic() - started
    assert status == 200 and body.split()[2] == b"/slow" and took >= 3
    assert proc_children(server.proc.pid) == workers
    assert "heartbeat" not in server.output()


def test_reload_watches_the_source_and_survives_a_syntax_error(app_dir, versioned):
    server, first = versioned("--workers", "2", "--reload")
    master = server.proc.pid
    with LoadPool(server.address, urllib3_clients=4, pipeliners=1) as pool:
        pool.wait_for(300)
        changed = time.monotonic()
        write_app(app_dir, "v2")
        server.wait_for_line(r"reloading \(.*versioned\.py changed\)")
        second = wait_until(lambda: (c := _children(master, 2)) and not c & first and c, timeout=30,
                            what="workers with the new code")
        took = time.monotonic() - changed
        pool.wait_for(300)
        assert pool.answers[-1][1] == "v2"
        write_app(app_dir, "v3", broken=True)
        server.wait_for_line(r"could not load the new code .*the previous code keeps serving in 2 workers", timeout=30)
        broken_mark = len(pool.answers)
        pool.wait_for(300)
        # The workers with v2 are still the ones serving. The line above comes when the first broken worker
        # is reaped; its sibling, started with it, may still be failing to import on a busy machine.
        wait_until(lambda: proc_children(master) == second, timeout=10, what="only the two v2 workers left")
        write_app(app_dir, "v3")
        fixed = wait_until(lambda: (c := _children(master, 2)) and not c & second and c, timeout=30,
                           what="workers with the fixed code")
        fixed_mark = len(pool.answers)
        pool.wait_for(300)
    pool.report("--reload: edit, syntax error, fix", took)
    assert pool.counts["failed"] == 0, pool.failures
    assert pool.versions_since(broken_mark)["v2"] > 0
    assert pool.versions_since(fixed_mark) == Counter({"v3": len(pool.answers) - fixed_mark})
    assert pool.pids_since(fixed_mark) <= fixed
    assert "SyntaxError" in server.output()


def test_sigusr1_reopens_the_log_files_after_rotation(app_dir, tmp_path):
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    server = start_server("--app", "versioned:app", "--workers", "2", "--access-logfile", str(access),
                          "--error-logfile", str(errors), env=_env(app_dir), error_log=errors)
    try:
        master = server.proc.pid
        wait_until(lambda: _children(master, 2), timeout=15, what="two workers")
        with LoadPool(server.address, urllib3_clients=2, pipeliners=0) as pool:
            pool.wait_for(100)
            access.rename(tmp_path / "access.log.1")
            errors.rename(tmp_path / "error.log.1")
            server.signal(signal.SIGUSR1)
            wait_until(lambda: access.exists() and access.stat().st_size > 0, timeout=10,
                       what="access lines in the new file")
            pool.wait_for(100)
        rotated_size = (tmp_path / "access.log.1").stat().st_size
        time.sleep(0.2)  # the flusher writes every 50 ms: give a late line time to land in the wrong file
        assert (tmp_path / "access.log.1").stat().st_size == rotated_size
        assert pool.counts["failed"] == 0, pool.failures
        assert '"GET /u0/' in access.read_text()
        server.signal(signal.SIGTTIN)
        wait_until(lambda: "SIGTTIN: 3 workers" in errors.read_text(), timeout=10,
                   what="the master's log line in the reopened error log")
        assert "SIGTTIN" not in (tmp_path / "error.log.1").read_text()
    finally:
        server.stop()


def test_workers_that_cannot_load_the_app_stop_the_master_with_a_clear_error(server_factory):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    result = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--workers", "2", "--app",
                             "no_such_module_xyz:app"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "cannot load the application: --app 'no_such_module_xyz:app': no module named 'no_such_module_xyz'" \
        in result.stderr
    assert "ERROR [" in result.stderr and "the workers could not load the application; exiting" in result.stderr
    assert "listening on" not in result.stdout


def test_stopping_worker_answers_what_was_pipelined_and_closes_after_the_last(server_factory, raw_factory):
    """Four requests in one write, the first one slow; SIGTERM while it runs: all four answered, then close."""
    server = server_factory("--app", "apps:paced", "--no-access-log")
    client = raw_factory(server.address, timeout=10)
    client.send(b"".join(f"GET /{i}{'?sleep=1' if i == 0 else ''} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                         for i in range(4)))
    time.sleep(0.3)  # the first request is now inside the application
    server.signal(signal.SIGTERM)
    answers = [client.read_response(timeout=10) for _ in range(4)]
    assert [body for _, _, body in answers] == [b"/0", b"/1", b"/2", b"/3"]
    assert [headers.get("connection") for _, headers, _ in answers] == [None, None, None, "close"]
    assert client.is_closed()
    assert server.proc.wait(timeout=10) == 0


def test_idle_pooled_connections_of_a_reloaded_worker(app_dir, versioned, raw_factory):
    """Idle keep-alive connections on an old worker are closed between requests, about 1 s after their last.

    urllib3 (and so requests) checks a pooled connection before reusing it and reconnects: no request
    fails, even with retries off. A client that writes on a connection without that check (http.client,
    a raw socket) gets no answer and must decide itself whether the request may be repeated.
    """
    server, old = versioned("--workers", "2")
    pools = [urllib3.HTTPConnectionPool(*server.address, maxsize=1, retries=False) for _ in range(6)]
    for i, pool in enumerate(pools):
        assert pool.request("GET", f"/idle/{i}").status == 200
    naive = raw_factory(server.address)
    assert naive.request(b"GET /naive HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
    signalled = time.monotonic()
    server.signal(signal.SIGHUP)
    new = wait_until(lambda: (c := _children(server.proc.pid, 2)) and not c & old and c, timeout=15,
                     what="old workers gone")
    took = time.monotonic() - signalled
    results = [pool.request("POST", f"/again/{i}", body=b"once").data.split() for i, pool in enumerate(pools)]
    assert [r[2:] for r in results] == [[f"/again/{i}".encode(), b"4"] for i in range(len(pools))]
    assert {int(r[1]) for r in results} <= new  # each pool noticed the close and reconnected
    naive.send(b"GET /naive-again HTTP/1.1\r\nHost: t\r\n\r\n")
    with pytest.raises(ConnectionError):
        naive.read_response(timeout=5)
    print(f"idle connections: the old workers closed them and exited {took:.2f} s after SIGHUP")
    assert took < 5


def test_restarts_by_reason_reach_the_metrics(app_dir, server_factory):
    """The master's counts by reason are what Prometheus reads (calc_server_worker_restarts_total{reason})."""
    from test_metrics import METRICS_LINE, scrape, value

    server = server_factory("--app", "versioned:app", "--no-access-log", "--workers", "2", "--max-requests", "20",
                            "--worker-timeout", "2", "--metrics-bind", "127.0.0.1:0", env=_env(app_dir))
    url = server.wait_for_line(METRICS_LINE).group(1)
    master = server.proc.pid
    first = wait_until(lambda: _children(master, 2), timeout=15, what="two workers")
    with LoadPool(server.address, urllib3_clients=2, pipeliners=0) as pool:
        wait_until(lambda: value(scrape(url)[0], "calc_server_worker_restarts_total", reason="max-requests") >= 2,
                   timeout=30, what="two recycled workers counted")
    before = wait_until(lambda: _children(master, 2), timeout=15, what="two workers")
    server.signal(signal.SIGHUP)
    after_reload = wait_until(lambda: (c := _children(master, 2)) and not c & before and c, timeout=15,
                              what="reloaded workers")
    os.kill(min(after_reload), signal.SIGSTOP)
    wait_until(lambda: min(after_reload) not in proc_children(master) and len(proc_children(master)) == 2,
               timeout=15, what="the stopped worker replaced")
    os.kill(max(after_reload), signal.SIGKILL)
    series = wait_until(lambda: (s := scrape(url)[0]) and value(s, "calc_server_worker_restarts_total",
                                                                 reason="crash") == 1 and s,
                        timeout=15, what="the crash counted")
    counts = {reason: value(series, "calc_server_worker_restarts_total", reason=reason)
              for reason in ("crash", "max-requests", "reload", "timeout")}
    print(f"restarts by reason: {counts}")
    # A worker that reached its --max-requests just before SIGHUP leaves as recycled, not reloaded.
    assert counts["timeout"] == 1 and counts["crash"] == 1 and counts["max-requests"] >= 2
    assert counts["reload"] >= 1 and counts["reload"] + counts["max-requests"] >= 4
    assert pool.counts["failed"] == 0, pool.failures
    assert not first & proc_children(master)


def test_workers_of_a_killed_master_stop_gracefully(versioned):
    """SIGKILL leaves the master no chance to stop its workers: they notice they were orphaned and stop."""
    server, workers = versioned("--workers", "2")
    client = RawClient.connect(server.address)
    try:
        assert client.request(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
        server.proc.kill()
        server.proc.wait(timeout=5)
        # A request on a connection the worker already had is still answered; then the worker closes it.
        assert client.request(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
        assert client.is_closed(timeout=5)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and "zombie" not in
                                   Path(f"/proc/{pid}/status").read_text() for pid in workers),
                   timeout=10, what="the orphaned workers to exit")
    finally:
        client.close()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_reload_watcher_covers_a_package_recursively_without_importing_it(tmp_path, monkeypatch):
    from server.transport.reloader import SourceWatcher

    package = tmp_path / "watchedpkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the watcher must not import this')\n")
    (package / "app.py").write_text("app = None\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "helpers.py").write_text("X = 1\n")
    (package / "__pycache__").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    watcher = SourceWatcher("watchedpkg.app:app")
    assert (watcher.root, watcher.recursive) == (package, True)
    assert watcher.poll() is None
    (package / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"ignored")
    assert watcher.poll() is None
    (package / "sub" / "helpers.py").write_text("X = 22\n")
    assert watcher.poll() is None  # changed: reported once the files are quiet for one poll
    assert watcher.poll() == str(package / "sub" / "helpers.py")
    assert watcher.poll() is None
    assert "watchedpkg" not in sys.modules
