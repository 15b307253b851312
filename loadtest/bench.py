"""Side-by-side benchmark: wrk against this server, gunicorn, waitress, granian and a fixed-200 nginx.

Run through ``scripts/bench`` (which installs wrk, nginx and the Python tools first)::

    scripts/bench                       # 10 s per measurement, 2 s warm-up, one round
    scripts/bench --rounds 3            # three interleaved rounds, medians reported
    scripts/bench --duration 3 --warmup 1 --idle 2000 --no-write   # a quick look

Three tables:

1. direct: each server alone, one process pinned to CPU 0, wrk pinned to CPU 1, 50 keep-alive
   connections, ``GET /add/2/3`` and ``POST /calc``;
2. through nginx: the same, with one native nginx (upstream keepalive) in front of every server;
3. idle connections: this server with and without 10,000 idle keep-alive connections held open
   by loadtest/idle_holder.py, with its RSS and thread count from /proc/<pid>/status.

Every measurement of a round runs in the same invocation, so the ratios compare like with like on a
noisy machine; with ``--rounds N`` the rounds are interleaved (target order rotated each round) and
the medians are reported. Results go to ``results/bench-<date>.md`` / ``.png`` / ``.json`` and
``results/latest.md``; server and wrk logs go to ``results/tmp/``. Every process started here runs
in its own process group and is stopped at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "loadtest" / "wrk" / "bench.lua"
HOLDER = ROOT / "loadtest" / "idle_holder.py"
OURS = "calc-server"
READY_LINE = re.compile(r"listening on http://(?:\[[^\]]+\]|[^\s:]+):(\d+)")

SCENARIOS = {"get": "GET /add/2/3", "post": "POST /calc"}


# --- processes -------------------------------------------------------------------------------------


class Proc:
    """A child in its own process group, with its output in a log file."""

    registry: list[Proc] = []

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL, text_stdout: bool = False, cwd: Path = ROOT) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self._log_file.write("$ " + " ".join(argv) + "\n")
        self._log_file.flush()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=stdin, start_new_session=True, text=True,
            stdout=subprocess.PIPE if text_stdout else self._log_file, stderr=self._log_file)
        Proc.registry.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Children that outlived their leader (a forked worker) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._log_file.close()
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(reversed(cls.registry)):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {proc.name}: {exc}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def child_env(source: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALC_", "GRANIAN_", "GUNICORN_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def proc_usage(pid: int) -> tuple[float, int]:
    """(RSS in MiB, threads) summed over pid and its descendants, from /proc/<pid>/status."""
    rss_kib, threads = 0, 0
    for member in descendants(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss_kib += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return rss_kib / 1024, threads


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            # Interrupt time is left out of "busy": it is network work not charged to any process.
            return values[0] + values[1] + values[2] + values[7], sum(values)
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def tree_ticks(pid: int) -> int:
    """CPU time (user + system clock ticks) used so far by pid and its descendants."""
    ticks = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def single_cpu(spec: str | None) -> int | None:
    """The CPU number when ``spec`` names exactly one (only then can its load be attributed)."""
    return int(spec) if spec is not None and spec.isdigit() else None


def cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def own_ticks() -> float:
    """CPU time of this harness and of its reaped children (a finished wrk), in clock ticks."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * CLOCK_TICKS


class UsageSampler:
    """Peak RSS and thread count of a process tree while a measurement runs, and how much of each
    pinned CPU something else used meanwhile (other work on a shared machine skews the numbers).

    Server CPU: its busy time minus the server's own. Client CPU: its busy time minus wrk (reaped
    inside the window, so it shows in RUSAGE_CHILDREN), this harness and the ``client_pids`` trees
    (the nginx proxy, the idle holder).
    """

    def __init__(self, pid: int, server_cpu: int | None, client_cpu: int | None = None,
                 client_pids: tuple[int, ...] = (), interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.server_cpu, self.client_cpu, self.client_pids = server_cpu, client_cpu, client_pids
        self.peak_rss, self.peak_threads = 0.0, 0
        self.other_cpu: float | None = None
        self.other_client_cpu: float | None = None
        self._start: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"server_tree": tree_ticks(self.pid), "client_own": own_ticks()
                                + sum(tree_ticks(p) for p in self.client_pids)}
        if self.server_cpu is not None:
            snap["server_core"] = cpu_ticks(self.server_cpu)
        if self.client_cpu is not None:
            snap["client_core"] = cpu_ticks(self.client_cpu)
        return snap

    @staticmethod
    def _share(start: tuple[int, int], end: tuple[int, int], own: float) -> float | None:
        elapsed = end[1] - start[1]
        return max(0.0, min(1.0, (end[0] - start[0] - own) / elapsed)) if elapsed > 0 else None

    def _run(self) -> None:
        while True:
            rss, threads = proc_usage(self.pid)
            self.peak_rss, self.peak_threads = max(self.peak_rss, rss), max(self.peak_threads, threads)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> UsageSampler:
        self._start = self._snapshot()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        end, start = self._snapshot(), self._start
        if "server_core" in start:
            self.other_cpu = self._share(start["server_core"], end["server_core"],
                                         end["server_tree"] - start["server_tree"])
        if "client_core" in start:
            self.other_client_cpu = self._share(start["client_core"], end["client_core"],
                                                end["client_own"] - start["client_own"])


