"""Processes the benchmark starts and watches: process groups, CPU pinning, usage sampling.

Every child runs in its own process group (``Proc``) so that stopping it also stops what it forked
(a gunicorn or granian worker). ``UsageSampler`` tells how much of each pinned CPU other work on
the machine took during a measurement, which is how a disturbed measurement is recognised.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


class Proc:
    """A child in its own process group, with its output in a log file."""

    registry: list[Proc] = []

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL, text_stdout: bool = False, cwd: Path = ROOT,
                 discard_stdout: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self._log_file.write("$ " + " ".join(argv) + "\n")
        self._log_file.flush()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=stdin, start_new_session=True, text=True,
            stdout=subprocess.PIPE if text_stdout else subprocess.DEVNULL if discard_stdout else self._log_file,
            stderr=self._log_file)
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
    """The servers' environment: ``server`` imported from ``source``, the benchmark's apps from the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALC_", "GRANIAN_", "GUNICORN_"))}
    paths = [str(source)] + ([str(ROOT)] if source != ROOT else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
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
