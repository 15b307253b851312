"""The event loop: accepts, reads and parses requests, parks idle connections, enforces timeouts.

Division of labour: this loop (one thread) does every read, so slow or idle
clients cost a file descriptor, never a thread. A complete request is handed
to the worker pool; the worker runs the application, writes the response,
serves any pipelined requests already buffered, then re-arms the connection
here. Only the application ever runs on worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable
from time import monotonic

from ..accesslog import AccessLog
from ..config import Settings
from ..protocol import Limits, Phase, ProtocolError, Request, RequestParser
from ..protocol.writer import CONTINUE, error_response
from ..wsgi import WSGIRunner
from .connection import Connection
from .poller import Poller
from .pool import ThreadPool

_RECV_SIZE = 65536
_SWEEP_EVERY = 0.25
_DRAIN_LIMIT = 1 << 20  # bytes a closing connection may still send us before we cut it off
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# At shutdown an idle keep-alive connection is closed only once it has been idle this long: one that
# was just answered may be sending its next request right now, and closing it would lose that request.
_STOP_IDLE_GRACE = 0.5


def limits_from(settings: Settings) -> Limits:
    return Limits(max_request_line=settings.max_request_line, max_header_count=settings.max_header_count,
                  max_header_size=settings.max_header_size, max_headers_total=settings.max_headers_total,
                  max_body_size=settings.max_body_size, max_chunk_ext=settings.max_chunk_ext)


class Reactor:
    def __init__(self, listener: socket.socket, runner: WSGIRunner, settings: Settings,
                 access_log: AccessLog | None, exclusive_accept: bool = False) -> None:
        self.listener: socket.socket | None = listener
        self.runner = runner
        self.settings = settings
        self.access_log = access_log
        self.limits = limits_from(settings)
        self.poller = Poller()
        self.pool = ThreadPool(settings.threads)
        self.conns: dict[int, Connection] = {}
        self.stopping = False
        self._stop_deadline = 0.0
        self._exclusive = exclusive_accept
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.watch(self._wake_r)
        self.poller.watch(listener.fileno(), exclusive=exclusive_accept)
        self._listen_fd = listener.fileno()
        self._overload = error_response(503, "server is at its connection limit; retry shortly",
                                        date=runner.dates.now(), extra="Retry-After: 1")

    # -- control (any thread, or a signal handler) -------------------------------------------------------

    def stop(self) -> None:
        """Begin graceful shutdown; safe from a signal handler."""
        self.runner.closing = True
        if not self.stopping:
            self.stopping = True
            self._stop_deadline = monotonic() + self.settings.graceful_timeout
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    @property
    def wake_fd(self) -> int:
        return self._wake_w

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self) -> None:
        next_sweep = monotonic() + _SWEEP_EVERY
        conns = self.conns
        pool = self.pool
        while True:
            # while work waits, look again soon: a worker may be stuck in a slow call
            timeout = pool.stall if pool.pending else (0.05 if self.stopping else _SWEEP_EVERY)
            events = self.poller.poll(timeout)
            now = monotonic()
            for fd, _ in events:
                if fd == self._listen_fd:
                    if self.listener is not None:
                        self._accept(now)
                elif fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                else:
                    conn = conns.get(fd)
                    if conn is not None:
                        self._on_readable(conn, now)
            pool.kick()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + _SWEEP_EVERY
            if self.stopping and self._shutdown_step(now):
                break
        self._finish()

    def _accept(self, now: float) -> None:
        listener = self.listener
        assert listener is not None
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRORS:
                    # Out of descriptors or memory: stop accepting briefly instead of spinning.
                    print(f"server: accept failed ({os.strerror(exc.errno)}); pausing accepts", file=sys.stderr)
                    self.poller.remove(self._listen_fd)
                    self._accept_paused_until = now + 0.5
                return
            sock.setblocking(False)
            if len(self.conns) >= self.settings.max_connections:
                self._refuse(sock)
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, peer[:2], RequestParser(self.limits), now, self.settings.send_timeout)
            self.conns[conn.fd] = conn
            self.poller.add(conn.fd)

    def _refuse(self, sock: socket.socket) -> None:
        """Over the connection limit: a fast 503 instead of unbounded memory and descriptors."""
        with contextlib.suppress(OSError):
            sock.recv(_RECV_SIZE)  # unread input would turn our close into a reset
        with contextlib.suppress(OSError):
            sock.send(self._overload)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    def _on_readable(self, conn: Connection, now: float) -> None:
        parser = conn.parser
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            self._rearm(conn)
            return
        except OSError:
            self.close(conn)
            return
        if conn.draining:
            conn.drained += len(data)
            if data and conn.drained < _DRAIN_LIMIT:
                self._rearm(conn)
            else:
                self.close(conn)
            return
        conn.last_io = now
        if not data:
            try:
                parser.feed_eof()
            except ProtocolError as exc:
                self._reject(conn, exc, now)
                return
            self.close(conn)
            return
        parser.feed(data)
        try:
            request = parser.next_request()
        except ProtocolError as exc:
            self._reject(conn, exc, now)
            return
        if request is not None:
            conn.busy = True
            self.pool.submit(self._serve, conn, request)
            return
        if conn.head_started is None and parser.phase is not Phase.IDLE:
            conn.head_started = now
        if parser.take_continue() and not conn.send_nowait(CONTINUE):
            self.close(conn)
            return
        self._rearm(conn)

    def _rearm(self, conn: Connection) -> None:
        try:
            self.poller.rearm(conn.fd)
        except OSError:
            self.close(conn)

    def _reject(self, conn: Connection, error: ProtocolError, now: float) -> None:
        """A request we cannot parse: say why (problem+json), then close, since framing is lost."""
        conn.send_nowait(error_response(error.status, error.detail, date=self.runner.dates.now(),
                                        server=self.settings.server_header))
        self._log_error(conn, error.status)
        conn.start_draining(now)
        self._rearm(conn)

    def _log_error(self, conn: Connection, status: int) -> None:
        if self.access_log is not None:
            self.access_log.log(conn.peer[0], "-", "-", "-", status, 0, 0.0, None, None, None)

    # -- worker side --------------------------------------------------------------------------------------

    def _serve(self, conn: Connection, request: Request) -> None:
        """Runs on a worker thread: answer this request and any complete ones already buffered."""
        runner = self.runner
        parser = conn.parser
        in_a_row = 0
        try:
            while True:
                keep = runner.run(request, conn.peer, conn.send_all, request.keep_alive and not self.stopping)
                conn.served += 1
                if not keep:
                    conn.start_draining(monotonic())
                    break
                try:
                    next_request = parser.next_request()
                except ProtocolError as exc:
                    conn.send_all(error_response(exc.status, exc.detail, date=runner.dates.now(),
                                                 server=self.settings.server_header))
                    self._log_error(conn, exc.status)
                    conn.start_draining(monotonic())
                    break
                if next_request is None:
                    break
                request = next_request
                in_a_row += 1
                if in_a_row >= self.settings.max_pipeline:
                    # Fairness: a client pipelining many requests yields the thread to others.
                    self.pool.submit(self._serve, conn, request)
                    return
        except OSError:
            self.close(conn)
            return
        except Exception:
            import traceback

            traceback.print_exc(file=sys.stderr)
            self.close(conn)
            return
        self._park(conn)

    def _park(self, conn: Connection) -> None:
        """Hand the connection back to the loop until it is readable again."""
        now = monotonic()
        conn.last_io = conn.idle_since = now
        conn.head_started = None if conn.parser.phase is Phase.IDLE else now
        conn.busy = False
        if conn.parser.take_continue() and not conn.send_nowait(CONTINUE):
            self.close(conn)
            return
        self._rearm(conn)

    def close(self, conn: Connection) -> None:
        """Forget first, then close, so the descriptor number is free only once nothing refers to it."""
        if self.conns.pop(conn.fd, None) is not None:
            self.poller.remove(conn.fd)
            conn.close()

    # -- timeouts and shutdown ------------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until and self.listener is not None:
            self._accept_paused_until = 0.0
            self.poller.watch(self._listen_fd, exclusive=self._exclusive)
        settings = self.settings
        for conn in list(self.conns.values()):
            if conn.busy:
                continue
            if conn.draining:
                if now >= conn.drain_deadline:
                    self.close(conn)
                continue
            phase = conn.parser.phase
            if phase is Phase.IDLE:
                limit = settings.keepalive_timeout if conn.served else settings.header_timeout
                if now - conn.idle_since > limit:
                    self.close(conn)
            elif phase is Phase.HEAD:
                started = conn.head_started or conn.idle_since
                if now - started > settings.header_timeout:
                    self._timeout(conn, now, f"request head not received within {settings.header_timeout:g} s")
            elif now - conn.last_io > settings.body_timeout:
                self._timeout(conn, now, f"request body stalled for more than {settings.body_timeout:g} s")

    def _timeout(self, conn: Connection, now: float, detail: str) -> None:
        self._reject(conn, ProtocolError(408, detail), now)

    def _shutdown_step(self, now: float) -> bool:
        """Stop accepting, close idle connections, let in-flight ones finish; True when done."""
        if self.listener is not None:
            self._accept(now)  # connections the kernel already completed are ours to serve, not to reset
            self.poller.remove(self._listen_fd)
            self.listener.close()
            self.listener = None
        pending = False
        for conn in list(self.conns.values()):
            if conn.busy:
                pending = True
            elif conn.draining:
                pending = True  # its last response is out; the sweep closes it by its drain deadline
            elif conn.parser.phase is Phase.IDLE:
                if now - conn.idle_since < _STOP_IDLE_GRACE or _has_input(conn):
                    pending = True  # its next request may already be on the way: answered with Connection: close
                else:
                    self.close(conn)
            else:
                pending = True  # a request is arriving; it gets its answer with Connection: close
        return not pending or now >= self._stop_deadline

    def _finish(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        self.pool.shutdown(timeout=1.0)
        self.poller.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _has_input(conn: Connection) -> bool:
    """Bytes already waiting on the socket (the loop reads them on its next poll)."""
    try:
        return conn.sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:  # BlockingIOError: nothing is waiting
        return False


def make_signal_handler(reactor: Reactor) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        reactor.stop()

    return handler