# --- HTTP checks -----------------------------------------------------------------------------------


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, proc: Proc, timeout: float) -> None:
    """Wait until ``GET path`` answers 200, or fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {proc.log_tail()}")
        try:
            status, _ctype, _body = http_request(port, "GET", path, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout}s ({last}): {proc.log_tail()}")


def check_answers(port: int, fixed: bool) -> str:
    """'ok', or what is wrong with the two benchmarked requests (a fast wrong server must not win)."""
    problems = []
    status, ctype, body = http_request(port, "GET", "/add/2/3")
    if status != 200 or (not fixed and body.strip() != b"5"):
        problems.append(f"GET /add/2/3 -> {status} {body[:40]!r}")
    status, ctype, body = http_request(port, "POST", "/calc", b'{"op": "mult", "arg1": 2, "arg2": 4}',
                                       {"Content-Type": "application/json"})
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


# --- servers ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    port: int = 0
    proc: Proc | None = None
    error: str | None = None
    answers: str = "not checked"
    fixed: bool = False  # nginx returning a fixed 200: no calculator answer to check

    @property
    def up(self) -> bool:
        return self.error is None and self.proc is not None and self.proc.alive()


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path, source: Path) -> None:
        self.args = args
        self.logs = logs
        self.source = source  # where server/ is imported from: a snapshot of --ref, or the working tree
        self.env = child_env(source)

    # Each start_* returns a Target; a server that fails to start is recorded, not fatal.

    def _start(self, name: str, argv: list[str], port: int | None, health: str, fixed: bool = False,
               log_name: str | None = None) -> Target:
        target = Target(name=name, fixed=fixed)
        try:
            proc = Proc(name, pinned(self.args.server_cpu, argv), self.logs / f"{log_name or name}.log",
                        env=self.env, cwd=self.source)
            target.proc = proc
            if port is None:  # this server: --port 0, read the port from the ready line
                port = self._ready_port(proc, self.args.start_timeout)
            target.port = port
            wait_http(port, health, proc, self.args.start_timeout)
            target.answers = check_answers(port, fixed)
        except (RuntimeError, OSError) as exc:
            target.error = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else repr(exc)
            print(f"  ! {name}: {exc}", file=sys.stderr)
            if target.proc is not None:
                target.proc.stop()
        return target

    @staticmethod
    def _ready_port(proc: Proc, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY_LINE.search(proc.log_text())
            if match:
                return int(match.group(1))
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {proc.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{proc.name} printed no 'listening on' line within {timeout}s: {proc.log_tail()}")

    def start_ours(self, extra: tuple[str, ...] = (), log_name: str | None = None) -> Target:
        argv = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--app", self.args.app,
                "--threads", str(self.args.threads), "--workers", "1", "--no-access-log", *extra]
        return self._start(OURS, argv, None, "/healthz", log_name=log_name)

    def start_gunicorn(self) -> Target:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--workers", "1", "--threads",
                str(self.args.threads), "--bind", f"127.0.0.1:{port}", "--keep-alive", "75",
                "--log-level", "warning", self.args.app]
        return self._start("gunicorn", argv, port, "/healthz")

    def start_waitress(self) -> Target:
        port = free_port()
        argv = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={self.args.threads}",
                self.args.app]
        return self._start("waitress", argv, port, "/healthz")

    def start_granian(self) -> Target:
        port = free_port()
        granian = shutil.which("granian") or "granian"
        argv = [granian, "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", self.args.app]
        return self._start("granian", argv, port, "/healthz")

    def start_nginx_fixed(self) -> Target:
        port = free_port()
        conf = self._nginx_conf("fixed", f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "5"; }}
    }}""")
        return self._start("nginx (fixed 200)", self._nginx_argv(conf), port, "/", fixed=True, log_name="nginx-fixed")

    def start_proxy(self, upstreams: list[Target]) -> dict[str, Target]:
        """One nginx with a server block per upstream; returns a proxied Target per upstream name."""
        blocks, ports = [], {}
        for i, up in enumerate(upstreams):
            port = free_port()
            ports[up.name] = port
            blocks.append(f"""
    upstream up{i} {{
        server 127.0.0.1:{up.port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up{i};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}""")
        conf = self._nginx_conf("proxy", "".join(blocks))
        proxy = Proc("nginx proxy", pinned(self.args.proxy_cpu, self._nginx_argv(conf)), self.logs / "nginx-proxy.log",
                     env=self.env)
        proxied: dict[str, Target] = {}
        for up in upstreams:
            target = Target(name=f"nginx → {up.name}", port=ports[up.name], proc=proxy, fixed=up.fixed)
            try:
                wait_http(target.port, "/" if up.fixed else "/healthz", proxy, self.args.start_timeout)
                target.answers = check_answers(target.port, up.fixed)
            except (RuntimeError, OSError) as exc:
                target.error = str(exc).splitlines()[-1][:200]
            proxied[up.name] = target
        return proxied

    def _nginx_conf(self, name: str, servers: str) -> Path:
        base = (self.logs / f"nginx-{name}").resolve()
        base.mkdir(parents=True, exist_ok=True)
        temp = "".join(f"    {kind}_temp_path {base}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = base / "nginx.conf"
        conf.write_text(f"""# generated by loadtest/bench.py
worker_processes 1;
daemon off;
master_process on;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
worker_rlimit_nofile 40000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{temp}{servers}
}}
""")
        return conf

    @staticmethod
    def _nginx_argv(conf: Path) -> list[str]:
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)]

    # --- measuring ---------------------------------------------------------------------------------

    def wrk(self, port: int, scenario: str, seconds: int, label: str) -> dict[str, Any]:
        argv = pinned(self.args.client_cpu, [
            shutil.which("wrk") or "wrk", "-t", "1", "-c", str(self.args.connections), "-d", f"{seconds}s",
            "--timeout", "5s", "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}", "--", scenario])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
        (self.logs / f"wrk-{safe}.log").write_text("$ " + " ".join(argv) + "\n" + out.stdout + out.stderr)
        match = re.search(r"^BENCH-JSON (\{.*\})$", out.stdout, re.M)
        if out.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout)[-300:]}")
        data = json.loads(match.group(1))
        data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
        data["socket_errors"] = data["connect"] + data["read"] + data["write"] + data["timeout"]
        return data

    def measure(self, target: Target, scenario: str, label: str, usage_of: Target | None = None,
                client_pids: tuple[int, ...] = ()) -> dict[str, Any]:
        """A wrk run after a warm-up, with the peak RSS/threads of ``usage_of`` (default: the target).

        When other processes took more than --noise of either pinned CPU meanwhile, the measurement is
        repeated (up to --retries times) and the least disturbed attempt is kept.
        """
        if not target.up:
            return {"error": target.error or "not running"}
        watched = (usage_of or target).proc
        assert watched is not None
        attempts: list[dict[str, Any]] = []
        try:
            for attempt in range(1 + self.args.retries):
                if self.args.warmup > 0:
                    self.wrk(target.port, scenario, self.args.warmup, f"{label}-warmup")
                with UsageSampler(watched.pid, single_cpu(self.args.server_cpu), single_cpu(self.args.client_cpu),
                                  client_pids) as usage:
                    data = self.wrk(target.port, scenario, self.args.duration,
                                    label if attempt == 0 else f"{label}-retry{attempt}")
                data["rss_mib"], data["threads"] = usage.peak_rss, usage.peak_threads
                data["other_cpu"], data["other_client_cpu"] = usage.other_cpu, usage.other_client_cpu
                data["noise"] = max(usage.other_cpu or 0.0, usage.other_client_cpu or 0.0)
                attempts.append(data)
                if data["noise"] <= self.args.noise:
                    break
                print(f"    (others used {data['noise']:.0%} of a pinned CPU during {label}; "
                      f"{'measuring again' if attempt < self.args.retries else 'keeping the quietest'})")
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            if not attempts:
                return {"error": str(exc)[:300]}
        best = min(attempts, key=lambda d: d["noise"])
        best["attempts"] = len(attempts)
        return best


