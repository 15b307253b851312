"""What metrics cost per request, in CPU instructions counted by callgrind: metrics off, then on.

Requests per second on a shared machine move with everyone else's load; the
instructions a request executes do not. So this runs the server under
valgrind's callgrind (one worker, one thread, no access log), sends one
keep-alive client's requests (``GET /add/2/3``, then ``POST /calc``) and has
callgrind count only those phases (``callgrind_control --zero`` / ``--dump``)
in the thread that serves them, once without and once with ``--metrics-bind``.
The main thread's periodic work is left out (valgrind slows the requests, not
the clock, so it would weigh 50 times too much); its one metrics task, copying
the counts to shared memory 4 times a second, is timed on its own at the end.

    python3 loadtest/metrics_cost.py [--requests 2000] [--cpu-requests 30000] [--rounds 3]

A second table gives the server's CPU time per request (user and system, so
the kernel's share of recv and send is in it) without valgrind, off and on
alternately; that one moves with the machine's load.

Needs valgrind. Instructions are not time (cache misses and system calls are
not in them), but the difference between the two runs is the metrics' own
Python code, which is what they measure well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .instructions import start_under_valgrind

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"op": "mult", "arg1": 6, "arg2": 7}).encode()
KINDS = {
    "GET /add/2/3": b"GET /add/2/3 HTTP/1.1\r\nHost: bench\r\n\r\n",
    "POST /calc": (b"POST /calc HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY),
}


def read_answer(sock: socket.socket, buffer: bytes) -> bytes:
    """One response with a Content-Length body; returns what was read beyond it."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head[:80]
    return rest[length:]


def drive(address: tuple[str, int], request: bytes, count: int) -> None:
    with socket.create_connection(address, timeout=60) as sock:
        buffer = b""
        for _ in range(count):
            sock.sendall(request)
            buffer = read_answer(sock, buffer)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure(metrics: bool, count: int, workdir: Path) -> dict[str, int]:
    out = workdir / ("on" if metrics else "off")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--separate-threads=yes",
           sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--threads", "1",
           "--no-access-log"]
    if metrics:
        cmd += ["--metrics-bind", "127.0.0.1:0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc, address = start_under_valgrind(cmd, ROOT, env)
    try:
        result = {}
        for name, request in KINDS.items():
            drive(address, request, max(count // 10, 50))  # warm: caches filled, code paths taken once
            control(proc.pid, "--zero")
            drive(address, request, count)
            tag = name.split()[0].lower()
            before = set(workdir.glob(f"{out.name}.{proc.pid}.*"))
            control(proc.pid, f"--dump={tag}")
            time.sleep(0.5)
            dumps = set(workdir.glob(f"{out.name}.{proc.pid}.*")) - before
            # One file per thread: the serving thread is the busiest; the main thread's timer work
            # (0.25 s sweeps, 2 ms ticks) runs 50 times as often per request under valgrind, so it is left out.
            result[name] = max(instructions(path) for path in dumps if not path.name.endswith("-01")) // count
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def cpu_seconds(pid: int) -> float:
    """User plus system time of a process so far (kernel work of recv/send included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(metrics: bool, count: int) -> dict[str, float]:
    """Microseconds of server CPU per request, natively (no valgrind), for each kind."""
    cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--threads", "1", "--no-access-log"]
    if metrics:
        cmd += ["--metrics-bind", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                address = ("127.0.0.1", int(match.group(1)))
                break
        else:
            raise RuntimeError("the server did not start")
        result = {}
        for name, request in KINDS.items():
            drive(address, request, 1000)
            before = cpu_seconds(proc.pid)
            drive(address, request, count)
            result[name] = (cpu_seconds(proc.pid) - before) / count * 1e6
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per kind and run (default 2000)")
    parser.add_argument("--cpu-requests", type=int, default=30000,
                        help="requests per kind for the CPU-time comparison (default 30000; 0 skips it)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds of the CPU-time comparison")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("metrics_cost: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as tmp:
        off = measure(False, args.requests, Path(tmp))
        on = measure(True, args.requests, Path(tmp))
    print(f"instructions per request (callgrind, {args.requests} requests each, one keep-alive client)")
    print(f"{'request':<14} {'metrics off':>12} {'metrics on':>12} {'on/off':>8}")
    for name in KINDS:
        print(f"{name:<14} {off[name]:>12,} {on[name]:>12,} {on[name] / off[name]:>8.3f}")
    if args.cpu_requests:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for metrics in (False, True):
                runs[metrics].append(cpu_per_request(metrics, args.cpu_requests))
        print(f"\nserver CPU time per request, microseconds (user+system, natively, {args.cpu_requests} requests, "
              f"median of {args.rounds} alternating rounds)")
        print(f"{'request':<14} {'metrics off':>12} {'metrics on':>12} {'on/off':>8}")
        for name in KINDS:
            off_us = statistics.median(run[name] for run in runs[False])
            on_us = statistics.median(run[name] for run in runs[True])
            print(f"{name:<14} {off_us:>12.1f} {on_us:>12.1f} {on_us / off_us:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
