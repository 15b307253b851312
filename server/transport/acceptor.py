"""Accepting: the listeners, the connection limit and the answer to those over it.

Threads: the leader accepts (the poller reports a listener readable); at shutdown the leader
retires the listeners, or the main thread if no leader came free in time, both under ``lock``;
the main thread resumes accepting after a pause (``resume``). ``listeners`` is replaced whole
(emptied at shutdown), never changed in place, so a reader sees the old dict or the empty one.

Over ``--max-connections`` a plain listener answers ``503`` at once and closes. A TLS client
would read that as a broken record (``WRONG_VERSION_NUMBER``) and never see ``Retry-After``, so a
TLS listener's refused connection is kept just long enough to complete its handshake (bounded by
``--handshake-timeout``, enforced by the sweep) and is then answered inside TLS. Such connections
are counted apart (``ConnectionTable.refusing``) and are themselves bounded (``_REFUSING_LIMIT``):
past it a TLS connection is closed without a word, which is what the limit is for. Either answer
carries the current ``Date``.

The limit counts every connection the table holds from the first accept on: a new connection is
in the table before the next ``accept`` runs, so two connections accepted in one batch are two.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable
from time import monotonic

from .. import errorlog
from ..metrics import Recorder
from ..protocol import RequestParser
from ..protocol.writer import error_response
from ..wsgi.peer import UNIX_PEER, PeerInfo
from .connection import Connection
from .fastpath import raw_accept_of
from .listener import Listener
from .poller import AnyPoller
from .table import ConnectionTable

_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPTS_PER_EVENT = 64
_REFUSING_LIMIT = 64  # TLS connections over the limit kept at once to be told 503 inside TLS


def overload_answer(date: str) -> bytes:
    return error_response(503, "server is at its connection limit; retry shortly", date=date, extra="Retry-After: 1")


class Acceptor:
    """One process's listeners and its connection limit; see the module docstring for the thread rules."""

    def __init__(self, listeners: list[Listener], table: ConnectionTable, poller: AnyPoller, *, max_connections: int,
                 send_timeout: float, new_parser: Callable[[], RequestParser], date: Callable[[], str],
                 on_first: Callable[[], None], exclusive: bool) -> None:
        self.listeners: dict[int, Listener] = {listener.fd: listener for listener in listeners}
        self._raw = {listener.fd: raw_accept_of(listener.sock) for listener in listeners}  # see fastpath.py
        self.table = table
        self.poller = poller
        self.max_connections = max_connections
        self.send_timeout = send_timeout
        self.new_parser = new_parser
        self.date = date  # the current Date header value (the runner's DateCache)
        self.on_first = on_first  # the first connection of an idle server: the main thread's tick shortens
        self.exclusive = exclusive  # pre-fork: wake one process per connection, not all
        self.lock = threading.Lock()
        self.paused_until = 0.0
        for fd in self.listeners:
            poller.watch(fd, exclusive=exclusive)

    def accept(self, fd: int, stats: Recorder | None) -> bool:
        """Accept what the listener ``fd`` has queued (leader only); False when ``fd`` is no listener."""
        listener = self.listeners.get(fd)
        if listener is None:
            return False
        raw = self._raw.get(fd)
        make_socket = socket.socket
        tcp = listener.kind == "tcp"
        make = listener.options.make_connection or Connection
        table = self.table
        now = monotonic()
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                if raw is None:
                    sock, address = listener.sock.accept()
                else:
                    raw_accept, family, sock_type, proto = raw
                    fd_new, address = raw_accept()
                    sock = make_socket(family, sock_type, proto, fd_new)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRORS:
                    self._pause(now, exc.errno)
                return True
            sock.setblocking(False)
            over = table.serving >= self.max_connections
            if over and not listener.options.tls:
                self._refuse(sock, stats)
                continue
            if over and table.refusing >= _REFUSING_LIMIT:
                sock.close()  # refusing inside TLS is bounded too; past that the limit just holds
                if stats is not None:
                    stats.refused(0)
                continue
            if tcp:
                try:  # noqa: SIM105 - once per connection: contextlib.suppress would add three Python calls
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
                peer = PeerInfo(address[0], str(address[1]))  # the port as REMOTE_PORT writes it, once
            else:
                peer = UNIX_PEER
            conn = make(sock, peer, self.new_parser(), now, self.send_timeout)
            if over:
                conn.refusing = True
            if not table.by_fd:
                self.on_first()
            table.add(conn)
            self.poller.add(conn.fd)
            if stats is not None:
                if over:
                    stats.refused(0)  # its 503's bytes are counted when it is written, after the handshake
                else:
                    stats.accepted()
        return True

    def adopt(self, sock: socket.socket, peer: PeerInfo = UNIX_PEER) -> Connection:
        """Serve an already connected socket as if accepted (a socketpair in tests; any thread).

        It counts against the limit like any connection, and is served plain.
        """
        sock.setblocking(False)
        conn = Connection(sock, peer, self.new_parser(), monotonic(), self.send_timeout)
        if not self.table.by_fd:
            self.on_first()
        self.table.add(conn)
        self.poller.add(conn.fd)
        return conn

    def _refuse(self, sock: socket.socket, stats: Recorder | None) -> None:
        """Over the limit on a plain listener: a fast 503 instead of unbounded memory and descriptors."""
        answer = overload_answer(self.date())
        with contextlib.suppress(OSError):
            sock.recv(65536)  # unread input would turn our close into a reset
        with contextlib.suppress(OSError):
            sock.send(answer)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()
        if stats is not None:
            stats.refused(len(answer))

    def _pause(self, now: float, code: int) -> None:
        """Out of descriptors or memory: stop accepting briefly instead of spinning."""
        errorlog.error("accept failed (%s); pausing accepts", os.strerror(code))
        for fd in self.listeners:
            self.poller.remove(fd)
        self.paused_until = now + 0.5

    def resume(self, now: float) -> None:
        """The main thread, each sweep: accept again once a pause is over."""
        if self.paused_until and now >= self.paused_until and self.listeners:
            self.paused_until = 0.0
            for fd in self.listeners:
                self.poller.watch(fd, exclusive=self.exclusive)

    def retire(self, stats: Recorder | None = None, *, accepting: bool = False) -> None:
        """Stop accepting: leave the poller, accept what the kernel had queued meanwhile (leader only), close.

        In that order because other worker processes may share the sockets: once they are out of
        our poller the kernel wakes the others for new connections, and the accept after that takes
        any connection whose wake-up came to us, which nobody else would pick up.
        """
        with self.lock:  # the leader and, past the deadline, the main thread may both get here
            listeners = self.listeners
            for fd in listeners:
                self.poller.remove(fd)
            if accepting:
                for fd in listeners:
                    self.accept(fd, stats)
            self.listeners = {}
            for listener in listeners.values():
                listener.close()