# --- aggregation and output ------------------------------------------------------------------------


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of rate and latency; error counts summed; an error in any round is kept."""
    good = [s for s in samples if "error" not in s]
    if not good:
        return {"error": samples[0].get("error", "no data") if samples else "no data"}
    out: dict[str, Any] = {"rounds": len(good)}
    for key in ("rps", "p50_us", "p99_us", "rss_mib", "threads", "other_cpu", "other_client_cpu"):
        values = [s[key] for s in good if s.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    for key in ("status", "connect", "read", "write", "timeout", "socket_errors", "requests"):
        out[key] = sum(s.get(key, 0) for s in good)
    out["rps_all"] = [round(s["rps"]) for s in good]
    out["noise_all"] = [round(s.get("noise", 0.0), 3) for s in good]
    out["attempts"] = sum(s.get("attempts", 1) for s in good)
    if len(good) < len(samples):
        out["failed_rounds"] = len(samples) - len(good)
    return out


def cell(text: str, limit: int = 120) -> str:
    """Text fit for one Markdown table cell: one line, no pipes."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.0f}%"


def noise_text(data: dict[str, Any]) -> str:
    return f"{percent(data.get('other_cpu'))} / {percent(data.get('other_client_cpu'))}"


def ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def ratio_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def direct_table(rows: list[tuple[str, dict[str, Any], str]], baseline: dict[str, Any] | None) -> list[str]:
    lines = ["| server | req/s | p50 ms | p99 ms | ratio to calc-server | non-2xx | socket errors (c/r/w/t) "
             "| peak RSS MiB | threads | others' CPU use (server/client core) | answers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    base = baseline.get("rps") if baseline else None
    for name, data, answers in rows:
        if "error" in data:
            lines.append(f"| {name} | — | — | — | — | — | — | — | — | — | did not run: {cell(data['error'])} |")
            continue
        ratio = data["rps"] / base if base else None
        errors = f"{data['connect']}/{data['read']}/{data['write']}/{data['timeout']}"
        lines.append(f"| {name} | {data['rps']:,.0f} | {ms(data.get('p50_us'))} | {ms(data.get('p99_us'))} "
                     f"| {ratio_text(ratio)} | {data['status']} | {errors} | {data.get('rss_mib', 0):.0f} "
                     f"| {data.get('threads', 0):.0f} | {noise_text(data)} | {answers} |")
    return lines


def rps_of(data: dict[str, Any] | None) -> float | None:
    return data.get("rps") if data and "error" not in data else None


def clean(data: dict[str, Any] | None) -> bool:
    """Measured, with no non-2xx responses and no socket errors."""
    return bool(data) and "error" not in data and data["status"] == 0 and data["socket_errors"] == 0


def ratio_check(label: str, ours: dict[str, Any] | None, other: dict[str, Any] | None, goal: float,
                ours_ok: bool) -> tuple[str, str, str, str]:
    a, b = rps_of(ours), rps_of(other)
    if a is None or b is None or not b:
        return label, "—", f"≥ {goal:g}x", "n/a"
    value = a / b
    passed = value >= goal and ours_ok and clean(ours)
    note = "" if clean(ours) and ours_ok else " (errors or wrong answers)"
    return label, f"{value:.2f}x", f"≥ {goal:g}x", ("PASS" if passed else "FAIL") + note


def render(report: dict[str, Any]) -> tuple[str, list[tuple[str, str, str, str]]]:
    meta = report["meta"]
    direct, proxied, idle = report["direct"], report["proxied"], report["idle"]
    answers = report["answers"]
    out = [f"# Benchmark {meta['date']}", "",
           f"- server code: {meta['source']}",
           f"- machine: {meta['machine']}",
           f"- tools: {meta['versions']}",
           f"- settings: {meta['settings']}",
           f"- load average (1/5/15 min) before: {meta['load_before']}, after: {meta['load_after']} "
           "(anything else running on this machine skews the numbers)",
           "- servers each run as one process (one worker) pinned to CPU "
           f"{meta['server_cpu']}; wrk (1 thread) pinned to CPU {meta['client_cpu']}; nginx proxy pinned to CPU "
           f"{meta['proxy_cpu']}; keep-alive; medians over {meta['rounds']} interleaved round(s).",
           "- non-2xx and socket errors are wrk's counts summed over the rounds; *answers* is a check of "
           "the real response bodies (`5` and `{\"result\": 8}`) made before measuring.",
           f"- *others' CPU use*: share of the server's and of the client's pinned CPU taken by processes "
           f"other than the ones measured (median over rounds). A measurement with more than "
           f"{meta['noise']:.0%} on either was redone up to {meta['retries']} times and the quietest attempt "
           "kept; rows still showing more than that are skewed by other work on the machine.", ""]
    checks: list[tuple[str, str, str, str]] = []
    for scenario, title in SCENARIOS.items():
        rows = [(name, direct[name][scenario], answers.get(name, "")) for name in direct]
        out += [f"## Direct, one core: {title}", "", *direct_table(rows, direct.get(OURS, {}).get(scenario)), ""]
        ours = direct.get(OURS, {}).get(scenario)
        ours_ok = answers.get(OURS) == "ok"
        checks.append(ratio_check(f"{title} vs waitress", ours, direct.get("waitress", {}).get(scenario), 3.0,
                                  ours_ok))
        checks.append(ratio_check(f"{title} vs granian", ours, direct.get("granian", {}).get(scenario), 0.7,
                                  ours_ok))
    if proxied:
        for scenario, title in SCENARIOS.items():
            rows = [(f"nginx → {name}", proxied[name][scenario], answers.get(f"nginx → {name}", ""))
                    for name in proxied]
            out += [f"## Through nginx (upstream keepalive): {title}", "",
                    *direct_table(rows, proxied.get(OURS, {}).get(scenario)), "",
                    "RSS and threads are those of the upstream server; the nginx proxy is not counted.", ""]
            checks.append(ratio_check(f"nginx: {title} vs nginx → granian", proxied.get(OURS, {}).get(scenario),
                                      proxied.get("granian", {}).get(scenario), 0.9,
                                      answers.get(f"nginx → {OURS}") == "ok"))
    if idle:
        out += idle_section(idle, meta, checks)
    out += ["## Targets", "", "| target | measured | goal | result |", "| --- | ---: | ---: | --- |"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in checks]
    out.append("")
    return "\n".join(out), checks


def idle_section(idle: dict[str, Any], meta: dict[str, Any], checks: list[tuple[str, str, str, str]]) -> list[str]:
    base, loaded = idle.get("without", {}), idle.get("with", {})
    count = meta["idle"]
    out = [f"## {count:,} idle keep-alive connections (calc-server, GET /add/2/3)", "",
           "| run | req/s | p50 ms | p99 ms | non-2xx | socket errors (c/r/w/t) | RSS MiB (peak) | threads (peak) "
           "| others' CPU use (server/client core) |",
           "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for label, data in (("without idle connections", base), (f"with {count:,} idle connections", loaded)):
        if "error" in data or not data:
            out.append(f"| {label} | — | — | — | — | — | — | — | did not run: {cell(data.get('error', ''))} |")
            continue
        errors = f"{data['connect']}/{data['read']}/{data['write']}/{data['timeout']}"
        out.append(f"| {label} | {data['rps']:,.0f} | {ms(data.get('p50_us'))} | {ms(data.get('p99_us'))} "
                   f"| {data['status']} | {errors} | {data.get('rss_mib', 0):.1f} | {data.get('threads', 0):.0f} "
                   f"| {noise_text(data)} |")
    holder = idle.get("holder", {})
    out += ["", f"Idle holder: {json.dumps(holder, sort_keys=True)}", ""]
    if "error" in base or "error" in loaded or not base or not loaded:
        checks.append(("idle: throughput with/without", "—", "≥ 0.80", "n/a"))
        return out
    held = holder.get("open_after", 0)
    checks.append(("idle: idle connections served and still open after the run", f"{held:,}", f"{count:,}",
                   "PASS" if held >= count else "FAIL"))
    value = loaded["rps"] / base["rps"] if base["rps"] else 0
    checks.append(("idle: throughput with / without", f"{value:.2f}", "≥ 0.80",
                   "PASS" if value >= 0.8 and clean(loaded) else "FAIL"))
    # "Bounded by the pool": at most the pool plus a few service threads, and no growth from the
    # idle connections (at most 2 more than without them).
    pool = meta["threads"]
    limit = int(min(base.get("threads", 0) + 2, pool + 8))
    checks.append((f"idle: threads with idle connections (pool {pool})", f"{loaded.get('threads', 0):.0f}",
                   f"≤ {limit}", "PASS" if loaded.get("threads", 0) <= limit else "FAIL"))
    checks.append(("idle: RSS with idle connections", f"{loaded.get('rss_mib', 0):.1f} MiB", "< 200 MB",
                   "PASS" if loaded.get("rss_mib", 1e9) * 1.048576 < 200 else "FAIL"))
    return out


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -r requirements-bench.txt)", file=sys.stderr)
        return False
    direct, proxied, idle = report["direct"], report["proxied"], report["idle"]
    names = list(direct)
    series: list[tuple[str, list[float]]] = []
    for scenario, title in SCENARIOS.items():
        series.append((f"direct {title}", [rps_of(direct[n][scenario]) or 0 for n in names]))
    for scenario, title in SCENARIOS.items():
        if proxied:
            series.append((f"via nginx {title}", [rps_of(proxied.get(n, {}).get(scenario)) or 0 for n in names]))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" if v else "" for v in values], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("requests/s (median)")
    ax.set_title(f"wrk, {report['meta']['connections']} keep-alive connections, server on one core")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    ax2 = axes[1]
    if idle and "error" not in idle.get("without", {"error": 1}) and "error" not in idle.get("with", {"error": 1}):
        labels = ["without", f"with {report['meta']['idle']:,}\nidle conns"]
        values = [idle["without"]["rps"], idle["with"]["rps"]]
        bars = ax2.bar(labels, values, color=["tab:blue", "tab:orange"])
        ax2.bar_label(bars, labels=[f"{v:,.0f} req/s\n{d.get('rss_mib', 0):.0f} MiB, {d.get('threads', 0):.0f} thr"
                                    for v, d in zip(values, (idle["without"], idle["with"]), strict=True)],
                      fontsize=8)
        ax2.margins(y=0.25)
    else:
        ax2.text(0.5, 0.5, "idle-connection run\nnot available", ha="center", va="center")
    ax2.set_title("calc-server, GET /add/2/3")
    fig.suptitle(f"calculator benchmark {report['meta']['date']} ({report['meta']['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tool_versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("gunicorn", "waitress", "granian", "locust"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            parts.append(f"{dist} {version(dist)}")
    for argv, pattern in ((["nginx", "-v"], r"nginx/(\S+)"), (["wrk", "-v"], r"wrk (\S+)")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            match = re.search(pattern, out.stdout + out.stderr)
            if match:
                parts.append(f"{argv[0]} {match.group(1)}")
    return ", ".join(parts)


def export_source(ref: str, dest: Path) -> tuple[Path, str, str]:
    """Where to import server/ from: (directory, commit, description).

    A ref exports server/ as committed (``git archive``), so teammates editing the working tree
    during a run cannot change what is measured; ``worktree`` uses the working tree as it is.
    """
    if ref == "worktree":
        commit, dirty = git_commit()
        return ROOT, commit, "the working tree" + (" (with uncommitted changes in server/)" if dirty else "")
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=10)
    if sha.returncode != 0:
        raise SystemExit(f"--ref {ref}: not a commit ({sha.stderr.strip()})")
    commit = sha.stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "server"], cwd=ROOT, capture_output=True,
                             timeout=60, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest, commit[:12], f"`server/` exported from commit {commit[:12]} ({ref})"


def git_commit() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "server"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}"


