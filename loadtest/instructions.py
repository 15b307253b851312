"""Instructions per request on the serving threads, counted by callgrind: the transport's speed budget.

    python -m loadtest.instructions [--source DIR] [--requests N] [--rows get,post,...] [--json OUT]
                                    [--compare BASE.json] [--budget 3]

Requests per second on a shared two-core machine move by a tenth between runs with everyone else's
load; the instructions the server executes for one request do not (a run repeats to within a few
hundred). So this is how a change to the hot path proves it costs nothing: run it before and after,
on the same interpreter, and compare the rows.

What it does: starts the server from ``--source`` (default: this tree) under valgrind's callgrind with
``PYTHONHASHSEED=0`` (string hashes, and so dict layouts, are the same every run), one process, one
worker thread (``--threads``), no access log. For each row it sends warm-up requests (caches filled,
every code path taken once), zeroes the counters (``callgrind_control --zero``), sends ``--requests``
requests, dumps, and divides the instructions of every thread but the main one by the count. The
main thread is left out: valgrind slows the requests but not the clock, so its timer work (stall
watching, the timeout sweep) would weigh tens of times more per request than it does natively.

The rows (the benchmark's workloads, loadtest/wrk/bench.lua):

- ``get``: keep-alive ``GET /add/2/3``, the same head every time;
- ``post``: keep-alive ``POST /calc`` with a small JSON body;
- ``ids``: keep-alive ``GET /add/2/3`` with a new ``X-Request-ID`` and ``X-Forwarded-For`` each time,
  as a proxy sends them;
- ``close``: ``GET /add/2/3`` with ``Connection: close`` on a new connection each time (accept,
  serve, lingering close);
- ``tls``: keep-alive ``GET /add/2/3`` over TLS 1.3 (a throw-away certificate made with ``openssl``).

``--compare`` reads an earlier ``--json`` and prints each row's ratio; with ``--budget`` the exit status
is 1 when a row grew by more than that many percent. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .bench.servers import self_signed_certificate

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"op": "mult", "arg1": 2, "arg2": 4}'
GET = b"GET /add/2/3 HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n\r\n"
POST = (b"POST /calc HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
CLOSE = b"GET /add/2/3 HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nConnection: close\r\n\r\n"
ROWS = {
    "get": "keep-alive GET /add/2/3",
    "post": "keep-alive POST /calc",
    "ids": "GET, unique X-Request-ID + X-Forwarded-For",
    "close": "a new connection per GET",
    "tls": "TLS keep-alive GET",
}
Address = tuple[str, int]


def ids_request(number: int) -> bytes:
    """A GET as a proxy forwards it: a request id and a client address never sent before."""
    return (b"GET /add/2/3 HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n"
            b"X-Request-ID: 5f3a9c1e-%012d\r\nX-Forwarded-For: 10.%d.%d.%d\r\n\r\n"
            % (number, number >> 16 & 255, number >> 8 & 255, number & 255))


def read_answer(sock: socket.socket, buffer: bytes) -> bytes:
    """One 200 answer with a Content-Length body; returns what was read beyond it."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed before a whole answer: {buffer[:200]!r}")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200 ") or match is None:
        raise RuntimeError(f"unexpected answer: {head[:200]!r}")
    length = int(match.group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return rest[length:]


def keep_alive(make: Callable[[int], bytes], tls: bool = False) -> Callable[[Address, int, int], None]:
    def drive(address: Address, first: int, count: int) -> None:
        sock: socket.socket = socket.create_connection(address, timeout=120)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # our own throw-away certificate
            sock = context.wrap_socket(sock)
        with sock:
            buffer = b""
            for number in range(first, first + count):
                sock.sendall(make(number))
                buffer = read_answer(sock, buffer)
    return drive


def new_connections(address: Address, first: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(address, timeout=120) as sock:
            sock.sendall(CLOSE)
            read_answer(sock, b"")
            while sock.recv(65536):  # to the server's close
                pass


DRIVERS: dict[str, Callable[[Address, int, int], None]] = {
    "get": keep_alive(lambda number: GET),
    "post": keep_alive(lambda number: POST),
    "ids": keep_alive(ids_request),
    "close": new_connections,
    "tls": keep_alive(lambda number: GET, tls=True),
}


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=300)


def total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0  # a thread that executed nothing since the last zeroing


def start_under_valgrind(cmd: list[str], cwd: Path,
                         env: dict[str, str]) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """Start ``cmd`` (a server under valgrind, on 127.0.0.1 port 0) and wait for its ready line: the process
    and the address it listens on. The ready line comes on stderr, merged here into the pipe read."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, ("127.0.0.1", int(match.group(1)))
    proc.wait(timeout=60)
    raise RuntimeError("the server did not start under valgrind")


def measure(source: Path, rows: list[str], count: int, threads: int, workdir: Path, tls: bool) -> dict[str, int]:
    """One server under callgrind; instructions per request for each row, serving threads only."""
    out = workdir / ("tls" if tls else "plain")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--separate-threads=yes",
           sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--threads", str(threads),
           "--no-access-log"]
    if tls:
        cert, key = self_signed_certificate(workdir)
        cmd += ["--certfile", str(cert), "--keyfile", str(key)]
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONHASHSEED": "0"}
    proc, address = start_under_valgrind(cmd, source, env)
    try:
        result = {}
        first = 1
        for row in rows:
            drive = DRIVERS[row]
            warm = max(count // 5, 100)
            drive(address, first, warm)
            first += warm
            control(proc.pid, "--zero")
            drive(address, first, count)
            first += count
            before = set(workdir.glob(f"{out.name}.{proc.pid}.*"))
            control(proc.pid, f"--dump={row}")
            deadline = time.monotonic() + 60
            dumps: set[Path] = set()
            while time.monotonic() < deadline:
                dumps = set(workdir.glob(f"{out.name}.{proc.pid}.*")) - before
                if len(dumps) >= threads + 1:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # the files are written whole before the next row zeroes anything
            dumps = set(workdir.glob(f"{out.name}.{proc.pid}.*")) - before
            # One file per thread, "-01" the main thread (left out, see the module docstring).
            result[row] = sum(total(path) for path in dumps if not path.name.endswith("-01")) // count
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the tree whose server is measured")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per row (default 2000)")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads (default 1)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--compare", type=Path, help="an earlier --json output: print ratios against it")
    parser.add_argument("--budget", type=float, help="with --compare: exit 1 if a row grew by more than this %%")
    parser.add_argument("--keep", type=Path, help="keep callgrind's files here (callgrind_annotate FILE shows where "
                        "the instructions go)")
    args = parser.parse_args(argv)
    rows = [row for row in args.rows.split(",") if row]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        workdir = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep.resolve()
        figures: dict[str, int] = {}
        plain = [row for row in rows if row != "tls"]
        if plain:
            figures.update(measure(args.source.resolve(), plain, args.requests, args.threads, workdir, tls=False))
        if "tls" in rows:
            figures.update(measure(args.source.resolve(), ["tls"], args.requests, args.threads, workdir, tls=True))
    head = subprocess.run(["git", "-C", str(args.source), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    base = json.loads(args.compare.read_text()) if args.compare else None
    print(f"instructions per request, serving threads (callgrind), {args.source} at {head or '?'}, "
          f"{args.requests} requests a row, Python {sys.version.split()[0]}")
    over = []
    for row in rows:
        line = f"  {row:6} {ROWS[row]:45} {figures[row]:>9,}"
        if base is not None and row in base.get("figures", {}):
            old = base["figures"][row]
            ratio = figures[row] / old
            line += f"   was {old:>9,}  x{ratio:.3f}"
            if args.budget is not None and ratio > 1 + args.budget / 100:
                over.append(row)
                line += "  OVER BUDGET"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"commit": head, "requests": args.requests, "figures": figures}, indent=1))
    if over:
        print(f"over the {args.budget:g}% budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
