"""Thread scaling with and without the GIL: one CPU-bound app (loadtest/cpu_app.py) under several setups.

Usage (as root: the free-threaded and Debian interpreters run in the test matrix's roots, see
scripts/matrix-run): python3 -m loadtest.thread_scaling [--duration S] [--rounds N] [--only NAME ...]

Each setup's server is pinned with taskset to one core or to both, and driven by wrk with 16
connections; rounds go round-robin over the setups, so a change in the machine's load hits them
all alike, and the table shows each setup's median requests per second over the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = "loadtest.cpu_app:app"
GRANIAN_FT = "/venvs/bench-python3.13t"  # granian for the free-threaded lane (it has cp313t wheels)
READY = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Setup:
    name: str
    cores: str  # taskset's list
    command: tuple[str, ...]  # prints the ready line with --port 0, or listens on a given port
    port: int = 0  # a fixed port for servers that do not print one (granian)


def _ours(lane: str | None, *flags: str) -> tuple[str, ...]:
    server = ("python", "-m", "server", "--app", APP, "--port", "0", "--no-access-log", *flags)
    if lane is None:
        return (sys.executable, *server[1:])
    return ("bash", "scripts/matrix-run", lane, *server)


SETUPS = [
    Setup("3.13t GIL off, 1 process x 1 thread, 1 core", "0", _ours("python3.13t", "--threads", "1")),
    Setup("3.13 GIL, 1 process x 1 thread, 1 core", "0", _ours("python3.13", "--threads", "1")),
    Setup("3.13t GIL off, 1 process x 8 threads, 1 core", "0", _ours("python3.13t", "--threads", "8")),
    Setup("3.13t GIL off, 1 process x 8 threads, 2 cores", "0,1", _ours("python3.13t", "--threads", "8")),
    Setup("3.11 GIL, 1 process x 8 threads, 2 cores", "0,1", _ours(None, "--threads", "8")),
    Setup("3.11 GIL, --workers 2 x 4 threads, 2 cores", "0,1", _ours(None, "--workers", "2", "--threads", "4")),
    Setup("3.13 GIL, --workers 2 x 4 threads, 2 cores", "0,1",
          _ours("python3.13", "--workers", "2", "--threads", "4")),
    Setup("granian 3.13t GIL off, 1 worker x 8 threads, 2 cores", "0,1",
          ("bash", "scripts/matrix-run", "python3.13t", f"{GRANIAN_FT}/bin/granian", "--interface", "wsgi", "--host",
           "127.0.0.1", "--port", "18732", "--workers", "1", "--blocking-threads", "8", "--no-ws", APP), port=18732),
    Setup("granian 3.11, 2 workers x 4 threads, 2 cores", "0,1",
          ("granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", "18731", "--workers", "2",
           "--blocking-threads", "4", "--no-ws", APP), port=18731),
]


def install_granian_ft() -> None:
    """granian in a venv of its own next to the free-threaded lane's (not in the test venv)."""
    script = (f"test -x {GRANIAN_FT}/bin/granian || {{ python -m venv {GRANIAN_FT} && "
              f"{GRANIAN_FT}/bin/python -m pip install -q --only-binary :all: granian; }}")
    subprocess.run(["bash", "scripts/matrix-run", "python3.13t", "sh", "-c", script], cwd=ROOT, check=True,
                   env={**os.environ, "MATRIX_ENV": "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"})


def start(setup: Setup) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(["taskset", "-c", setup.cores, *setup.command], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    port = setup.port
    lines: list[str] = []
    if not port:
        for line in proc.stdout:
            lines.append(line)
            match = READY.search(line)
            if match:
                port = int(match.group(1))
                break
        else:
            raise RuntimeError(f"{setup.name}: exited before listening:\n{''.join(lines)}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    deadline = time.monotonic() + 30
    while True:  # ready when it answers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                answer.read()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name}: does not answer") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def wrk(port: int, duration: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.+)", out)
    if errors:
        raise RuntimeError(f"wrk reported errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="setups whose name contains any of these")
    args = parser.parse_args()
    setups = [s for s in SETUPS if not args.only or any(o in s.name for o in args.only)]
    if any(GRANIAN_FT in " ".join(s.command) for s in setups):
        install_granian_ft()
    results: dict[str, list[float]] = {s.name: [] for s in setups}
    for round_ in range(args.rounds):
        for setup in setups:
            proc, port = start(setup)
            try:
                wrk(port, 2)  # warm-up
                results[setup.name].append(wrk(port, args.duration))
            finally:
                stop(proc)
            print(f"round {round_ + 1}: {setup.name}: {results[setup.name][-1]:.0f} req/s", file=sys.stderr)
    print("| setup | req/s (median) | rounds |")
    print("| --- | ---: | --- |")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