# --- the run ---------------------------------------------------------------------------------------

ALL_SERVERS = (OURS, "gunicorn", "waitress", "granian", "nginx")


def rotations(items: list[str], round_index: int) -> list[str]:
    shift = round_index % len(items) if items else 0
    return items[shift:] + items[:shift]


def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = ROOT / "results" / "tmp" / f"bench-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logs.relative_to(ROOT)}")
    source, commit, source_text = export_source(args.ref, logs / "src")
    bench = Bench(args, logs, source)
    meta = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": commit, "source": source_text,
            "machine": machine(), "versions": tool_versions(), "rounds": args.rounds, "load_before": loadavg(),
            "connections": args.connections, "threads": args.threads, "idle": args.idle if not args.skip_idle else 0,
            "noise": args.noise, "retries": args.retries,
            "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "proxy_cpu": args.proxy_cpu,
            "settings": f"{args.duration:g} s per measurement after a {args.warmup:g} s warm-up, "
                        f"{args.connections} connections, pool of {args.threads} threads "
                        f"(calc-server, gunicorn gthread, waitress; granian uses its defaults), app {args.app}"}
    report: dict[str, Any] = {"meta": meta, "direct": {}, "proxied": {}, "idle": {}, "answers": {}}

    starters: dict[str, Callable[[], Target]] = {OURS: bench.start_ours, "gunicorn": bench.start_gunicorn,
                                                 "waitress": bench.start_waitress, "granian": bench.start_granian,
                                                 "nginx": bench.start_nginx_fixed}
    targets: dict[str, Target] = {}
    print("starting servers ...")
    for name in args.servers:
        targets[name] = starters[name]()
        report["answers"][targets[name].name] = targets[name].answers if targets[name].up else "—"
        t = targets[name]
        state = f"up on port {t.port}, answers {t.answers}" if t.up else f"FAILED: {t.error}"
        print(f"  {t.name}: {state}")

    proxied: dict[str, Target] = {}
    if not args.skip_nginx:
        ups = [t for t in targets.values() if t.up]
        if ups:
            by_display = bench.start_proxy(ups)
            names = {t.name: key for key, t in targets.items()}
            proxied = {names[display]: t for display, t in by_display.items()}
            for t in proxied.values():
                report["answers"][t.name] = t.answers if t.error is None else "—"

    direct_samples: dict[str, dict[str, list]] = {n: {s: [] for s in SCENARIOS} for n in targets}
    proxy_samples: dict[str, dict[str, list]] = {n: {s: [] for s in SCENARIOS} for n in proxied}
    order = list(targets)
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}")
        for scenario in SCENARIOS:
            for name in rotations(order, round_index):
                label = f"r{round_index + 1}-direct-{name}-{scenario}"
                data = bench.measure(targets[name], scenario, label)
                direct_samples[name][scenario].append(data)
                print(f"  direct {targets[name].name:<20} {SCENARIOS[scenario]:<14} {brief(data)}")
            for name in rotations([n for n in order if n in proxied], round_index):
                label = f"r{round_index + 1}-nginx-{name}-{scenario}"
                target = proxied[name]
                assert target.proc is not None  # the nginx proxy, on the client CPU
                data = bench.measure(target, scenario, label, usage_of=targets[name], client_pids=(target.proc.pid,))
                proxy_samples[name][scenario].append(data)
                print(f"  {target.name:<27} {SCENARIOS[scenario]:<14} {brief(data)}")

    display = {n: targets[n].name for n in targets}
    report["direct"] = {display[n]: {s: summarize(v) for s, v in d.items()} for n, d in direct_samples.items()}
    report["proxied"] = {display[n]: {s: summarize(v) for s, v in d.items()} for n, d in proxy_samples.items()}

    # Free the CPU before the idle-connection run: stop everything started so far.
    Proc.stop_all()
    if not args.skip_idle:
        report["idle"] = idle_run(bench, args)
    meta["load_after"] = loadavg()
    return report


