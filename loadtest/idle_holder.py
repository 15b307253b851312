"""Open many keep-alive connections to a server, make one request on each, then keep them idle.

Used by the benchmark (loadtest/bench/) for the idle-connection table, and usable alone::

    python3 loadtest/idle_holder.py --port 8000 --count 10000

Each connection sends ``GET <path>`` once and reads the whole response, so it is a real idle
keep-alive connection the server has served, not a half-open socket still in the accept queue.
When all are open the holder prints ``READY {json}``; after that it keeps them open and watches
them: every line ``status`` on stdin prints ``STATUS {json}`` (how many are still open, how many
the server closed). On EOF of stdin, SIGTERM or SIGINT it closes them all (with RST, so the
client side leaves no TIME_WAIT behind) and prints ``DONE {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import resource
import selectors
import signal
import socket
import struct
import sys
import time


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Conn:
    __slots__ = ("buffer", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = "connecting"  # -> "reading" -> "idle" | "closed" | "failed"
        self.buffer = b""


def response_complete(data: bytes) -> bool | None:
    """True once ``data`` holds a whole response with a Content-Length body; None if it cannot tell."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        return None
    return len(body) >= length


class Holder:
    def __init__(self, host: str, port: int, path: str, sources: list[str]) -> None:
        self.address = (host, port)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.sources = sources
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.errors: dict[str, int] = {}
        self.closed_by_server = 0
        self.bad_responses = 0

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def open_batch(self, count: int) -> None:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            if self.sources:
                try:
                    sock.bind((self.sources[len(self.conns) % len(self.sources)], 0))
                except OSError as exc:
                    sock.close()
                    self._error(f"bind: {errno.errorcode.get(exc.errno or 0, exc)}")
                    continue
            code = sock.connect_ex(self.address)
            conn = Conn(sock)
            self.conns.append(conn)
            if code not in (0, errno.EINPROGRESS):
                self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
                continue
            self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _fail(self, conn: Conn, why: str) -> None:
        self._error(why)
        self._close(conn, "failed")

    def _close(self, conn: Conn, state: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        conn.state = state

    def pending(self) -> int:
        return sum(1 for c in self.conns if c.state in ("connecting", "reading"))

    def poll(self, timeout: float) -> None:
        for key, _events in self.selector.select(timeout):
            if key.data is None:
                self.on_stdin()
            else:
                self.handle(key.data)

    def on_stdin(self) -> None:
        """Replaced by main() once stdin is watched."""

    def handle(self, conn: Conn) -> None:
        if conn.state == "connecting":
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
                return
            try:
                conn.sock.send(self.request)  # a few dozen bytes always fit the empty send buffer
            except OSError as exc:
                self._fail(conn, f"send: {errno.errorcode.get(exc.errno or 0, exc)}")
                return
            conn.state = "reading"
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            self._error(f"recv: {errno.errorcode.get(exc.errno or 0, exc)}")
        if not chunk:
            if conn.state == "idle":
                self.closed_by_server += 1
                self._close(conn, "closed")
            else:
                self._fail(conn, "closed before a full response")
            return
        if conn.state == "idle":
            self.bad_responses += 1  # nothing should arrive on an idle connection
            return
        conn.buffer += chunk
        done = response_complete(conn.buffer)
        if done or done is None:
            status = conn.buffer[9:12]
            if status != b"200":
                self.bad_responses += 1
            conn.buffer = b""
            conn.state = "idle"

    def summary(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for conn in self.conns:
            counts[conn.state] = counts.get(conn.state, 0) + 1
        return {"attempted": len(self.conns), "open": counts.get("idle", 0), "pending": self.pending(),
                "closed_by_server": self.closed_by_server, "failed": counts.get("failed", 0),
                "bad_responses": self.bad_responses, "errors": self.errors}

    def close_all(self) -> None:
        for conn in self.conns:
            if conn.state in ("connecting", "reading", "idle"):
                self._close(conn, "released")


def emit(tag: str, payload: dict[str, object]) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload, sort_keys=True)}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000, help="connections to open (default 10000)")
    parser.add_argument("--path", default="/healthz", help="the one request made on each connection")
    parser.add_argument("--batch", type=int, default=250, help="connections opened before waiting for them")
    parser.add_argument("--sources", type=int, default=4,
                        help="spread source addresses over 127.0.0.2..127.0.0.(N+1); 0 binds none (default 4)")
    parser.add_argument("--open-timeout", type=float, default=120.0, help="seconds to get all of them open")
    args = parser.parse_args(argv)

    limit = raise_nofile(args.count + 64)
    if limit < args.count + 16:
        emit("ERROR", {"message": f"RLIMIT_NOFILE is {limit}, too low for {args.count} connections"})
        return 2
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)] if args.host.startswith("127.") else []
    holder = Holder(args.host, args.port, args.path, sources)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    started = time.monotonic()
    deadline = started + args.open_timeout
    while len(holder.conns) < args.count and not stopping and time.monotonic() < deadline:
        holder.open_batch(min(args.batch, args.count - len(holder.conns)))
        batch_deadline = min(deadline, time.monotonic() + 30)
        while holder.pending() and not stopping and time.monotonic() < batch_deadline:
            holder.poll(0.5)
    while holder.pending() and not stopping and time.monotonic() < deadline:
        holder.poll(0.5)
    ready = holder.summary()
    ready["seconds"] = round(time.monotonic() - started, 2)
    emit("READY", ready)

    def on_stdin() -> None:
        nonlocal stopping
        line = sys.stdin.readline()
        if not line:
            stopping = True
        elif line.strip() == "status":
            emit("STATUS", holder.summary())

    holder.on_stdin = on_stdin  # type: ignore[method-assign]
    holder.selector.register(sys.stdin, selectors.EVENT_READ, None)
    try:
        while not stopping:
            holder.poll(1.0)
    finally:
        final = holder.summary()
        holder.close_all()
        emit("DONE", final)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