def brief(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"ERROR {data['error'][:150]}"
    return (f"{data['rps']:>10,.0f} req/s  p50 {ms(data['p50_us'])} ms  p99 {ms(data['p99_us'])} ms  "
            f"non-2xx {data['status']}  socket errors {data['socket_errors']}")


def idle_run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    print(f"idle-connection run: {args.idle:,} connections")
    headroom = args.idle + 4 * args.connections + 100
    target = bench.start_ours(("--max-connections", str(headroom)), log_name="calc-server-idle")
    if not target.up:
        return {"without": {"error": target.error}, "with": {"error": target.error}, "holder": {}}
    assert target.proc is not None
    without, loaded, holder_info = [], [], {}
    for round_index in range(args.rounds):
        data = bench.measure(target, "get", f"r{round_index + 1}-idle-without")
        without.append(data)
        print(f"  without idle connections  {brief(data)}")
        holder = Proc("idle holder", pinned(args.client_cpu, [
            sys.executable, str(HOLDER), "--port", str(target.port), "--count", str(args.idle)]),
            bench.logs / f"idle-holder-r{round_index + 1}.log", env=bench.env, stdin=subprocess.PIPE,
            text_stdout=True)
        try:
            ready = read_tagged(holder, "READY", timeout=args.idle_open_timeout + 30)
            holder_info = {"opened": ready.get("open"), "failed": ready.get("failed"),
                           "open_seconds": ready.get("seconds"), "errors": ready.get("errors")}
            idle_rss, idle_threads = proc_usage(target.proc.pid)
            holder_info.update(idle_rss_mib=round(idle_rss, 1), idle_threads=idle_threads)
            data = bench.measure(target, "get", f"r{round_index + 1}-idle-with", client_pids=(holder.pid,))
            loaded.append(data)
            print(f"  with {args.idle:,} idle connections  {brief(data)}")
            assert holder.proc.stdin is not None
            holder.proc.stdin.write("status\n")
            holder.proc.stdin.flush()
            status = read_tagged(holder, "STATUS", timeout=30)
            holder_info.update(open_after=status.get("open"), closed_by_server=status.get("closed_by_server"),
                               bad_responses=status.get("bad_responses"))
            print(f"  holder: {holder_info}")
        except (RuntimeError, OSError) as exc:
            loaded.append({"error": str(exc)[:300]})
            print(f"  ! idle holder: {exc}", file=sys.stderr)
        finally:
            holder.stop()
    rss, threads = proc_usage(target.proc.pid)
    holder_info.update(after_rss_mib=round(rss, 1), after_threads=threads)
    target.proc.stop()
    return {"without": summarize(without), "with": summarize(loaded), "holder": holder_info}


def read_tagged(proc: Proc, tag: str, timeout: float) -> dict[str, Any]:
    """Read the child's stdout until a line ``TAG {json}``."""
    assert proc.proc.stdout is not None
    result: dict[str, Any] = {}
    error: list[str] = []

    def reader() -> None:
        assert proc.proc.stdout is not None
        for line in proc.proc.stdout:
            if line.startswith(tag + " "):
                result.update(json.loads(line[len(tag) + 1:]))
                return
            if line.startswith("ERROR "):
                error.append(line)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if error:
        raise RuntimeError(error[0].strip())
    if not result:
        raise RuntimeError(f"{proc.name}: no {tag} line within {timeout}s: {proc.log_tail()}")
    return result


def write_results(report: dict[str, Any], markdown: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now().strftime("%Y-%m-%d")
    stem = out / f"bench-{day}"
    png = stem.with_suffix(".png")
    has_chart = chart(report, png)
    image = f"\n![throughput chart]({png.name})\n" if has_chart else ""
    stem.with_suffix(".md").write_text(markdown + image)
    (out / "latest.md").write_text(markdown.replace("# Benchmark", "# Latest benchmark", 1)
                                   + (f"\n![throughput chart]({png.name})\n" if has_chart else "")
                                   + f"\nFrom `{stem.with_suffix('.md').name}`.\n")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return [stem.with_suffix(".md"), out / "latest.md", stem.with_suffix(".json")] + ([png] if has_chart else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="wrk benchmark of the calculator server against gunicorn, "
                                     "waitress, granian and nginx (see the module docstring)")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measurement, 0: none (2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported (1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections (50)")
    parser.add_argument("--threads", type=int, default=8,
                        help="thread pool of calc-server, gunicorn gthread and waitress (8)")
    parser.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections in table 3 (10000)")
    parser.add_argument("--idle-open-timeout", type=float, default=120.0, help="seconds to open them (120)")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help=f"comma list of servers to run, from {','.join(ALL_SERVERS)} (all)")
    parser.add_argument("--app", default="server.calculator:app", help="WSGI app every server serves")
    parser.add_argument("--skip-nginx", action="store_true", help="leave out the through-nginx table")
    parser.add_argument("--skip-idle", action="store_true", help="leave out the idle-connection table")
    parser.add_argument("--server-cpu", default="0", help="CPU list for the servers (taskset -c), 'none' to not pin")
    parser.add_argument("--client-cpu", default="1", help="CPU list for wrk and the idle holder")
    parser.add_argument("--proxy-cpu", default="1", help="CPU list for the nginx proxy in table 2")
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds a server gets to start (30)")
    parser.add_argument("--ref", default="HEAD",
                        help="commit whose server/ is measured (exported to results/tmp), or 'worktree' (HEAD)")
    parser.add_argument("--noise", type=float, default=0.10,
                        help="share of a pinned CPU other processes may use before a measurement is redone (0.10)")
    parser.add_argument("--retries", type=int, default=2, help="times a disturbed measurement is redone (2)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the machine to be under 10%% busy (0: don't)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where results go (results/)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only; write no result files")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(ALL_SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    for key in ("server_cpu", "client_cpu", "proxy_cpu"):
        if getattr(args, key).lower() == "none":
            setattr(args, key, None)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    return args


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds``."""

    def total() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values) - values[3] - values[4], sum(values)

    busy0, all0 = total()
    time.sleep(seconds)
    busy1, all1 = total()
    return (busy1 - busy0) / max(1, all1 - all0)


def wait_quiet(limit: float, threshold: float = 0.10) -> None:
    """Wait up to ``limit`` seconds for the machine to be less than ``threshold`` busy."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy(2.0)
        if busy < threshold:
            print(f"machine is quiet ({busy:.0%} busy)")
            return
        if time.monotonic() >= deadline:
            print(f"warning: machine still {busy:.0%} busy after {limit:g}s; measuring anyway", file=sys.stderr)
            return
        print(f"machine {busy:.0%} busy; waiting for it to calm down ...")
        time.sleep(8)


def preflight(args: argparse.Namespace) -> None:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if any(getattr(args, k) is not None for k in ("server_cpu", "client_cpu", "proxy_cpu")) and not shutil.which(
            "taskset"):
        missing.append("taskset")
    if missing:
        raise SystemExit(f"missing programs: {', '.join(missing)} (scripts/bench installs them)")
    if (os.cpu_count() or 1) < 2 and args.server_cpu != args.client_cpu:
        print("warning: fewer than 2 CPUs; server and wrk will share one", file=sys.stderr)
    if args.client_cpu is not None:
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, cpu_set(args.client_cpu))  # keep this harness off the server's CPU
    limit = raise_nofile()
    if not args.skip_idle and limit < args.idle + 1000:
        raise SystemExit(f"RLIMIT_NOFILE hard limit is {limit}; {args.idle} idle connections need more "
                         "(raise it with ulimit -Hn, or use --idle / --skip-idle)")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit, so the finally blocks stop every child."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    with signals_raise():
        try:
            report = run(args)
        finally:
            Proc.stop_all()
    markdown = render(report)[0]
    print()
    print(markdown)
    if not args.no_write:
        for path in write_results(report, markdown, args.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    ours = report["direct"].get(OURS, {})
    if not ours or all("error" in v for v in ours.values()):
        print("calc-server produced no measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
